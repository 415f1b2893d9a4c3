"""Workload-side TEE SDK: one interface to the simulator, Gramine (SGX) and configfs-tsm (TDX, SNP).

    import nacre.tee
    tee = nacre.tee.current()              # NACRE_TEE=sim|gramine|tdx|snp, or detected
    evidence = tee.quote(report_data)      # exactly 64 bytes in
    tee.identity()                         # SgxIdentity | TdxIdentity | SnpIdentity
    blob = tee.seal(secret, policy="mrsigner", aad=b"v1")
    tee.unseal(blob, aad=b"v1")

Backends are imported only when selected, so a workload never imports the simulator's PKI unless
it runs on it.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from nacre.errors import UsageError
from nacre.tee.backend import (
    REPORT_DATA_SIZE,
    Identity,
    SealingError,
    SealPolicy,
    SgxIdentity,
    SnpIdentity,
    TdxIdentity,
    TeeBackend,
    TeeError,
    TeeKind,
    TeeUnavailableError,
    UnsupportedOperationError,
)

__all__ = [
    "ENV_TEE",
    "REPORT_DATA_SIZE",
    "Identity",
    "SealPolicy",
    "SealingError",
    "SgxIdentity",
    "SnpIdentity",
    "TdxIdentity",
    "TeeBackend",
    "TeeError",
    "TeeKind",
    "TeeUnavailableError",
    "UnsupportedOperationError",
    "current",
]

ENV_TEE: Final = "NACRE_TEE"
_CHOICES: Final = ("sim", "gramine", "tdx", "snp")


def _backend(module: str, cls: str, *args: object, **kwargs: object) -> TeeBackend:
    backend: TeeBackend = getattr(importlib.import_module(module), cls)(*args, **kwargs)
    return backend


def current(root: str | Path = "/", *, environ: Mapping[str, str] | None = None) -> TeeBackend:
    """The TEE backend of this process.

    ``NACRE_TEE`` (``sim``, ``gramine``, ``tdx``, ``snp``) decides when set. Otherwise the TEE is
    detected under ``root``: Gramine when ``dev/attestation/attestation_type`` exists, configfs-tsm
    when ``sys/kernel/config/tsm/report`` exists and names a provider. ``root`` stays ``/`` in
    production; tests point it at a fake tree.
    """
    env = os.environ if environ is None else environ
    base = Path(root)
    choice = env.get(ENV_TEE, "").strip()
    if choice:
        if choice == "sim":
            sim = importlib.import_module("nacre.tee.sim")
            backend: TeeBackend = sim.SimBackend.from_env(env)
            return backend
        if choice == "gramine":
            return _backend("nacre.tee.gramine", "GramineBackend", base)
        if choice in ("tdx", "snp"):
            return _backend("nacre.tee.tsm", "TsmBackend", base, expect=choice)
        raise UsageError(
            f"{ENV_TEE} names an unknown TEE backend",
            field=ENV_TEE,
            expected=", ".join(_CHOICES),
            actual=choice,
        )
    # Detection, most specific first.
    gramine_marker = base / "dev" / "attestation" / "attestation_type"
    if gramine_marker.exists():
        return _backend("nacre.tee.gramine", "GramineBackend", base)
    tsm_dir = base / "sys" / "kernel" / "config" / "tsm" / "report"
    found_tsm = ""
    if tsm_dir.is_dir():
        try:
            return _backend("nacre.tee.tsm", "TsmBackend", base)
        except TeeError as exc:
            found_tsm = f" ({tsm_dir} exists but has no usable provider: {exc.message})"
    raise TeeUnavailableError(
        "no TEE found: not under Gramine (no /dev/attestation) and no configfs-tsm provider"
        + found_tsm,
        field="TEE",
        expected="Gramine /dev/attestation or configfs-tsm with tdx_guest/sev_guest",
        actual="none",
        hint=f"for development without a TEE set {ENV_TEE}=sim (simulated SGX/TDX quotes); "
        "run `nacre node check` to see what this machine lacks",
    )
