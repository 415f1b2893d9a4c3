"""Layer 3: one verifier per TEE. Produces :class:`VerifiedEvidence`, which only a verifier builds."""

from __future__ import annotations

from datetime import datetime

from nacre.collateral.bundle import CollateralBundle
from nacre.collateral.trust import TrustRoots
from nacre.errors import UsageError
from nacre.evidence import detect_kind, parse_quote
from nacre.verify.cache import VerifyCache, default_cache
from nacre.verify.result import Check, VerifiedEvidence

__all__ = ["Check", "VerifiedEvidence", "VerifyCache", "default_cache", "verify"]


def verify(
    evidence: bytes,
    *,
    collateral: CollateralBundle,
    now: datetime,
    trust: TrustRoots | None = None,
    cache: VerifyCache | None = None,
) -> VerifiedEvidence:
    """Verify SGX/TDX quotes or SEV-SNP reports (no appraisal policy applied)."""
    if now.tzinfo is None:
        raise UsageError(
            "verification time must carry a time zone",
            field="now",
            expected="an aware datetime (e.g. datetime.now(UTC))",
            actual=now.isoformat(),
        )
    roots = trust or TrustRoots.default()
    kind = detect_kind(evidence)
    if kind == "dcap":
        from nacre.verify.dcap import verify_dcap

        return verify_dcap(parse_quote(evidence), collateral, now=now, trust=roots, cache=cache)
    from nacre.collateral.amd import load_snp_collateral
    from nacre.evidence.snp import extract_snp_from_hcl
    from nacre.verify.snp import verify_snp

    report = extract_snp_from_hcl(evidence) if kind == "hcl" else evidence
    return verify_snp(
        report, load_snp_collateral(collateral.files), now=now, trust=roots, cache=cache
    )
