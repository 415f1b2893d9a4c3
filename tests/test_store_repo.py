"""Store repositories on SQLite and PostgreSQL: migrations, CRUD, key lifecycle, nonces, sweeps."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from nacre.errors import LimitExceededError, UsageError
from nacre.store import (
    ConflictError,
    LifecycleError,
    NonceError,
    NotFoundError,
    Store,
    open_store,
    verify_chain,
)
from nacre.store._schema import metadata
from test_store_support import NOW, make_sealer

# -- migrations --------------------------------------------------------------------------------


def test_migrations_apply_from_empty_and_match_the_schema(db_url: str, tmp_path: Path) -> None:
    store = open_store(db_url)
    try:
        with store.engine.connect() as conn:
            tables = set(sa.inspect(conn).get_table_names())
            version = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one()
            diff = compare_metadata(MigrationContext.configure(conn), metadata)
        assert {t.name for t in metadata.sorted_tables} <= tables
        assert version == "0003_session_indexes"
        assert diff == []
        if store.engine.dialect.name == "sqlite":
            with store.engine.connect() as conn:
                assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
                assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
                assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
                assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    finally:
        store.close()
    # Opening again is a no-op upgrade; the chain (empty) verifies.
    with open_store(db_url) as again:
        assert verify_chain(again).ok


def test_unsupported_urls_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as info:
        open_store("mysql://x/y")
    assert info.value.field == "database"
    with pytest.raises(UsageError):
        open_store("sqlite:///:memory:")
    with pytest.raises(UsageError):
        open_store("not a url")


def test_secrets_need_a_sealer(db_url: str) -> None:
    with open_store(db_url) as store, pytest.raises(UsageError) as info:
        store.put_resource("a/b/c", b"x", actor="admin")
    assert info.value.field == "sealer"


# -- resources and policies --------------------------------------------------------------------


def test_resource_crud_keeps_versions(store: Store) -> None:
    info = store.put_resource("repo/key/model", b"v1-secret", actor="admin", now=NOW)
    assert (str(info.name), info.current_version) == ("repo/key/model", 1)
    info = store.put_resource("repo/key/model", b"v2-secret", actor="admin", now=NOW)
    assert info.current_version == 2
    assert store.get_resource("repo/key/model").data == b"v2-secret"
    assert store.get_resource("repo/key/model", version=1).data == b"v1-secret"
    store.put_resource("repo/key/other", b"o", actor="admin", now=NOW)
    assert [str(r.name) for r in store.list_resources()] == ["repo/key/model", "repo/key/other"]
    store.delete_resource("repo/key/model", actor="admin", now=NOW)
    assert [str(r.name) for r in store.list_resources()] == ["repo/key/other"]
    with pytest.raises(NotFoundError):
        store.get_resource("repo/key/model")
    # A later put revives it with the next version; the old versions are still there.
    assert store.put_resource("repo/key/model", b"v3", actor="admin").current_version == 3
    assert store.get_resource("repo/key/model", version=1).data == b"v1-secret"
    with pytest.raises(NotFoundError) as info_nf:
        store.get_resource("repo/key/model", version=9)
    assert info_nf.value.field == "version"
    assert "v3" not in repr(store.get_resource("repo/key/model"))


@pytest.mark.parametrize("name", ["a/b", "a/b/c/d", "../b/c", "a//c", "a/b/c d", "", "-a/b/c"])
def test_bad_resource_names_change_nothing(store: Store, name: str) -> None:
    with pytest.raises(UsageError) as info:
        store.put_resource(name, b"x", actor="admin")
    assert info.value.field == "name"
    assert store.list_resources() == []
    assert verify_chain(store).entries == 0


def test_oversized_resource_is_refused_before_any_write(store: Store) -> None:
    with pytest.raises(LimitExceededError):
        store.put_resource("a/b/c", b"x" * (1024 * 1024 + 1), actor="admin")
    assert store.list_resources() == []


def test_policies(store: Store) -> None:
    p = store.set_policy("release-1", "resource", "input.ok", actor="admin", now=NOW)
    assert (p.version, p.kind) == (1, "resource")
    p = store.set_policy("release-1", "resource", "input.ok && true", actor="admin", now=NOW)
    assert (p.version, p.document) == (2, "input.ok && true")
    store.set_policy("sgx-default", "appraisal", "{}", actor="admin")
    assert [x.id for x in store.list_policies()] == ["release-1", "sgx-default"]
    assert [x.id for x in store.list_policies("appraisal")] == ["sgx-default"]
    with pytest.raises(ConflictError):
        store.set_policy("release-1", "appraisal", "{}", actor="admin")
    assert store.get_policy("release-1").version == 2
    with pytest.raises(NotFoundError):
        store.get_policy("nope")
    # Resources reference resource policies only, and only existing ones.
    store.put_resource("a/b/c", b"s", policy_id="release-1", actor="admin")
    assert store.get_resource_info("a/b/c").policy_id == "release-1"
    with pytest.raises(NotFoundError):
        store.put_resource("a/b/d", b"s", policy_id="missing", actor="admin")
    with pytest.raises(UsageError):
        store.put_resource("a/b/d", b"s", policy_id="sgx-default", actor="admin")
    assert [str(r.name) for r in store.list_resources()] == ["a/b/c"]


# -- keys --------------------------------------------------------------------------------------


def test_key_create_rotate_and_material(store: Store) -> None:
    k = store.create_key(
        "k1",
        "EC-P256",
        b"private-der-1",
        public_key=b"pub1",
        rotation_period=timedelta(days=30),
        actor="admin",
        now=NOW,
    )
    assert (k.state, k.current_version, k.exportable) == ("enabled", 1, False)
    assert k.next_rotation_at == NOW + timedelta(days=30)
    with pytest.raises(ConflictError):
        store.create_key("k1", "EC-P256", b"x", actor="admin")
    v2 = store.rotate_key("k1", b"private-der-2", public_key=b"pub2", actor="admin", now=NOW)
    assert v2.version == 2
    assert [v.version for v in store.key_versions("k1")] == [1, 2]
    info, material = store.key_material("k1", now=NOW)
    assert (info.version, material, info.public_key) == (2, b"private-der-2", b"pub2")
    assert store.key_material("k1", version=1, now=NOW)[1] == b"private-der-1"
    assert store.keys_due_for_rotation(now=NOW + timedelta(days=29)) == []
    assert [x.id for x in store.keys_due_for_rotation(now=NOW + timedelta(days=31))] == ["k1"]
    with pytest.raises(UsageError):
        store.create_key("k2", "DES", b"x", actor="admin")  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        store.create_key("k2", "AES-256", b"x", rotation_period=timedelta(hours=1), actor="a")
    assert [x.id for x in store.list_keys()] == ["k1"]


def test_key_expiry(store: Store) -> None:
    store.create_key(
        "k", "AES-256", b"k" * 32, expires_at=NOW + timedelta(days=1), actor="a", now=NOW
    )
    assert store.key_material("k", now=NOW)[1] == b"k" * 32
    with pytest.raises(LifecycleError) as info:
        store.key_material("k", now=NOW + timedelta(days=2))
    assert info.value.field == "expires_at"


def test_key_lifecycle(store: Store) -> None:
    store.create_key("k", "Ed25519", b"seed" * 8, actor="admin", now=NOW)
    assert store.disable_key("k", actor="admin", now=NOW).state == "disabled"
    with pytest.raises(LifecycleError):
        store.key_material("k", now=NOW)
    with pytest.raises(LifecycleError):
        store.rotate_key("k", b"x", actor="admin")
    with pytest.raises(LifecycleError):
        store.disable_key("k", actor="admin")
    assert store.enable_key("k", actor="admin", now=NOW).state == "enabled"
    for days in (6, 31, 0, -1):
        with pytest.raises(UsageError) as info:
            store.schedule_key_deletion("k", waiting_days=days, actor="admin", now=NOW)
        assert info.value.field == "waiting_days"
    assert store.get_key("k").state == "enabled"
    pending = store.schedule_key_deletion("k", waiting_days=7, actor="admin", now=NOW)
    assert (pending.state, pending.deletion_date) == ("pending_deletion", NOW + timedelta(days=7))
    with pytest.raises(LifecycleError):
        store.enable_key("k", actor="admin")  # only cancel leaves pending_deletion
    with pytest.raises(LifecycleError):
        store.key_material("k", now=NOW)
    cancelled = store.cancel_key_deletion("k", actor="admin", now=NOW)
    assert (cancelled.state, cancelled.deletion_date) == ("disabled", None)
    with pytest.raises(LifecycleError):
        store.cancel_key_deletion("k", actor="admin")
    store.schedule_key_deletion("k", waiting_days=30, actor="admin", now=NOW)
    assert store.destroy_due_keys(now=NOW + timedelta(days=29)) == []
    assert store.get_key("k").state == "pending_deletion"
    assert store.destroy_due_keys(now=NOW + timedelta(days=30)) == ["k"]
    destroyed = store.get_key("k")
    assert destroyed.state == "destroyed"
    assert [v.state for v in store.key_versions("k")] == ["destroyed"]
    # Destroyed is final, and the wrapped material is gone from the database.
    for op in (store.enable_key, store.disable_key, store.cancel_key_deletion):
        with pytest.raises(LifecycleError):
            op("k", actor="admin")
    with pytest.raises(LifecycleError):
        store.schedule_key_deletion("k", waiting_days=7, actor="admin")
    with pytest.raises(LifecycleError):
        store.key_material("k")
    with store.engine.connect() as conn:
        row = conn.execute(sa.text("SELECT ciphertext, wrapped_key FROM key_versions")).one()
    assert tuple(row) == (None, None)
    assert verify_chain(store).ok
    with pytest.raises(NotFoundError):
        store.get_key("missing")


# -- sessions and nonces -----------------------------------------------------------------------


def test_session_nonce_is_single_use(store: Store) -> None:
    s = store.create_session("sgx", ttl=timedelta(minutes=5), now=NOW)
    assert store.get_session(s.id, now=NOW).nonce == s.nonce
    done = store.attest_session(s.id, s.nonce, tee_pubkey='{"kty":"EC"}', token="jwt", now=NOW)
    assert (done.state, done.token) == ("attested", "jwt")
    with pytest.raises(NonceError) as info:
        store.consume_nonce(s.id, s.nonce, now=NOW)
    assert info.value.code == "NONCE_REPLAYED"
    with pytest.raises(NonceError) as info:
        store.consume_nonce(s.id, "A" * 43, now=NOW)
    assert info.value.code == "NONCE_UNKNOWN"
    # A replayed attest changes nothing stored.
    with pytest.raises(NonceError):
        store.attest_session(s.id, s.nonce, tee_pubkey="other", token="other", now=NOW)
    assert store.get_session(s.id, now=NOW).token == "jwt"


def test_session_expiry_and_sweep(store: Store) -> None:
    s = store.create_session("tdx", ttl=timedelta(minutes=5), now=NOW)
    later = NOW + timedelta(minutes=6)
    with pytest.raises(NotFoundError) as info:
        store.get_session(s.id, now=later)
    assert info.value.code == "SESSION_EXPIRED"
    with pytest.raises(NonceError) as nonce_info:
        store.consume_nonce(s.id, s.nonce, now=later)
    assert nonce_info.value.code == "NONCE_EXPIRED"
    live = store.create_session("tdx", ttl=timedelta(minutes=30), now=NOW)
    swept = store.sweep_expired(now=later)
    assert (swept.sessions, swept.nonces) == (1, 1)
    assert store.get_session(live.id, now=later).id == live.id
    with pytest.raises(NotFoundError):
        store.get_session(s.id, now=NOW)
    with pytest.raises(UsageError):
        store.create_session("sgx", ttl=timedelta(days=2))
    with pytest.raises(ConflictError):
        store.create_session("sgx", ttl=timedelta(minutes=1), nonce=live.nonce)


def _race(store: Store, session_id: str, nonce: str) -> list[str]:
    barrier = threading.Barrier(2)
    results: list[str] = []
    lock = threading.Lock()

    def consume() -> None:
        barrier.wait()
        try:
            store.consume_nonce(session_id, nonce, now=NOW)
            outcome = "won"
        except NonceError as exc:
            outcome = exc.code
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=consume) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    return sorted(results)


def test_two_threads_one_nonce_exactly_one_wins(store: Store) -> None:
    for _ in range(5):
        s = store.create_session("sgx", ttl=timedelta(minutes=5), now=NOW)
        assert _race(store, s.id, s.nonce) == ["NONCE_REPLAYED", "won"]


def test_replica_finishes_a_handshake_another_began(db_url: str, tmp_path: Path) -> None:
    sealer = make_sealer(tmp_path / "tee")
    with (
        open_store(db_url, sealer=sealer, data_dir=tmp_path / "d") as a,
        open_store(db_url, sealer=sealer, data_dir=tmp_path / "d") as b,
    ):
        s = a.create_session("sgx", ttl=timedelta(minutes=5), now=NOW)
        assert (
            b.attest_session(s.id, s.nonce, tee_pubkey="k", token="t", now=NOW).state == "attested"
        )
        with pytest.raises(NonceError):
            a.consume_nonce(s.id, s.nonce, now=NOW)
        a.put_resource("r/t/x", b"shared", actor="admin")
        assert b.get_resource("r/t/x").data == b"shared"
