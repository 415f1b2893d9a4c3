"""Layer 1: pure parsers, bytes -> frozen dataclasses -> the same bytes. No IO, no other layer."""

from __future__ import annotations

from typing import TYPE_CHECKING

from nacre.errors import LimitExceededError, MalformedEvidenceError
from nacre.evidence.dcap import DcapQuote, parse_quote
from nacre.limits import MAX_EVIDENCE_BYTES

if TYPE_CHECKING:
    from nacre.evidence.snp import SnpReport

__all__ = ["DcapQuote", "detect_kind", "parse_evidence", "parse_quote"]

_HCL_MAGIC = b"HCLA"
_SNP_REPORT_SIZE = 0x4A0


class EvidenceTooLargeError(MalformedEvidenceError, LimitExceededError):
    """Evidence over :data:`nacre.limits.MAX_EVIDENCE_BYTES`."""


def detect_kind(data: bytes) -> str:
    """``"dcap"``, ``"snp"`` or ``"hcl"`` (Azure HCL report wrapping an SNP report).

    A DCAP quote starts with u16 version 3..5 and u16 attestation key type; an SNP report with a
    u32 version 2..5, so its bytes 2..3 are zero where a quote's key type is not.
    """
    if len(data) > MAX_EVIDENCE_BYTES:
        raise EvidenceTooLargeError(
            "evidence is larger than any quote or report",
            code="QUOTE_MALFORMED",
            field="evidence size",
            expected=f"<= {MAX_EVIDENCE_BYTES} bytes",
            actual=f"{len(data)} bytes",
        )
    if data[:4] == _HCL_MAGIC:
        return "hcl"
    # An SNP report is exactly 0x4A0 bytes with a u32 version; a DCAP quote that embeds its PCK
    # chain is several KiB, so a short u16 version + zero key type is still read (and refused) as DCAP.
    if len(data) == _SNP_REPORT_SIZE and int.from_bytes(data[:4], "little") in (2, 3, 4, 5):
        return "snp"
    return "dcap"


def parse_evidence(data: bytes) -> DcapQuote | SnpReport:
    """Parse a DCAP quote, a raw SEV-SNP report, or an Azure HCL report (its SNP report)."""
    kind = detect_kind(data)
    if kind == "dcap":
        return parse_quote(data)
    from nacre.evidence import snp

    if kind == "hcl":
        return snp.parse_snp_report(snp.extract_snp_from_hcl(data))
    return snp.parse_snp_report(data)
