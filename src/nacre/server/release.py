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
``policy_id`` (the appraisal policy), ``resource`` (``repo/type/tag``), ``token`` (all claims).

Without a policy a resource is released to any affirming token. Checks run in order and all of
them run; the first failed one is the one a 403 names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import yaml

from nacre.appraisal.cel import (
    CelCompileError,
    CelEvaluationError,
    CelProgram,
    compile_expr,
    evaluate_bool,
)
from nacre.errors import UsageError
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
MAX_RELEASE_RULES: Final = 64
_TEES: Final = ("sgx", "tdx", "snp")
#: ``admin_use`` is a KMS member (principals may use a key, :mod:`nacre.kms.policy`); the same
#: document may guard a resource and a key, so it is accepted here and has no effect on release.
_KEYS: Final = ("version", "name", "allow_warning", "admin_use", "rules")
_RULE_KEYS: Final = ("name", "expr", "message")


@dataclass(frozen=True, slots=True)
class ReleaseRule:
    name: str
    program: CelProgram
    message: str


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


def _bad(message: str, field: str, expected: str, actual: object) -> UsageError:
    return UsageError(message, code="POLICY_INVALID", field=field, expected=expected, actual=actual)


def _compile(expr: object, field: str) -> CelProgram:
    if not isinstance(expr, str) or not expr.strip():
        raise _bad(
            "a rule needs a CEL expression", field, "a non-empty string", type(expr).__name__
        )
    try:
        return compile_expr(expr)
    except CelCompileError as exc:
        raise _bad(
            f"CEL does not compile: {exc.message}", field, "a CEL expression", expr[:200]
        ) from None


def parse_release_policy(text: str) -> ReleasePolicy:
    """Parse a release policy document (or a bare CEL expression); every error names its field."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        doc = text  # not YAML at all: maybe a CEL expression with YAML-hostile characters
    if isinstance(doc, str) or doc is None:
        return ReleasePolicy(False, (ReleaseRule("expr", _compile(text.strip(), "expr"), ""),))
    if not isinstance(doc, dict):
        raise _bad(
            "a release policy is a CEL expression or a mapping",
            "policy",
            "mapping",
            type(doc).__name__,
        )
    unknown = sorted(str(k) for k in doc if k not in _KEYS)
    if unknown:
        raise _bad("unknown key in release policy", unknown[0], ", ".join(_KEYS), unknown[0])
    if doc.get("version", 1) != 1:
        raise _bad("unsupported release policy version", "version", "1", doc.get("version"))
    allow_warning = doc.get("allow_warning", False)
    if not isinstance(allow_warning, bool):
        raise _bad("allow_warning is a boolean", "allow_warning", "true or false", allow_warning)
    admin_use = doc.get("admin_use", False)
    if not isinstance(admin_use, bool):
        raise _bad("admin_use is a boolean", "admin_use", "true or false", admin_use)
    raw_rules = doc.get("rules", [])
    if not isinstance(raw_rules, list) or len(raw_rules) > MAX_RELEASE_RULES:
        raise _bad(
            "rules is a list",
            "rules",
            f"a list of <= {MAX_RELEASE_RULES} rules",
            type(raw_rules).__name__,
        )
    rules: list[ReleaseRule] = []
    seen: set[str] = set()
    for i, raw in enumerate(raw_rules):
        where = f"rules[{i}]"
        if not isinstance(raw, dict):
            raise _bad("a rule is a mapping", where, "{name, expr, message?}", type(raw).__name__)
        extra = sorted(str(k) for k in raw if k not in _RULE_KEYS)
        if extra:
            raise _bad(
                "unknown key in rule", f"{where}.{extra[0]}", ", ".join(_RULE_KEYS), extra[0]
            )
        name = raw.get("name")
        if not isinstance(name, str) or not name or name in seen:
            raise _bad(
                "a rule needs a unique name", f"{where}.name", "a unique non-empty string", name
            )
        seen.add(name)
        message = raw.get("message", "")
        if not isinstance(message, str):
            raise _bad("message is a string", f"{where}.message", "string", type(message).__name__)
        rules.append(ReleaseRule(name, _compile(raw.get("expr"), f"{where}.expr"), message))
    return ReleasePolicy(allow_warning, tuple(rules))


def release_variables(claims: EarClaims, resource: str) -> dict[str, Any]:
    """The CEL activation for a token: the TEE claims of its ``cpu0`` appraisal and context."""
    appraisal = claims.appraisal()
    annotated = appraisal.annotated_evidence
    tee = next((t for t in _TEES if isinstance(annotated.get(t), Mapping)), "")
    tee_claims = annotated.get(tee, {}) if tee else {}
    return {
        "claims": dict(tee_claims),
        "tee": tee,
        "status": appraisal.status,
        "sim": appraisal.sim,
        "policy_id": appraisal.policy_id or "",
        "resource": resource,
        "token": dict(claims.raw),
    }


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
    for rule in policy.rules if policy is not None else ():
        try:
            passed = evaluate_bool(rule.program, variables)
            actual = str(passed).lower()
            why = rule.message or ("rule holds" if passed else "rule does not hold")
        except CelEvaluationError as exc:
            passed, actual, why = False, "error", exc.message
        checks.append(ReleaseCheck(f"rules.{rule.name}", passed, rule.program.source, actual, why))
    return ReleaseDecision(tuple(checks))
