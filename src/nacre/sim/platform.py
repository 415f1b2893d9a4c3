"""A simulated SGX/TDX platform on disk: its PKI, keys, TCB and collateral.

Directory layout (the directory is 0700, every private file 0600)::

    platform.json                     FMSPC, PCE-ID, SGX type, SVNs, TCB status, QE ID ...
    root_ca.pem      root_ca.key      nacre Simulation Root CA
    pck_ca.pem       pck_ca.key       nacre Simulation SGX PCK Platform CA
    pck.pem          pck.key          PCK certificate (Intel's SGX extensions)
    tcb_signing.pem  tcb_signing.key  signs TCB info and QE identities
    attestation.key                   the quoting enclaves' attestation key
    signer.key                        default workload signer (MRSIGNER)
    sealing_root.bin                  32-byte sealing root for the sim TEE backend
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any, Final, Literal

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from nacre.collateral.bundle import CollateralBundle
from nacre.collateral.certs import load_certificate
from nacre.collateral.trust import SIM_ROOT_CA_FILE, TrustRoots, default_sim_dir
from nacre.errors import UsageError
from nacre.sim.collateral import (
    SIM_QE,
    SIM_TD_QE,
    TcbSpec,
    check_tcb_status,
    qe_identity,
    sign_json,
    tcb_info,
)
from nacre.sim.measure import Manifest, Measurement, measure
from nacre.sim.pki import (
    SGX_TYPE_SCALABLE,
    PckProfile,
    SimPki,
    read_private_key,
    write_private_key,
    write_secret,
)
from nacre.sim.quote import QuoteInputs, build_quote

__all__ = [
    "DEFAULT_COLLATERAL_DAYS",
    "SIM_FMSPC",
    "SimPlatform",
    "SimTee",
    "default_dir",
]

SimTee = Literal["sgx", "tdx"]

#: FMSPC of simulated platforms: 00 'S' 'I' 'M' 00 00, never one of Intel's.
SIM_FMSPC: Final = bytes.fromhex("0053494D0000")
SIM_PCE_ID: Final = bytes.fromhex("0000")
DEFAULT_COLLATERAL_DAYS: Final = 30
#: Collateral is back-dated this much, so a verifier with a slightly slow clock accepts it.
COLLATERAL_BACKDATE: Final = timedelta(hours=1)
_SGX_SVNS: Final = (3, 3, 2, 2, 4, 1, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0)
_PCE_SVN: Final = 13
#: TEE_TCB_SVN: [0] TDX module SVN, [1] module major version (TDX_01), [2] TDX microcode.
_TDX_SVNS: Final = (5, 1, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
_FORMAT: Final = 1
_CONFIG: Final = "platform.json"
_SEALING_ROOT: Final = "sealing_root.bin"
#: Certificate and key file stems; TrustRoots.simulation() finds the root by SIM_ROOT_CA_FILE.
_KEYS: Final = (SIM_ROOT_CA_FILE.removesuffix(".pem"), "pck_ca", "pck", "tcb_signing")
_PEM: Final = Encoding.PEM


def default_dir() -> Path:
    """``$NACRE_SIM_DIR``, else ``<user data dir>/nacre/sim`` (platformdirs)."""
    return default_sim_dir()


def _tee(tee: str) -> SimTee:
    if tee == "sgx":
        return "sgx"
    if tee == "tdx":
        return "tdx"
    raise UsageError(
        "the simulator emits SGX and TDX quotes",
        field="--tee",
        expected="sgx or tdx",
        actual=repr(tee),
    )


@dataclass(frozen=True, slots=True)
class _Config:
    profile: PckProfile
    tee_tcb_svn: tuple[int, ...]
    tcb_status: str
    advisory_ids: tuple[str, ...]
    qe_id: bytes
    collateral_days: int

    def to_json(self) -> dict[str, Any]:
        p = self.profile
        return {
            "format": _FORMAT,
            "fmspc": p.fmspc.hex(),
            "pce_id": p.pce_id.hex(),
            "sgx_type": p.sgx_type,
            "ppid": p.ppid.hex(),
            "platform_instance_id": (p.platform_instance_id or b"").hex(),
            "cpu_svn": list(p.tcb_components),
            "pce_svn": p.pce_svn,
            "tee_tcb_svn": list(self.tee_tcb_svn),
            "tcb_status": self.tcb_status,
            "advisory_ids": list(self.advisory_ids),
            "qe_id": self.qe_id.hex(),
            "collateral_days": self.collateral_days,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any], path: Path) -> _Config:
        try:
            if d["format"] != _FORMAT:
                raise ValueError(f"format {d['format']}")
            pid = bytes.fromhex(d["platform_instance_id"])
            return cls(
                profile=PckProfile(
                    ppid=bytes.fromhex(d["ppid"]),
                    tcb_components=tuple(int(x) for x in d["cpu_svn"]),
                    pce_svn=int(d["pce_svn"]),
                    pce_id=bytes.fromhex(d["pce_id"]),
                    fmspc=bytes.fromhex(d["fmspc"]),
                    sgx_type=int(d["sgx_type"]),
                    platform_instance_id=pid or None,
                ),
                tee_tcb_svn=tuple(int(x) for x in d["tee_tcb_svn"]),
                tcb_status=check_tcb_status(str(d["tcb_status"])),
                advisory_ids=tuple(str(a) for a in d["advisory_ids"]),
                qe_id=bytes.fromhex(d["qe_id"]),
                collateral_days=int(d["collateral_days"]),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise UsageError(
                f"{path} is not a simulated platform description",
                field=_CONFIG,
                expected=f"format {_FORMAT} written by nacre sim init",
                actual=str(exc)[:120],
                hint="recreate the platform with: nacre sim init --force",
            ) from exc


@lru_cache(maxsize=64)
def _measured(manifest: Manifest, signer: ec.EllipticCurvePrivateKey) -> Measurement:
    """The measurement of a manifest signed by the platform's signer (both immutable, so
    remembered: a workload quotes its one manifest again and again)."""
    return measure(manifest, signer.public_key())


@dataclass(frozen=True, slots=True)
class SimPlatform:
    """A simulated platform loaded from ``dir``. Create one with :meth:`init`."""

    dir: Path
    pki: SimPki
    attestation_key: ec.EllipticCurvePrivateKey
    signer_key: ec.EllipticCurvePrivateKey
    _config: _Config

    # -- creation and loading ---------------------------------------------------------------

    @classmethod
    def init(
        cls,
        dir: str | Path | None = None,
        *,
        tcb_status: str = "UpToDate",
        advisory_ids: tuple[str, ...] = (),
        fmspc: bytes = SIM_FMSPC,
        sgx_type: int = SGX_TYPE_SCALABLE,
        collateral_days: int = DEFAULT_COLLATERAL_DAYS,
        force: bool = False,
        now: datetime | None = None,
    ) -> SimPlatform:
        """Create a platform in ``dir`` (default :func:`default_dir`): PKI, keys, TCB.

        ``tcb_status`` is the status the platform's collateral gives it (Intel's words);
        ``advisory_ids`` the advisories of that level (default: one simulated advisory for
        any status other than UpToDate). Refuses to overwrite a platform unless ``force``.
        """
        root = Path(dir) if dir is not None else default_dir()
        check_tcb_status(tcb_status)
        if collateral_days < 1:
            raise UsageError(
                "collateral must be valid for at least a day",
                field="collateral_days",
                expected=">= 1",
                actual=str(collateral_days),
            )
        if (root / _CONFIG).exists() and not force:
            raise UsageError(
                f"a simulated platform already exists in {root}",
                field="--dir",
                expected="an empty or new directory",
                actual=str(root),
                hint="pass --force to replace it (its quotes will no longer verify)",
            )
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(root, 0o700)
        profile = PckProfile(
            ppid=secrets.token_bytes(16),
            tcb_components=_SGX_SVNS,
            pce_svn=_PCE_SVN,
            pce_id=SIM_PCE_ID,
            fmspc=fmspc,
            sgx_type=sgx_type,
            platform_instance_id=secrets.token_bytes(16) if sgx_type != 0 else None,
        )
        config = _Config(
            profile=profile,
            tee_tcb_svn=_TDX_SVNS,
            tcb_status=tcb_status,
            advisory_ids=advisory_ids,
            qe_id=secrets.token_bytes(16),
            collateral_days=collateral_days,
        )
        pki = SimPki.generate(profile, now or datetime.now(UTC))
        att = ec.generate_private_key(ec.SECP256R1())
        signer = ec.generate_private_key(ec.SECP256R1())
        certs = (pki.root, pki.pck_ca, pki.pck, pki.tcb_signing)
        keys = (pki.root_key, pki.pck_ca_key, pki.pck_key, pki.tcb_key)
        for name, cert, key in zip(_KEYS, certs, keys, strict=True):
            write_private_key(root / f"{name}.key", key)
            _write_public(root / f"{name}.pem", cert.public_bytes(_PEM))
        write_private_key(root / "attestation.key", att)
        write_private_key(root / "signer.key", signer)
        write_secret(root / _SEALING_ROOT, secrets.token_bytes(32))
        _write_public(root / _CONFIG, json.dumps(config.to_json(), indent=2).encode() + b"\n")
        return cls(root, pki, att, signer, config)

    @classmethod
    def load(cls, dir: str | Path | None = None) -> SimPlatform:
        """Load the platform in ``dir`` (default :func:`default_dir`)."""
        root = Path(dir) if dir is not None else default_dir()
        cfg_path = root / _CONFIG
        try:
            raw = json.loads(cfg_path.read_bytes())
        except FileNotFoundError:
            raise UsageError(
                f"no simulated platform in {root}",
                field="--dir",
                expected=f"a directory made by nacre sim init (with {_CONFIG})",
                actual=str(root),
                hint=f"create one with: nacre sim init --dir {root}",
            ) from None
        except (OSError, ValueError) as exc:
            raise UsageError(
                f"cannot read {cfg_path}: {exc}",
                field=_CONFIG,
                expected="the JSON written by nacre sim init",
                actual=str(cfg_path),
            ) from exc
        config = _Config.from_json(raw, cfg_path)
        certs = [_read_cert(root / f"{n}.pem") for n in _KEYS]
        keys = [read_private_key(root / f"{n}.key") for n in _KEYS]
        pki = SimPki(keys[0], certs[0], keys[1], certs[1], keys[2], certs[2], keys[3], certs[3])
        return cls(
            root,
            pki,
            read_private_key(root / "attestation.key"),
            read_private_key(root / "signer.key"),
            config,
        )

    @classmethod
    def load_or_init(cls, dir: str | Path | None = None) -> SimPlatform:
        """The platform in ``dir``, created (UpToDate) on first use."""
        root = Path(dir) if dir is not None else default_dir()
        if (root / _CONFIG).exists():
            return cls.load(root)
        return cls.init(root)

    # -- facts ------------------------------------------------------------------------------

    @property
    def root_certificate(self) -> x509.Certificate:
        return self.pki.root

    @property
    def tcb_status(self) -> str:
        return self._config.tcb_status

    @property
    def fmspc(self) -> bytes:
        return self._config.profile.fmspc

    @property
    def pck_profile(self) -> PckProfile:
        return self._config.profile

    def trust_roots(self) -> TrustRoots:
        """Trust this platform's simulation root (results carry ``sim: true``)."""
        return TrustRoots.simulation(self.pki.root)

    def sealing_root(self) -> bytes:
        """The platform's 32-byte sealing root (stored 0600): input to the sim backend's KDF."""
        path = self.dir / _SEALING_ROOT
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise UsageError(
                f"cannot read the sealing root {path}: {exc.strerror}",
                field=_SEALING_ROOT,
                expected="32 bytes written by nacre sim init",
                actual=str(path),
            ) from exc
        if len(data) != 32:
            raise UsageError(
                "the sealing root is damaged",
                field=_SEALING_ROOT,
                expected="32 bytes",
                actual=f"{len(data)} bytes",
            )
        return data

    # -- evidence ---------------------------------------------------------------------------

    def measure(self, manifest: Manifest | None = None) -> Measurement:
        """The measurement of ``manifest`` (default: an empty workload) on this platform."""
        manifest = manifest or Manifest()
        if manifest.signer_key is not None:  # a key file: read it every time
            return measure(manifest, self.signer_key.public_key())
        return _measured(manifest, self.signer_key)

    def quote(self, tee: str, report_data: bytes, manifest: Manifest | None = None) -> bytes:
        """An SGX v3 or TDX v4 quote of ``manifest`` carrying ``report_data`` (<= 64 bytes)."""
        t = _tee(tee)
        cfg = self._config
        inputs = QuoteInputs(
            attestation_key=self.attestation_key,
            pck_key=self.pki.pck_key,
            pck_chain_pem=self.pki.pck_chain_pem(),
            qe=SIM_TD_QE if t == "tdx" else SIM_QE,
            cpu_svn=cfg.profile.cpu_svn,
            pce_svn=cfg.profile.pce_svn,
            tee_tcb_svn=bytes(cfg.tee_tcb_svn),
            qe_id=cfg.qe_id,
        )
        return build_quote(t == "tdx", self.measure(manifest), report_data, inputs)

    # -- collateral -------------------------------------------------------------------------

    def collateral_window(self, now: datetime | None = None) -> tuple[datetime, datetime]:
        """(issueDate, nextUpdate) of collateral made at ``now``."""
        t = (now or datetime.now(UTC)).replace(microsecond=0)
        return t - COLLATERAL_BACKDATE, t + timedelta(days=self._config.collateral_days)

    def bundle(self, tee: str, *, now: datetime | None = None) -> CollateralBundle:
        """The collateral of this platform for ``tee``, freshly signed, as a bundle (DESIGN §4)."""
        t = _tee(tee)
        cfg = self._config
        issued, next_update = self.collateral_window(now)
        spec = TcbSpec(
            sgx_components=cfg.profile.tcb_components,
            pce_svn=cfg.profile.pce_svn,
            tdx_components=cfg.tee_tcb_svn,
            status=cfg.tcb_status,
            advisory_ids=cfg.advisory_ids,
        )
        info = tcb_info(
            t,
            spec,
            fmspc=cfg.profile.fmspc,
            pce_id=cfg.profile.pce_id,
            issue_date=issued,
            next_update=next_update,
        )
        ident = qe_identity(
            SIM_TD_QE if t == "tdx" else SIM_QE, issue_date=issued, next_update=next_update
        )
        pki = self.pki
        tcb_chain = pki.tcb_chain_pem()
        return CollateralBundle(
            {
                "tcb_info.json": sign_json("tcbInfo", info, pki.tcb_key),
                "tcb_info_issuer_chain.pem": tcb_chain,
                "qe_identity.json": sign_json("enclaveIdentity", ident, pki.tcb_key),
                "qe_identity_issuer_chain.pem": tcb_chain,
                "pck_crl.der": pki.pck_crl(issued, next_update),
                "pck_crl_issuer_chain.pem": pki.pck_crl_chain_pem(),
                "root_ca_crl.der": pki.root_ca_crl(issued, next_update),
                "pck_cert_chain.pem": pki.pck_chain_pem(),
                "sim_root_ca.pem": pki.root.public_bytes(_PEM),
            }
        )


def _write_public(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _read_cert(path: Path) -> x509.Certificate:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(
            f"cannot read {path}: {exc.strerror}",
            field=path.name,
            expected="a certificate written by nacre sim init",
            actual=str(path),
            hint="recreate the platform with: nacre sim init --force",
        ) from exc
    return load_certificate(data, field=str(path))
