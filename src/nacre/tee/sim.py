"""The simulated TEE: real SGX v3 / TDX v4 quote bytes from nacre's simulation platform.

Configuration (all optional):

- ``NACRE_SIM_DIR``: the platform directory (default: :func:`nacre.sim.platform.default_dir`);
  a platform is created there on first use.
- ``NACRE_SIM_MANIFEST``: the workload manifest (TOML or JSON) that is measured into MRENCLAVE,
  MRSIGNER, ISVPRODID/ISVSVN or MRTD/RTMRs; without it the platform's default workload.
- ``NACRE_SIM_TEE``: ``sgx`` (default) or ``tdx``.

Sealing keys come from the platform's sealing root (``SimPlatform.sealing_root()``) through
:class:`nacre.tee.sealing.Sealer`, with SGX's full policy and SVN rules. A simulated TD cannot seal,
exactly like a real one behind configfs-tsm (that needs a KBS-provided key), so code that works on
the simulator does not break on hardware.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Final, NoReturn

from nacre.errors import UsageError
from nacre.tee.backend import (
    REPORT_DATA_SIZE,
    SealPolicy,
    SgxIdentity,
    TdxIdentity,
    TeeKind,
    UnsupportedOperationError,
    check_report_data,
    identity_from_quote,
)
from nacre.tee.sealing import Sealer

if TYPE_CHECKING:
    from nacre.collateral.bundle import CollateralBundle
    from nacre.collateral.trust import TrustRoots
    from nacre.sim.measure import Manifest
    from nacre.sim.platform import SimPlatform

__all__ = ["ENV_SIM_DIR", "ENV_SIM_MANIFEST", "ENV_SIM_TEE", "SimBackend"]

ENV_SIM_DIR: Final = "NACRE_SIM_DIR"
ENV_SIM_MANIFEST: Final = "NACRE_SIM_MANIFEST"
ENV_SIM_TEE: Final = "NACRE_SIM_TEE"
_ZERO: Final = bytes(REPORT_DATA_SIZE)


class SimBackend:
    """A :class:`nacre.tee.TeeBackend` over a :class:`nacre.sim.platform.SimPlatform`."""

    def __init__(
        self, platform: SimPlatform, *, tee: TeeKind = "sgx", manifest: Manifest | None = None
    ) -> None:
        if tee not in ("sgx", "tdx"):
            raise UsageError(
                "the simulator makes SGX and TDX quotes only",
                field="tee",
                expected="sgx or tdx",
                actual=tee,
            )
        self._platform = platform
        self._tee: TeeKind = tee
        self._manifest = manifest
        self._identity: SgxIdentity | TdxIdentity | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SimBackend:
        """The backend ``NACRE_TEE=sim`` selects, configured by ``NACRE_SIM_*``."""
        from nacre.sim.measure import Manifest
        from nacre.sim.platform import SimPlatform, default_dir

        env = os.environ if environ is None else environ
        tee = env.get(ENV_SIM_TEE, "sgx")
        if tee not in ("sgx", "tdx"):
            raise UsageError(
                f"{ENV_SIM_TEE} names a TEE the simulator does not make",
                field=ENV_SIM_TEE,
                expected="sgx or tdx",
                actual=tee,
            )
        directory = Path(env[ENV_SIM_DIR]) if env.get(ENV_SIM_DIR) else Path(default_dir())
        platform = SimPlatform.load_or_init(directory)
        manifest_path = env.get(ENV_SIM_MANIFEST)
        manifest = Manifest.load(manifest_path) if manifest_path else None
        return cls(platform, tee="tdx" if tee == "tdx" else "sgx", manifest=manifest)

    @property
    def name(self) -> str:
        return "sim"

    @property
    def tee(self) -> TeeKind:
        return self._tee

    @property
    def platform(self) -> SimPlatform:
        return self._platform

    def bundle(self) -> CollateralBundle:
        """The simulated collateral for this backend's quotes."""
        return self._platform.bundle(self._tee)

    def trust_roots(self) -> TrustRoots:
        """Trust roots that accept this platform's quotes (``sim: true``)."""
        return self._platform.trust_roots()

    def quote(self, report_data: bytes) -> bytes:
        data = check_report_data(report_data)
        return self._platform.quote(self._tee, data, manifest=self._manifest)

    def identity(self) -> SgxIdentity | TdxIdentity:
        if self._identity is None:
            self._identity = identity_from_quote(self.quote(_ZERO))
        return self._identity

    def _sealer(self) -> Sealer:
        ident = self.identity()
        if not isinstance(ident, SgxIdentity):
            self._no_td_sealing()
        return Sealer(ident, lambda _policy: self._platform.sealing_root())

    def _no_td_sealing(self) -> NoReturn:
        raise UnsupportedOperationError(
            "a simulated TD cannot seal, like a real TDX guest: TDX sealing needs a key released "
            "by the key broker (KBS) after attestation, which nacre does not provide yet",
            field="sealing key",
            expected="a KBS-provided key",
            actual="none (TDX has no sealing key)",
            hint="use NACRE_SIM_TEE=sgx to try sealing in the simulator",
        )

    def seal(self, data: bytes, *, policy: SealPolicy = "mrenclave", aad: bytes = b"") -> bytes:
        return self._sealer().seal(data, policy=policy, aad=aad)

    def unseal(self, blob: bytes, *, aad: bytes = b"") -> bytes:
        return self._sealer().unseal(blob, aad=aad)
