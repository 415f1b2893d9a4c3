"""Key lifecycle through the KMS on SQLite and PostgreSQL: disabled, pending deletion, destroyed
and expired keys refuse operations with named errors; verify survives expiry."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from nacre.errors import UsageError
from nacre.kms import KeyStateError, Kms
from nacre.store import ConflictError, LifecycleError, NotFoundError
from test_kms_support import ADMIN, KEY_USER, Clock, kms_on
from test_store_support import BACKENDS


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=BACKENDS)
def kms(request: pytest.FixtureRequest, tmp_path: Path, clock: Clock) -> Iterator[Kms]:
    with kms_on(str(request.param), tmp_path, clock) as (service, _store):
        yield service


def _refused(kms: Kms, key_id: str) -> list[KeyStateError]:
    """Every use operation on ``key_id`` (an AES key) fails with KeyStateError."""
    errors = []
    for op in (
        lambda: kms.encrypt(KEY_USER, key_id, b"x"),
        lambda: kms.generate_data_key(KEY_USER, key_id),
        lambda: kms.wrap(KEY_USER, key_id, b"k" * 16),
    ):
        with pytest.raises(KeyStateError) as info:
            op()
        errors.append(info.value)
    return errors


def test_disable_enable(kms: Kms) -> None:
    kms.create_key(ADMIN, "AES-256", name="k")
    ct = kms.encrypt(KEY_USER, "k", b"data")
    assert kms.disable(ADMIN, "k").state == "disabled"
    for error in _refused(kms, "k"):
        assert (error.code, error.field, error.expected, error.actual) == (
            "KEY_DISABLED",
            "state",
            "enabled",
            "disabled",
        )
        assert isinstance(error, LifecycleError)
    with pytest.raises(KeyStateError):
        kms.decrypt(KEY_USER, "k", ct.ciphertext)
    with pytest.raises(KeyStateError):
        kms.rotate(ADMIN, "k")
    assert kms.enable(ADMIN, "k").state == "enabled"
    assert kms.decrypt(KEY_USER, "k", ct.ciphertext).plaintext == b"data"
    with pytest.raises(LifecycleError):
        kms.enable(ADMIN, "k")  # already enabled


def test_pending_deletion_cancel_and_destroy(kms: Kms, clock: Clock) -> None:
    kms.create_key(ADMIN, "EC-P256", name="sig")
    kms.create_key(ADMIN, "AES-256", name="k")
    sig = kms.sign(KEY_USER, "sig", b"m")
    with pytest.raises(UsageError) as short:
        kms.schedule_delete(ADMIN, "k", 6)
    assert (short.value.field, short.value.expected) == ("waiting_days", "7..30")
    with pytest.raises(UsageError):
        kms.schedule_delete(ADMIN, "k", 31)
    pending = kms.schedule_delete(ADMIN, "k", 7)
    assert pending.state == "pending_deletion"
    assert pending.deletion_date == clock.now + timedelta(days=7)
    errors = _refused(kms, "k")
    assert {e.code for e in errors} == {"KEY_PENDING_DELETION"}
    assert "destroyed at" in errors[0].message
    # Cancel: back to disabled, then enabled explicitly.
    assert kms.cancel_delete(ADMIN, "k").state == "disabled"
    assert kms.enable(ADMIN, "k").state == "enabled"
    kms.encrypt(KEY_USER, "k", b"ok")
    # Schedule again and let the waiting period pass.
    kms.schedule_delete(ADMIN, "k", 7)
    kms.schedule_delete(ADMIN, "sig", 30)
    clock.advance(timedelta(days=6))
    assert kms.destroy_due() == []
    clock.advance(timedelta(days=1))
    assert kms.destroy_due() == ["k"]
    errors = _refused(kms, "k")
    assert {e.code for e in errors} == {"KEY_DESTROYED"}
    with pytest.raises(LifecycleError):
        kms.cancel_delete(ADMIN, "k")  # destroyed is final
    with pytest.raises(KeyStateError):
        kms.verify(KEY_USER, "sig", b"m", sig.signature)  # pending deletion: no verify either
    clock.advance(timedelta(days=30))
    assert kms.destroy_due() == ["sig"]
    assert kms.store.key_versions("sig")[0].state == "destroyed"
    assert {k.id for k in kms.list_keys(ADMIN)} == set()
    assert {k.id for k in kms.list_keys(ADMIN, include_destroyed=True)} == {"k", "sig"}


def test_expiry_refuses_use_but_verify_remains(kms: Kms, clock: Clock) -> None:
    expires = clock.now + timedelta(days=1)
    kms.create_key(ADMIN, "AES-256", name="k", expires_at=expires)
    kms.create_key(ADMIN, "Ed25519", name="ed", expires_at=expires, rotation_days=1)
    sig = kms.sign(KEY_USER, "ed", b"m")
    ct = kms.encrypt(KEY_USER, "k", b"x")
    clock.advance(timedelta(days=1))
    errors = _refused(kms, "k")
    assert {(e.code, e.field, e.actual) for e in errors} == {
        ("KEY_EXPIRED", "expires_at", expires.isoformat())
    }
    with pytest.raises(KeyStateError):
        kms.decrypt(KEY_USER, "k", ct.ciphertext)
    with pytest.raises(KeyStateError):
        kms.sign(KEY_USER, "ed", b"m")
    # Verifying needs only the public key: allowed after expiry.
    assert kms.verify(KEY_USER, "ed", b"m", sig.signature).valid
    # The scheduler does not rotate an expired key.
    assert kms.rotate_due() == []


def test_create_checks(kms: Kms) -> None:
    kms.create_key(ADMIN, "AES-256", name="k")
    with pytest.raises(ConflictError):
        kms.create_key(ADMIN, "AES-256", name="k")
    with pytest.raises(UsageError) as reserved:
        kms.create_key(ADMIN, "AES-256", name="nacre.mine")
    assert reserved.value.field == "name"
    with pytest.raises(UsageError) as rotation:
        kms.create_key(ADMIN, "AES-256", name="r", rotation_days=0)
    assert rotation.value.field == "rotation_days"
    with pytest.raises(Exception, match="unknown key type"):
        kms.create_key(ADMIN, "DES", name="d")  # type: ignore[arg-type]


def test_create_checks_the_key_policy(kms: Kms) -> None:
    kms.store.set_policy("broken", "resource", "claims.isv_svn >=", actor="alice")
    kms.store.set_policy("appraisal", "appraisal", "{}", actor="alice")
    with pytest.raises(UsageError) as broken:
        kms.create_key(ADMIN, "AES-256", name="k", policy_id="broken")
    assert broken.value.field == "policy.rule"
    with pytest.raises(UsageError) as kind:
        kms.create_key(ADMIN, "AES-256", name="k", policy_id="appraisal")
    assert (kind.value.field, kind.value.actual) == ("policy_id", "appraisal")
    with pytest.raises(NotFoundError):
        kms.create_key(ADMIN, "AES-256", name="k", policy_id="missing")
    assert kms.list_keys(ADMIN) == []
