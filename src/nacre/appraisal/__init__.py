"""Layer 4: appraisal of verified evidence. Accepts only :class:`VerifiedEvidence`.

``appraise_baseline`` is the fail-closed floor ``nacre verify`` applies without a policy;
``appraise(verified, load_policy(path))`` applies a policy document and reports every check.
"""

from __future__ import annotations

from nacre.appraisal.appraise import (
    AppraisalCheck,
    AppraisalResult,
    AppraisalStatus,
    TrustworthinessVector,
    appraise,
)
from nacre.appraisal.baseline import BaselinePolicy, appraise_baseline
from nacre.appraisal.policy import (
    Policy,
    PolicyDocumentError,
    Rule,
    SgxReference,
    SnpMinTcb,
    SnpReference,
    TdxReference,
    load_policy,
    parse_policy,
    policy_from_dict,
)

__all__ = [
    "AppraisalCheck",
    "AppraisalResult",
    "AppraisalStatus",
    "BaselinePolicy",
    "Policy",
    "PolicyDocumentError",
    "Rule",
    "SgxReference",
    "SnpMinTcb",
    "SnpReference",
    "TdxReference",
    "TrustworthinessVector",
    "appraise",
    "appraise_baseline",
    "load_policy",
    "parse_policy",
    "policy_from_dict",
]
