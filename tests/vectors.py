"""The shared attestation vectors (``/work/shared/vectors``), read in place, never copied.

for case in load_cases(tee=("sgx", "tdx")):
    case.evidence, case.bundle(), case.now, case.expected["tcb_status"]
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.utils import CryptographyDeprecationWarning

from nacre import CollateralBundle
from nacre.collateral.certs import load_pem_chain
from nacre.evidence import parse_quote

__all__ = ["VECTORS_DIR", "VectorCase", "load_case", "load_cases", "vector_certs"]

#: ``shared/vectors`` next to the checkout (this file is ``<root>/main/tests/vectors.py``).
VECTORS_DIR = Path(__file__).resolve().parents[2] / "shared" / "vectors"


@dataclass(frozen=True, slots=True)
class VectorCase:
    id: str
    dir: Path
    tee: str  # "sgx", "tdx" or "sev-snp"
    version: int
    verification_time: datetime  # aware, UTC
    expected: dict[str, Any] = field(repr=False, compare=False)  # case.json "expected" object
    meta: dict[str, Any] = field(repr=False, compare=False)  # the whole case.json

    @property
    def now(self) -> datetime:
        return self.verification_time

    @property
    def is_dcap(self) -> bool:
        return self.tee in ("sgx", "tdx")

    @property
    def evidence_path(self) -> Path:
        """``quote.bin`` (SGX/TDX) or ``report.bin`` (SNP; Azure cases also have ``hcl_report.bin``)."""
        for name in ("quote.bin", "report.bin"):
            if (self.dir / name).is_file():
                return self.dir / name
        raise FileNotFoundError(f"no evidence file in {self.dir}")

    @property
    def evidence(self) -> bytes:
        return _read(self.evidence_path)

    def read(self, name: str) -> bytes:
        return _read(self.dir / name)

    def bundle(self) -> CollateralBundle:
        return CollateralBundle.from_dir(self.dir)

    def dcap_qvl_collateral_json(self) -> str:
        return (self.dir / "collateral.dcap-qvl.json").read_text(encoding="utf-8")


@cache
def _read(path: Path) -> bytes:
    return path.read_bytes()


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


@cache
def _index() -> dict[str, dict[str, Any]]:
    index = json.loads((VECTORS_DIR / "index.json").read_text(encoding="utf-8"))
    return {str(c["id"]): c for c in index["cases"]}


@cache
def load_case(case_id: str) -> VectorCase:
    entry = _index()[case_id]
    case_dir = VECTORS_DIR / case_id
    meta: dict[str, Any] = json.loads((case_dir / "case.json").read_text(encoding="utf-8"))
    return VectorCase(
        id=case_id,
        dir=case_dir,
        tee=str(entry["tee"]),
        version=int(entry["version"]),
        verification_time=_parse_time(str(meta["verification_time"])),
        expected=dict(meta["expected"]),
        meta=meta,
    )


def load_cases(tee: Iterable[str] | None = None) -> list[VectorCase]:
    """Every case of ``index.json`` (optionally only the given TEEs), in index order."""
    wanted = None if tee is None else set(tee)
    return [load_case(i) for i, c in _index().items() if wanted is None or c["tee"] in wanted]


def vector_certs() -> list[x509.Certificate]:
    """Every certificate the vectors hold: PCK chains in quotes, issuer chains, AMD certs."""
    out: list[x509.Certificate] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        for path in sorted(VECTORS_DIR.glob("*/*")):
            data = path.read_bytes()
            if path.name == "quote.bin":
                out += load_pem_chain(parse_quote(data).pck_chain_pem, field=path.name)
            elif path.suffix == ".pem" and b"BEGIN CERTIFICATE" in data:
                out += load_pem_chain(data, field=path.name)
            elif path.suffix == ".der" and "crl" not in path.name:
                out.append(x509.load_der_x509_certificate(data))
    return out
