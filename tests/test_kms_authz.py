"""KMS authorization and audit on SQLite and PostgreSQL: CEL key policies over verified EAR
claims, EAR status, roles, export rules; every allowed and denied operation in the audit log."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from nacre.errors import UsageError
from nacre.kms import AccessDeniedError, Caller, KeyStateError, Kms, parse_key_policy
from nacre.store import verify_chain
from test_kms_support import ADMIN, AUDITOR, KEY_USER, MRENCLAVE, SGX_RULE, Attester, Clock, kms_on
from test_store_support import BACKENDS


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=BACKENDS)
def kms(request: pytest.FixtureRequest, tmp_path: Path, clock: Clock) -> Iterator[Kms]:
    with kms_on(str(request.param), tmp_path, clock) as (service, _store):
        yield service


@pytest.fixture
def attester(clock: Clock) -> Attester:
    return Attester.create(clock)


def _doc(**flags: bool) -> str:
    """A policy document in the release-policy format (named rules), as JSON."""
    return json.dumps({"version": 1, **flags, "rules": [{"name": "enclave", "expr": SGX_RULE}]})


def _policy(kms: Kms, policy_id: str, document: str) -> None:
    kms.store.set_policy(policy_id, "resource", document, actor="alice")


def test_policy_allows_and_denies_by_claims(kms: Kms, attester: Attester, clock: Clock) -> None:
    _policy(kms, "enclave", SGX_RULE)
    kms.create_key(ADMIN, "AES-256", name="k", policy_id="enclave")
    good, _ = attester.caller()
    ct = kms.encrypt(good, "k", b"model key")
    assert kms.decrypt(good, "k", ct.ciphertext).plaintext == b"model key"
    # ISV SVN too low, another enclave: denied, the rule named.
    for claims in (
        {"mrenclave": MRENCLAVE, "isv_svn": 2},
        {"mrenclave": "cd" * 32, "isv_svn": 9},
    ):
        bad, _ = attester.caller(claims=claims)
        with pytest.raises(AccessDeniedError) as info:
            kms.decrypt(bad, "k", ct.ciphertext)
        assert (info.value.code, info.value.field, info.value.actual) == (
            "KMS_ACCESS_DENIED",
            "policy.rule",
            "false",
        )
        assert info.value.expected == SGX_RULE
    # A claim the rule needs is missing: an evaluation error, still a denial.
    missing, _ = attester.caller(claims={"mrenclave": MRENCLAVE})
    with pytest.raises(AccessDeniedError) as info:
        kms.encrypt(missing, "k", b"x")
    assert (info.value.field, info.value.actual) == ("policy.rule", "evaluation error")
    # A caller outlives its token: once the token expired, it is refused.
    clock.advance(timedelta(minutes=11))
    with pytest.raises(AccessDeniedError) as info:
        kms.encrypt(good, "k", b"x")
    assert info.value.field == "exp"


def test_status_warning_only_when_the_policy_allows(kms: Kms, attester: Attester) -> None:
    _policy(kms, "strict", SGX_RULE)
    _policy(kms, "lenient", _doc(allow_warning=True))
    kms.create_key(ADMIN, "Ed25519", name="strict-key", policy_id="strict")
    kms.create_key(ADMIN, "Ed25519", name="lenient-key", policy_id="lenient")
    warning, _ = attester.caller(status="warning")
    with pytest.raises(AccessDeniedError) as info:
        kms.sign(warning, "strict-key", b"m")
    assert (info.value.field, info.value.expected, info.value.actual) == (
        "ear.status",
        "affirming",
        "warning",
    )
    assert kms.sign(warning, "lenient-key", b"m").version == 1
    bad, _ = attester.caller(status="contraindicated")
    with pytest.raises(AccessDeniedError) as info:
        kms.sign(bad, "lenient-key", b"m")
    assert info.value.field == "ear.status"


def test_roles_and_admin_use(kms: Kms, attester: Attester) -> None:
    _policy(kms, "workloads-only", SGX_RULE)
    _policy(kms, "shared", _doc(admin_use=True))
    kms.create_key(ADMIN, "AES-256", name="wl", policy_id="workloads-only")
    kms.create_key(ADMIN, "AES-256", name="shared", policy_id="shared")
    kms.create_key(ADMIN, "AES-256", name="plain")
    # key-user: keys whose policy allows admin use, and keys without a policy.
    kms.encrypt(KEY_USER, "shared", b"x")
    kms.encrypt(KEY_USER, "plain", b"x")
    with pytest.raises(AccessDeniedError) as info:
        kms.encrypt(KEY_USER, "wl", b"x")
    assert (info.value.field, info.value.actual) == ("policy.admin_use", "False")
    # auditor: no use, but may list.
    with pytest.raises(AccessDeniedError) as info:
        kms.encrypt(AUDITOR, "plain", b"x")
    assert info.value.field == "role"
    assert {k.id for k in kms.list_keys(AUDITOR)} == {"wl", "shared", "plain"}
    # Management is admin-only: key-user, auditor, workloads are refused.
    workload, _ = attester.caller()
    for caller in (KEY_USER, AUDITOR, workload):
        with pytest.raises(AccessDeniedError) as info:
            kms.create_key(caller, "AES-256", name="nope")
        assert (info.value.field, info.value.expected) == ("role", "admin")
        with pytest.raises(AccessDeniedError):
            kms.rotate(caller, "plain")
        with pytest.raises(AccessDeniedError):
            kms.schedule_delete(caller, "plain", 7)
    with pytest.raises(AccessDeniedError):
        kms.list_keys(workload)
    # A workload may not use a key without a policy (it serves principals only).
    with pytest.raises(AccessDeniedError) as info:
        kms.encrypt(workload, "plain", b"x")
    assert info.value.field == "policy_id"
    # Callers are checked when built.
    with pytest.raises(UsageError):
        Caller.principal("eve", {"root"})


def test_export_refusals(kms: Kms, attester: Attester) -> None:
    _policy(kms, "enclave", SGX_RULE)
    _policy(kms, "shared", _doc(admin_use=True))
    kms.create_key(ADMIN, "AES-256", name="fixed", policy_id="enclave")
    kms.create_key(ADMIN, "AES-256", name="exp", policy_id="shared", exportable=True)
    workload, _ = attester.caller()
    with pytest.raises(AccessDeniedError) as info:
        kms.export_to_tee(workload, "fixed")
    assert (info.value.field, info.value.actual) == ("exportable", "False")
    for principal in (ADMIN, KEY_USER):
        with pytest.raises(AccessDeniedError) as info:
            kms.export_to_tee(principal, "exp")
        assert info.value.field == "caller"
    stranger, _ = attester.caller(claims={"mrenclave": "00" * 32, "isv_svn": 9})
    with pytest.raises(AccessDeniedError) as info:
        kms.export_to_tee(stranger, "exp")
    assert info.value.field == "policy.rule"
    keyless, _ = attester.caller(with_tee_key=False)
    with pytest.raises(AccessDeniedError) as info:
        kms.export_to_tee(keyless, "exp")
    assert info.value.field == "tee-pubkey"
    assert kms.export_to_tee(workload, "exp").key_id == "exp"


def test_audit_records_allowed_and_denied_without_secrets(kms: Kms, attester: Attester) -> None:
    _policy(kms, "enclave", SGX_RULE)
    kms.create_key(ADMIN, "AES-256", name="k", policy_id="enclave")
    good, _ = attester.caller()
    bad, _ = attester.caller(claims={"mrenclave": MRENCLAVE, "isv_svn": 1})
    ct = kms.encrypt(good, "k", b"top secret plaintext")
    with pytest.raises(AccessDeniedError):
        kms.decrypt(bad, "k", ct.ciphertext)
    with pytest.raises(AccessDeniedError):
        kms.create_key(KEY_USER, "AES-256", name="x")
    kms.disable(ADMIN, "k")
    with pytest.raises(AccessDeniedError):
        kms.encrypt(KEY_USER, "k", b"x")  # authorization comes before the state check
    kms.create_key(ADMIN, "AES-256", name="plain")
    kms.disable(ADMIN, "plain")
    with pytest.raises(KeyStateError):
        kms.encrypt(KEY_USER, "plain", b"x")
    last = kms.store.audit_entries()[-1]
    assert (last.action, last.outcome, last.detail["code"]) == (
        "kms.encrypt",
        "refused",
        "KEY_DISABLED",
    )
    kms.enable(ADMIN, "k")
    entries = kms.store.audit_entries()
    rows = [(e.actor, e.action, e.target, e.outcome) for e in entries]
    assert ("alice", "key.create", "k", "ok") in rows
    assert (good.subject, "kms.encrypt", "k", "allowed") in rows
    assert (bad.subject, "kms.decrypt", "k", "denied") in rows
    assert ("bob", "kms.create", "x", "denied") in rows
    assert ("alice", "key.disabled", "k", "ok") in rows
    assert ("bob", "kms.encrypt", "k", "denied") in rows
    denied = next(e for e in entries if e.action == "kms.decrypt")
    assert denied.detail["check"] == "policy.rule"
    allowed = next(e for e in entries if e.action == "kms.encrypt" and e.outcome == "allowed")
    assert allowed.detail["version"] == 1
    text = "\n".join(repr(e) for e in entries)
    assert "top secret" not in text
    assert ct.ciphertext.hex() not in text
    assert verify_chain(kms.store).ok


def test_policy_documents() -> None:
    bare = parse_key_policy("p", 1, "claims.isv_svn >= 3")
    assert (bare.allow_warning, bare.admin_use, len(bare.rules)) == (False, False, 1)
    full = parse_key_policy("p", 1, _doc(allow_warning=True, admin_use=True))
    assert (full.allow_warning, full.admin_use, full.rules[0].name) == (True, True, "enclave")
    yaml_doc = parse_key_policy(
        "p",
        1,
        "allow_warning: true\nrules:\n  - name: svn\n    expr: claims.isv_svn >= 3\n"
        "    message: patched enclaves only\n",
    )
    assert (yaml_doc.allow_warning, yaml_doc.rules[0].message) == (True, "patched enclaves only")
    for document, field in (
        (json.dumps({"rules": [], "extra": 1}), "policy.extra"),
        ("claims.isv_svn >=", "policy.rule"),
        (json.dumps({"rules": [], "admin_use": "yes"}), "policy.admin_use"),
        (
            json.dumps({"rules": [{"name": "a", "expr": "true"}, {"name": "a", "expr": "true"}]}),
            "policy.rules[1].name",
        ),
        (json.dumps({"rules": [{"name": "a", "expr": "1 +"}]}), "policy.rules[0].expr"),
        (json.dumps({"version": 2}), "policy.version"),
        ("[1, 2]", "policy"),
    ):
        with pytest.raises(UsageError) as info:
            parse_key_policy("p", 1, document)
        assert info.value.field == field, document


def test_named_rules_deny_with_the_rule_named(kms: Kms, attester: Attester) -> None:
    document = json.dumps(
        {
            "rules": [
                {"name": "enclave", "expr": f"claims.mrenclave == '{MRENCLAVE}'"},
                {"name": "svn", "expr": "claims.isv_svn >= 3", "message": "patch the enclave"},
                {
                    "name": "bound-key",
                    "expr": "key == 'k' && runtime_data['tee-pubkey'].kty == 'EC'",
                },
            ]
        }
    )
    _policy(kms, "named", document)
    kms.create_key(ADMIN, "AES-256", name="k", policy_id="named")
    good, _ = attester.caller()
    kms.encrypt(good, "k", b"x")
    old, _ = attester.caller(claims={"mrenclave": MRENCLAVE, "isv_svn": 2})
    with pytest.raises(AccessDeniedError) as info:
        kms.encrypt(old, "k", b"x")
    assert (info.value.step, info.value.field, info.value.expected) == (
        "svn",
        "policy.rule",
        "claims.isv_svn >= 3",
    )
    assert "patch the enclave" in str(info.value)
