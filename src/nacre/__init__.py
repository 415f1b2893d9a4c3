"""nacre: TEE-based confidential computing on Kubernetes.

bundle = nacre.CollateralBundle.from_dir(path)
result = nacre.verify_evidence(quote, collateral=bundle, now=datetime.now(UTC))
result.tee, result.tcb_status, result.advisory_ids, result.claims
"""

from __future__ import annotations

from datetime import datetime

from nacre.appraisal.baseline import BaselinePolicy, appraise_baseline
from nacre.collateral.bundle import CollateralBundle
from nacre.collateral.trust import TrustRoots
from nacre.errors import NacreError, PolicyViolationError, VerificationError
from nacre.verify import VerifyCache
from nacre.verify import verify as _verify
from nacre.verify.result import VerifiedEvidence

__all__ = [
    "BaselinePolicy",
    "CollateralBundle",
    "NacreError",
    "PolicyViolationError",
    "TrustRoots",
    "VerificationError",
    "VerifiedEvidence",
    "verify_evidence",
]

__version__ = "0.1.0"


def verify_evidence(
    evidence: bytes,
    *,
    collateral: CollateralBundle,
    now: datetime,
    trust: TrustRoots | None = None,
    policy: BaselinePolicy | None = None,
    cache: VerifyCache | None = None,
) -> VerifiedEvidence:
    """Verify evidence and apply the baseline appraisal (fail closed).

    Raises :class:`nacre.errors.VerificationError` (``.code .field .expected .actual``) on rejection;
    a :class:`PolicyViolationError` still carries the verification result in ``.verified``.
    """
    result = _verify(evidence, collateral=collateral, now=now, trust=trust, cache=cache)
    appraise_baseline(result, policy)
    return result
