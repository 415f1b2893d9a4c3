"""Callers and key policies: who may use a key, decided from roles or from a verified EAR.

A :class:`Caller` is either a *principal* (an authenticated admin-API subject with roles) or an
attested *workload* (a verified :class:`nacre.token.EarClaims`).

A key's policy is a store policy of kind ``resource`` (``KeyInfo.policy_id``), in the same format
as a KBS release policy (``nacre.server.release``), so one document can guard a resource and a key:
either one CEL expression, or a YAML/JSON mapping naming each rule::

    version: 1
    allow_warning: false      # an EAR status of "warning" is accepted too (default: affirming only)
    admin_use: false          # KMS only: principals with a use role may use the key (default false)
    rules:
      - name: enclave
        expr: claims.mrenclave == "3b56..."
        message: only the model server build 42
      - name: svn
        expr: claims.isv_svn >= 3

Rules run in order; the first that is not ``true`` denies, and the denial names it. A mapping with
no rules admits any token with an accepted status. The rules see, from the caller's token (submodule
``cpu0``, or the only one):

    claims               the TEE's annotated claims (e.g. claims.mrenclave, claims.isv_svn)
    tee                  "sgx" | "tdx" | "snp" | ... ("" when the token names none or several)
    status               the EAR status
    sim                  bool: simulated evidence
    policy_id            the appraisal policy id ("" when absent)
    key                  the key id
    token                the whole claims set of the token
    runtime_data         the runtime data claims (nonce, tee-pubkey, ...), {} when absent
    init_data            the init-data claims, {} when absent
    trust_vector         the AR4SI trustworthiness vector
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from nacre.appraisal.cel import CelEvaluationError, evaluate_bool
from nacre.appraisal.rules import MAX_RULES, NamedRule, parse_rule_document
from nacre.errors import UsageError
from nacre.kms.errors import AccessDeniedError
from nacre.token.ear import DEFAULT_SUBMOD, EarAppraisal, EarClaims

__all__ = [
    "KEY_POLICY_VARIABLES",
    "MAX_KEY_POLICY_RULES",
    "ROLES",
    "Caller",
    "KeyPolicy",
    "KeyRule",
    "check_workload",
    "parse_key_policy",
    "policy_variables",
]

#: Roles of admin-API principals (issue 4 §6).
ROLES: Final = frozenset({"admin", "secret-writer", "key-user", "auditor"})
KEY_POLICY_VARIABLES: Final = (
    "claims",
    "tee",
    "status",
    "sim",
    "policy_id",
    "key",
    "token",
    "runtime_data",
    "init_data",
    "trust_vector",
)
#: Rules in one key policy.
MAX_KEY_POLICY_RULES: Final = MAX_RULES
_NOT_TEE: Final = frozenset({"runtime_data_claims", "init_data_claims"})


@dataclass(frozen=True, slots=True)
class Caller:
    """Who asks. Build with :meth:`principal` or :meth:`workload`."""

    subject: str
    roles: frozenset[str] = frozenset()
    ear: EarClaims | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.subject, str) or not 1 <= len(self.subject) <= 256:
            raise UsageError(
                "a caller has a subject",
                field="subject",
                expected="1-256 characters",
                actual=self.subject,
            )
        unknown = sorted(set(self.roles) - ROLES)
        if unknown:
            raise UsageError(
                "unknown role", field="roles", expected=", ".join(sorted(ROLES)), actual=unknown[0]
            )
        if self.ear is not None and self.roles:
            raise UsageError(
                "a workload caller has no roles",
                field="roles",
                expected="none for an attested workload",
                actual=", ".join(sorted(self.roles)),
            )

    @classmethod
    def principal(cls, subject: str, roles: frozenset[str] | set[str] | tuple[str, ...]) -> Caller:
        """An admin-API principal (its token already verified by the caller of the KMS)."""
        return cls(subject=subject, roles=frozenset(roles))

    @classmethod
    def workload(cls, ear: EarClaims, *, subject: str | None = None) -> Caller:
        """An attested workload; ``ear`` comes from :func:`nacre.token.verify_ear`."""
        if not isinstance(ear, EarClaims):
            raise UsageError("a workload caller needs verified EAR claims", field="ear")
        if subject is None:
            jti = ear.raw.get("jti")
            subject = f"workload:{jti}" if isinstance(jti, str) and jti else f"workload:{ear.kid}"
        return cls(subject=subject, ear=ear)

    @property
    def attested(self) -> bool:
        return self.ear is not None


#: One named CEL rule (the format is shared with KBS release policies).
KeyRule = NamedRule


@dataclass(frozen=True, slots=True)
class KeyPolicy:
    """A compiled key policy."""

    policy_id: str
    version: int
    rules: tuple[KeyRule, ...]
    allow_warning: bool
    admin_use: bool


def parse_key_policy(policy_id: str, version: int, document: str) -> KeyPolicy:
    """Compile a key policy document (a bare CEL expression or a mapping, as above)."""
    doc = parse_rule_document(
        document, what="key policy", prefix="policy.", bare_field="policy.rule"
    )
    return KeyPolicy(policy_id, version, doc.rules, doc.allow_warning, doc.admin_use)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _appraisal(ear: EarClaims) -> EarAppraisal:
    found = ear.submods.get(DEFAULT_SUBMOD)
    if found is None and len(ear.submods) == 1:
        found = next(iter(ear.submods.values()))
    if found is None:
        raise AccessDeniedError(
            "the token has no appraisal to decide on",
            field="submods",
            expected=DEFAULT_SUBMOD,
            actual=", ".join(ear.submods),
        )
    return found


def policy_variables(ear: EarClaims, key_id: str) -> dict[str, Any]:
    """The CEL variables (:data:`KEY_POLICY_VARIABLES`) of a verified token, for key ``key_id``."""
    appraisal = _appraisal(ear)
    evidence = _plain(appraisal.annotated_evidence)
    tees = [name for name in evidence if name not in _NOT_TEE]
    tee = tees[0] if len(tees) == 1 else ""
    claims = evidence.get(tee, {}) if tee else {}
    runtime = evidence.get("runtime_data_claims", {})
    init = evidence.get("init_data_claims", {})
    return {
        "claims": claims if isinstance(claims, dict) else {},
        "tee": tee,
        "status": appraisal.status,
        "sim": appraisal.sim,
        "policy_id": appraisal.policy_id or "",
        "key": key_id,
        "token": _plain(ear.raw),
        "runtime_data": runtime if isinstance(runtime, dict) else {},
        "init_data": init if isinstance(init, dict) else {},
        "trust_vector": dict(appraisal.trustworthiness_vector),
    }


def check_workload(ear: EarClaims, policy: KeyPolicy | None, now: datetime, key_id: str) -> None:
    """Raise :class:`AccessDeniedError` naming the failed check unless ``ear`` satisfies ``policy``.

    Steps: 1. the token is unexpired; 2. the key has a policy (a key without one serves
    principals only); 3. the EAR status is affirming (or warning, when the policy allows it);
    4. every rule evaluates to true (the denial names the first that does not: ``step``).
    """
    # 1. Token lifetime (a Caller may outlive its token).
    if ear.expires_at <= now:
        raise AccessDeniedError(
            "the attestation token expired",
            field="exp",
            expected=f"> {now.isoformat()}",
            actual=ear.expires_at.isoformat(),
            hint="attest again",
        )
    # 2. A policy to decide with.
    if policy is None:
        raise AccessDeniedError(
            "this key has no attestation policy: attested workloads may not use it",
            field="policy_id",
            expected="a key policy",
            actual=None,
            hint="attach a policy to the key (create_key(..., policy_id=...))",
        )
    # 3. Status.
    appraisal = _appraisal(ear)
    accepted = ("affirming", "warning") if policy.allow_warning else ("affirming",)
    if appraisal.status not in accepted:
        raise AccessDeniedError(
            f"attestation status {appraisal.status} is not accepted by policy {policy.policy_id}",
            field="ear.status",
            expected=" | ".join(accepted),
            actual=appraisal.status,
        )
    # 4. Rules, in order; the first that does not hold denies.
    variables = policy_variables(ear, key_id)
    for rule in policy.rules:
        try:
            allowed = evaluate_bool(rule.program, variables)
        except CelEvaluationError as exc:
            raise AccessDeniedError(
                f"policy {policy.policy_id} rule {rule.name} failed to evaluate: {exc.message}",
                field="policy.rule",
                expected=rule.program.source[:200],
                actual="evaluation error",
                step=rule.name,
            ) from None
        if not allowed:
            why = f": {rule.message}" if rule.message else ""
            raise AccessDeniedError(
                f"policy {policy.policy_id} rule {rule.name} does not hold for this workload{why}",
                field="policy.rule",
                expected=rule.program.source[:200],
                actual="false",
                step=rule.name,
            )
