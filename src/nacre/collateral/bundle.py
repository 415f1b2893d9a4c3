"""A collateral bundle: the files needed to verify one piece of evidence offline.

The layout is that of ``shared/vectors`` cases (DESIGN.md §4). Nothing in a bundle is trusted on its
own: roots named in it (``intel_sgx_root_ca.pem``, ``ark.pem``) are only compared with the trust
anchors the caller passes; every signed item is verified against them on every use.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Final

from nacre.errors import LimitExceededError, UsageError
from nacre.limits import MAX_COLLATERAL_FILE_BYTES, MAX_CRL_BYTES

__all__ = ["DCAP_FILES", "KNOWN_FILES", "SNP_FILES", "CollateralBundle"]

#: Intel PCS v4 collateral, as the vector cases lay it out.
DCAP_FILES: Final = (
    "tcb_info.json",
    "tcb_info_issuer_chain.pem",
    "qe_identity.json",
    "qe_identity_issuer_chain.pem",
    "pck_crl.der",
    "pck_crl_issuer_chain.pem",
    "root_ca_crl.der",
    "pck_cert_chain.pem",
    "intel_sgx_root_ca.pem",
)
#: AMD KDS collateral.
SNP_FILES: Final = (
    "vcek.der",
    "vlek.der",
    "ask.pem",
    "asvk.pem",
    "ark.pem",
    "cert_chain.pem",
)
#: Simulation root (issue 3): informational; trusted only when the caller asks.
SIM_FILES: Final = ("sim_root_ca.pem",)
KNOWN_FILES: Final = DCAP_FILES + SNP_FILES + SIM_FILES


def _limit(name: str) -> int:
    return MAX_CRL_BYTES if name.endswith("crl.der") else MAX_COLLATERAL_FILE_BYTES


@dataclass(frozen=True, slots=True)
class CollateralBundle:
    """File name -> bytes, with a SHA-256 of each file computed once (used as cache keys)."""

    files: Mapping[str, bytes]
    digests: Mapping[str, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, data in self.files.items():
            if len(data) > _limit(name):
                raise LimitExceededError(
                    f"collateral file {name} is too large",
                    field=name,
                    expected=f"<= {_limit(name)} bytes",
                    actual=f"{len(data)} bytes",
                )
        object.__setattr__(self, "files", MappingProxyType(dict(self.files)))
        object.__setattr__(
            self,
            "digests",
            MappingProxyType({n: hashlib.sha256(d).digest() for n, d in self.files.items()}),
        )

    @classmethod
    def from_dir(cls, path: str | Path) -> CollateralBundle:
        """Read the known collateral files present in ``path`` (others are ignored)."""
        root = Path(path)
        if not root.is_dir():
            raise UsageError(
                f"collateral directory {root} does not exist",
                field="--collateral",
                expected="a directory laid out like a vector case",
                actual=str(root),
                hint="fetch one with: nacre collateral fetch EVIDENCE --out DIR",
            )
        files: dict[str, bytes] = {}
        for name in KNOWN_FILES:
            p = root / name
            if not p.is_file():
                continue
            size = p.stat().st_size
            if size > _limit(name):
                raise LimitExceededError(
                    f"collateral file {p} is too large",
                    field=name,
                    expected=f"<= {_limit(name)} bytes",
                    actual=f"{size} bytes",
                )
            files[name] = p.read_bytes()
        return cls(files)

    def write_dir(self, path: str | Path) -> None:
        """Write every file into ``path`` (created if needed), atomically per file."""
        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        for name, data in self.files.items():
            if name not in KNOWN_FILES:
                raise UsageError(
                    f"refusing to write unknown collateral file {name!r}",
                    field="file name",
                    expected=", ".join(KNOWN_FILES),
                    actual=name,
                )
            tmp = root / f".{name}.tmp"
            tmp.write_bytes(data)
            tmp.replace(root / name)

    def get(self, name: str) -> bytes | None:
        return self.files.get(name)

    def has(self, name: str) -> bool:
        return name in self.files
