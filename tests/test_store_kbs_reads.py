"""The store's one-statement KBS reads (``kbs_session``, ``resource_for_release``) and the
attest write, on SQLite and PostgreSQL: same answers as the general-purpose methods."""

from __future__ import annotations

from datetime import timedelta

import pytest

from nacre.store import NonceError, NotFoundError, Store, verify_chain
from test_store_support import NOW

NONCE = "n" * 43


def test_kbs_session_returns_the_session_and_the_named_policy(store: Store) -> None:
    s = store.create_session("sgx", ttl=timedelta(minutes=5), now=NOW, nonce=NONCE)
    got, policy = store.kbs_session(s.id, now=NOW, policy_id="default")
    assert got == store.get_session(s.id, now=NOW) == s
    assert policy is None  # no such policy: None, the session all the same
    stored = store.set_policy("default", "appraisal", "version: 1\nname: d\n", actor="t", now=NOW)
    got, policy = store.kbs_session(s.id, now=NOW, policy_id="default")
    assert got == s
    assert policy == stored
    assert store.kbs_session(s.id, now=NOW)[1] is None  # none asked for
    with pytest.raises(NotFoundError):
        store.kbs_session("nope", now=NOW, policy_id="default")
    with pytest.raises(NotFoundError) as info:
        store.kbs_session(s.id, now=NOW + timedelta(minutes=6), policy_id="default")
    assert info.value.code == "SESSION_EXPIRED"


def test_attest_session_is_atomic_and_single_use(store: Store) -> None:
    s = store.create_session("sgx", ttl=timedelta(minutes=5), now=NOW, nonce=NONCE)
    with pytest.raises(NonceError):
        store.attest_session(s.id, "x" * 43, tee_pubkey="{}", token="t", now=NOW)
    assert store.get_session(s.id, now=NOW).state == "pending"  # rolled back with the nonce
    done = store.attest_session(s.id, NONCE, tee_pubkey="{}", token="tok", now=NOW)
    assert done.state == "attested"
    assert (done.tee, done.created_at, done.expires_at) == (s.tee, s.created_at, s.expires_at)
    assert store.get_session(s.id, now=NOW) == done
    with pytest.raises(NonceError) as info:
        store.attest_session(s.id, NONCE, tee_pubkey="{}", token="other", now=NOW)
    assert info.value.code == "NONCE_REPLAYED"
    assert store.get_session(s.id, now=NOW).token == "tok"
    with pytest.raises(NotFoundError) as missing:
        store.attest_session("nope", NONCE, tee_pubkey="{}", token="t", now=NOW)
    assert missing.value.code == "NOT_FOUND"
    late = store.create_session("sgx", ttl=timedelta(minutes=5), now=NOW, nonce="m" * 43)
    with pytest.raises(NotFoundError) as expired:
        store.attest_session(
            late.id, "m" * 43, tee_pubkey="{}", token="t", now=NOW + timedelta(minutes=6)
        )
    assert expired.value.code == "SESSION_EXPIRED"


def test_resource_for_release_matches_get_resource(store: Store) -> None:
    with pytest.raises(NotFoundError):
        store.resource_for_release("a/b/c")
    store.put_resource("a/b/c", b"v1", actor="t", now=NOW)
    rel = store.resource_for_release("a/b/c")
    assert rel.policy is None
    assert "v1" not in repr(rel)  # sealed until opened
    assert store.open_release(rel) == store.get_resource("a/b/c")
    policy = store.set_policy("rp", "resource", "claims.x == 1", actor="t", now=NOW)
    store.put_resource("a/b/c", b"v2", policy_id="rp", actor="t", now=NOW)
    rel = store.resource_for_release("a/b/c")
    assert rel.version == 2
    assert rel.info == store.get_resource_info("a/b/c")
    assert rel.policy == policy
    assert store.open_release(rel).data == b"v2"
    store.set_policy("rp", "resource", "claims.x == 2", actor="t", now=NOW)
    assert store.resource_for_release("a/b/c").policy == store.get_policy("rp")
    store.delete_resource("a/b/c", actor="t", now=NOW)
    with pytest.raises(NotFoundError):
        store.resource_for_release("a/b/c")
    store.record(actor="t", action="x.y", target="a", outcome="ok", detail={"n": 1}, now=NOW)
    assert verify_chain(store).ok
