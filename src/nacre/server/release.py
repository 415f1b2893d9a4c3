"""Resource release policies: CEL over the claims of a verified EAR token.

A release policy (stored as a policy of kind ``resource``) is either one CEL expression::

    claims.mrenclave == "3b56..." && claims.isv_svn >= 3

or a document (YAML or JSON) naming each rule, so a denial names the rule that failed::

    version: 1
    allow_warning: false          # release to "warning" tokens too (default: affirming only)
    admin_use: false              # KMS only (principals may use a key guarded by this policy)
    rules:
      - name: enclave
        expr: claims.mrenclave == "3b56..."
        message: only the model server build 42
      - name: svn
        expr: claims.isv_svn >= 3

Variables: ``claims`` (the TEE's verified claims from the token, DESIGN §3 names, plus
``tcb_status`` and ``advisory_ids``), ``tee``, ``status`` (``ear.status``), ``sim`` (bool),
``policy_id`` (the appraisal policy), ``resource`` (``repo/type/tag``), ``token`` (all claims),
``runtime_data`` (the attested runtime data) and ``init_data`` (the KBS init-data the evidence was
checked to carry: ``version``, ``algorithm``, ``digest``, ``data``; empty when none was sent).

Without a policy a resource is released to any affirming token. Checks run in order and all of
them run; the first failed one is the one a 403 names.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from nacre.appraisal.cel import CelEvaluationError, CelVariables, evaluate_bool
from nacre.appraisal.rules import MAX_RULES, NamedRule, parse_rule_document
from nacre.token import EarClaims

__all__ = [
    "MAX_RELEASE_RULES",
    "ReleaseCheck",
    "ReleaseDecision",
    "ReleasePolicy",
    "ReleaseRule",
    "evaluate_release",
    "parse_release_policy",
    "release_variables",
]

#: Rules in one release policy.
MAX_RELEASE_RULES: Final = MAX_RULES
_TEES: Final = ("sgx", "tdx", "snp")


#: One named CEL rule (the format is shared with KMS key policies).
ReleaseRule = NamedRule


@dataclass(frozen=True, slots=True)
class ReleasePolicy:
    allow_warning: bool
    rules: tuple[ReleaseRule, ...]


@dataclass(frozen=True, slots=True)
class ReleaseCheck:
    name: str
    passed: bool
    expected: str
    actual: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "passed": self.passed,
            "expected": self.expected,
            "actual": self.actual,
            "message": self.message,
        }


@dataclass(frozen=True, slots=True)
class ReleaseDecision:
    checks: tuple[ReleaseCheck, ...]

    @property
    def allowed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def first_failure(self) -> ReleaseCheck | None:
        return next((c for c in self.checks if not c.passed), None)


def parse_release_policy(text: str) -> ReleasePolicy:
    """Parse a release policy document (or a bare CEL expression); every error names its field.

    ``admin_use`` (a KMS member, :mod:`nacre.kms.policy`) is accepted, so one document can guard a
    resource and a key; it has no effect on release.
    """
    doc = parse_rule_document(text, what="release policy")
    return ReleasePolicy(doc.allow_warning, doc.rules)


def release_variables(claims: EarClaims, resource: str) -> dict[str, Any]:
    """The CEL activation for a token: the TEE claims of its ``cpu0`` appraisal and context."""
    appraisal = claims.appraisal()
    annotated = appraisal.annotated_evidence
    tee = next((t for t in _TEES if isinstance(annotated.get(t), Mapping)), "")
    tee_claims = annotated.get(tee, {}) if tee else {}
    runtime = annotated.get("runtime_data_claims")
    init = annotated.get("init_data_claims")
    return {
        "claims": dict(tee_claims),
        "runtime_data": dict(runtime) if isinstance(runtime, Mapping) else {},
        "init_data": dict(init) if isinstance(init, Mapping) else {},
        "tee": tee,
        "status": appraisal.status,
        "sim": appraisal.sim,
        "policy_id": appraisal.policy_id or "",
        "resource": resource,
        "token": dict(claims.raw),
    }


_IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_USED_CACHE_MAX: Final = 4096
_used_names: dict[str, frozenset[str]] = {}


def _used_by(rule: ReleaseRule, variables: dict[str, Any]) -> frozenset[str]:
    """The variables ``rule`` may name: those whose name occurs in its source as an identifier
    token. Handing the CEL engine only these spares converting the rest (the whole token) on
    every evaluation. A CEL expression reaches a variable only by naming it, so nothing it reads
    is left out; a name inside a string literal merely keeps an unused variable."""
    source = rule.program.source
    names = _used_names.get(source)
    if names is None:
        names = frozenset(_IDENTIFIER.findall(source)) & frozenset(variables)
        if len(_used_names) >= _USED_CACHE_MAX:
            _used_names.clear()
        _used_names[source] = names
    return names


def _rule_variables(
    rules: tuple[ReleaseRule, ...], variables: dict[str, Any]
) -> Callable[[ReleaseRule], Mapping[str, Any] | CelVariables]:
    """What each rule is evaluated over: the variables any of the rules uses, converted to CEL
    once for all of them; when one has no CEL form, each rule gets its own (so only the rules
    that name it fail, with the reason)."""
    names = frozenset().union(*(_used_by(rule, variables) for rule in rules))
    if not rules:
        return lambda _rule: {}
    try:
        shared = CelVariables({k: v for k, v in variables.items() if k in names})
    except CelEvaluationError:
        return lambda rule: {k: v for k, v in variables.items() if k in _used_by(rule, variables)}
    return lambda _rule: shared


def evaluate_release(
    policy: ReleasePolicy | None, claims: EarClaims, resource: str
) -> ReleaseDecision:
    """Every check of the release of ``resource`` to the holder of ``claims``."""
    variables = release_variables(claims, resource)
    status = str(variables["status"])
    allowed_status = (
        ("affirming", "warning") if policy is not None and policy.allow_warning else ("affirming",)
    )
    checks = [
        ReleaseCheck(
            "ear.status",
            status in allowed_status,
            " | ".join(allowed_status),
            status,
            "the attestation result must be " + " or ".join(allowed_status),
        )
    ]
    rules = policy.rules if policy is not None else ()
    over = _rule_variables(rules, variables)
    for rule in rules:
        try:
            passed = evaluate_bool(rule.program, over(rule))
            actual = str(passed).lower()
            why = rule.message or ("rule holds" if passed else "rule does not hold")
        except CelEvaluationError as exc:
            passed, actual, why = False, "error", exc.message
        checks.append(ReleaseCheck(f"rules.{rule.name}", passed, rule.program.source, actual, why))
    return ReleaseDecision(tuple(checks))
