"""Replicas that share only the database (and the provisioned sealed KEK) share everything else:
EAR signing keyring, its rotations, admin keys; the 0002 migration and the upgrade from files."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from fastapi import FastAPI

from nacre.errors import UsageError
from nacre.server import NacreService, create_app, sign_admin_token
from nacre.server.adminauth import generate_admin_key, public_jwk_of
from nacre.sim import SimPlatform
from nacre.store import ConflictError, EnvelopeError, open_store
from nacre.store import _schema as t
from nacre.store._engine import SCHEMA_HEAD, make_engine
from nacre.token import FileKeyringStore, Keyring, jwk_thumbprint, verify_ear
from server_support import Clock, Env, SyncClient, Workload, config_for, make_env
from test_store_support import BACKENDS, NOW, database, make_sealer

NAME = "repo/key/model"
SECRET = b"model key"


@pytest.fixture(params=BACKENDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@contextmanager
def replica(a: Env, name: str = "data-b", **kw: Any) -> Iterator[FastAPI]:
    """A second app on A's database with its own data directory, provisioned with A's sealed KEK
    (the documented per-replica step) and nothing else."""
    data = a.data_dir.parent / name
    data.mkdir(mode=0o700)
    shutil.copy2(a.data_dir / "kek.json", data / "kek.json")
    app = create_app(replace(a.service.config, data_dir=data, **kw))
    try:
        yield app
    finally:
        app.state.nacre.close()


def svc(app: FastAPI) -> NacreService:
    service: NacreService = app.state.nacre
    return service


def kids(client: SyncClient) -> list[str]:
    return [k["kid"] for k in client.get("/.well-known/jwks.json").json()["keys"]]


def test_a_token_issued_by_one_replica_verifies_on_another(kind: str, tmp_path: Path) -> None:
    with make_env(kind, tmp_path) as a, replica(a) as b_app:
        b_dir = svc(b_app).config.data_dir
        assert sorted(p.name for p in b_dir.iterdir()) == ["kek.json"]  # no admin.key, no ring file
        assert svc(b_app).bootstrap_key is None
        a.put_secret(NAME, SECRET)
        w = Workload(a)
        w.handshake()  # token signed by A
        b = a.new_client(b_app)
        assert kids(b) == kids(a.client)
        r = b.get(f"/kbs/v0/resource/{NAME}", headers={"Authorization": f"Bearer {w.token}"})
        assert r.status_code == 200, r.text
        assert svc(b_app).keyring.version == a.service.keyring.version == 1


def test_after_a_rotates_b_accepts_tokens_signed_by_the_new_key(kind: str, tmp_path: Path) -> None:
    with make_env(kind, tmp_path) as a, replica(a) as b_app:
        a.put_secret(NAME, SECRET)
        b = a.new_client(b_app)
        first = kids(b)
        assert len(first) == 1
        key, rotated = a.service.keyring.rotate(a.clock(), actor="test")
        assert rotated
        assert key.kid not in first
        w = Workload(a)
        w.handshake()
        assert verify_ear(w.token, a.service.keyring.signing_ring(a.clock()), a.clock()).kid == (
            key.kid
        )
        # B's cache is still fresh (within its refresh interval): the unknown kid makes it reload.
        assert svc(b_app).keyring.version == 1
        r = b.get(f"/kbs/v0/resource/{NAME}", headers={"Authorization": f"Bearer {w.token}"})
        assert r.status_code == 200, r.text
        assert svc(b_app).keyring.version == 2
        assert kids(b) == [key.kid, first[0]]  # the old key stays published
        # B now signs with the new key too.
        wb = Workload(a, client=a.new_client(b_app))
        wb.handshake()
        assert (
            verify_ear(
                wb.token, {"keys": a.client.get("/.well-known/jwks.json").json()["keys"]}, a.clock()
            ).kid
            == key.kid
        )
        # Past the refresh interval a replica picks up a rotation without meeting its kid.
        svc(b_app).keyring.refresh_interval = timedelta(0)
        newer, _ = a.service.keyring.rotate(a.clock(), actor="test")
        assert kids(b)[0] == newer.kid
        actions = [e.action for e in a.store.audit_entries()]
        assert actions.count("signing_keyring.create") == 1
        assert actions.count("signing_keyring.rotate") == 2
        rotation = next(e for e in a.store.audit_entries() if e.action == "signing_keyring.rotate")
        assert rotation.actor == "test"
        assert rotation.target == "ear"
        assert set(rotation.detail) == {"current_kid", "kids", "version"}


def test_due_rotation_on_two_replicas_rotates_once(kind: str, tmp_path: Path) -> None:
    with (
        make_env(kind, tmp_path, signing_key_lifetime=timedelta(hours=1)) as a,
        replica(a) as b_app,
    ):
        old = a.service.keyring.signing_ring(a.clock()).current().kid
        a.clock.offset = timedelta(hours=1, seconds=1)
        ring_a = a.service.keyring.signing_ring(a.clock())  # A rotates (due)
        ring_b = svc(b_app).keyring.signing_ring(a.clock())  # B finds it done: reloads, no rotation
        assert ring_a.current().kid == ring_b.current().kid != old
        actions = [e.action for e in a.store.audit_entries()]
        assert actions.count("signing_keyring.rotate") == 1


def test_an_admin_key_registered_through_a_authenticates_on_b(kind: str, tmp_path: Path) -> None:
    with make_env(kind, tmp_path) as a, replica(a) as b_app:
        b = a.new_client(b_app)
        ops = a.register_key("ops", ["admin", "auditor"])  # through A's admin API
        r = b.get("/admin/v1/audit/verify", headers=a.admin_headers(ops))
        assert r.status_code == 200, r.text
        assert r.json()["ok"] is True
        listed = b.get("/admin/v1/admin-keys", headers=a.admin_headers(ops)).json()["keys"]
        assert sorted(k["name"] for k in listed) == ["bootstrap", "ops"]
        # Revoked through B: A refuses the key at once (no cache to go stale).
        kid = jwk_thumbprint(public_jwk_of(ops))
        assert b.delete(f"/admin/v1/admin-keys/{kid}", headers=a.admin_headers()).status_code == 200
        r = a.client.get("/admin/v1/audit", headers=a.admin_headers(ops))
        assert r.status_code == 401
        assert r.json()["code"] == "ADMIN_AUTH"
        entries = a.store.audit_entries()
        assert [e.action for e in entries if e.target == kid] == [
            "admin_key.register",
            "admin_key.remove",
        ]
        assert all(public_jwk_of(ops)["x"] not in json.dumps(e.detail) for e in entries)
        revoked = a.store.list_admin_keys(include_revoked=True)
        assert [k.name for k in revoked if k.revoked_at is not None] == ["ops"]
        # Registered again: active again, on both.
        r = b.put(
            "/admin/v1/admin-keys/ops",
            json={"jwk": public_jwk_of(ops), "roles": ["auditor"]},
            headers=a.admin_headers(),
        )
        assert r.status_code == 200, r.text
        assert a.client.get("/admin/v1/audit", headers=a.admin_headers(ops)).status_code == 200


def test_concurrent_keyring_saves_exactly_one_wins(kind: str, tmp_path: Path) -> None:
    with make_env(kind, tmp_path) as a, replica(a) as b_app:
        stores = [a.store, svc(b_app).store]
        loaded = [s.load_keyring("ear", Keyring.loads) for s in stores]
        assert all(x is not None and x[1] == 1 for x in loaded)
        barrier = threading.Barrier(2)
        results: list[object] = [None, None]

        def save(i: int) -> None:
            item = loaded[i]
            assert item is not None
            ring = item[0]
            ring.rotate(NOW.replace(year=2099))
            barrier.wait()
            try:
                results[i] = stores[i].save_keyring(
                    "ear", ring.dump, expected_version=1, event="rotate", actor=f"r{i}"
                )
            except ConflictError as exc:
                results[i] = exc

        threads = [threading.Thread(target=save, args=(i,)) for i in range(2)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert sorted(type(r).__name__ for r in results) == ["ConflictError", "int"]
        assert 2 in results
        loser = next(r for r in results if isinstance(r, ConflictError))
        assert loser.code == "KEYRING_CONFLICT"
        assert a.store.keyring_version("ear") == 2
        assert [e.action for e in a.store.audit_entries()].count("signing_keyring.rotate") == 1


def test_a_replica_losing_the_rotation_race_reloads_the_winners_key(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with make_env(kind, tmp_path) as a, replica(a) as b_app:
        b_store = svc(b_app).store
        real_save = b_store.save_keyring
        winner: list[str] = []

        def save_after_a_rotated(*args: Any, **kwargs: Any) -> int:
            if not winner:
                winner.append(a.service.keyring.rotate(a.clock(), actor="a")[0].kid)
            return real_save(*args, **kwargs)

        monkeypatch.setattr(b_store, "save_keyring", save_after_a_rotated)
        key, rotated = svc(b_app).keyring.rotate(a.clock(), actor="b")
        assert rotated is False
        assert key.kid == winner[0]
        assert svc(b_app).keyring.signing_ring(a.clock()).current().kid == winner[0]
        assert svc(b_app).keyring.version == 2
        rotations = [e for e in a.store.audit_entries() if e.action == "signing_keyring.rotate"]
        assert [e.actor for e in rotations] == ["a"]


def test_replicas_starting_together_create_one_ring_and_one_bootstrap_key(
    tmp_path: Path,
) -> None:
    with database("postgresql", tmp_path) as url:
        platform = SimPlatform.init(tmp_path / "sim")
        base = config_for(url, tmp_path, platform, Clock())
        # Provision one KEK, as an operator would, before the replicas start.
        open_store(url, sealer=base.sealer, data_dir=tmp_path / "kek").close()
        configs = []
        for i in range(4):
            data = tmp_path / f"replica{i}"
            data.mkdir(mode=0o700)
            shutil.copy2(tmp_path / "kek" / "kek.json", data / "kek.json")
            configs.append(replace(base, data_dir=data))
        barrier = threading.Barrier(len(configs))
        services: list[NacreService | BaseException] = [RuntimeError("not run")] * len(configs)

        def start(i: int) -> None:
            barrier.wait()
            try:
                services[i] = NacreService(configs[i])
            except BaseException as exc:  # reported below
                services[i] = exc

        threads = [threading.Thread(target=start, args=(i,)) for i in range(len(configs))]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        started = [s for s in services if isinstance(s, NacreService)]
        try:
            assert len(started) == len(configs), services
            assert len({s.keyring.signing_ring(s.now()).current().kid for s in started}) == 1
            assert sum(s.bootstrap_key is not None for s in started) == 1
            assert sum((c.data_dir / "admin.key").exists() for c in configs) == 1
            assert len(started[0].store.list_admin_keys()) == 1
            actions = [e.action for e in started[0].store.audit_entries()]
            assert actions.count("signing_keyring.create") == 1
            assert actions.count("admin_key.register") == 1
        finally:
            for s in started:
                s.close()


def test_the_keyring_row_is_bound_to_its_version_and_holds_no_clear_key(
    kind: str, tmp_path: Path
) -> None:
    with make_env(kind, tmp_path) as a:
        with a.store.engine.begin() as conn:
            row = conn.execute(sa.select(t.signing_keyrings)).one()
            assert b"pkcs8" not in bytes(row.ciphertext)
            assert row.kek_id == a.store.kek_ring.current_id
            conn.execute(sa.update(t.signing_keyrings).values(version=row.version + 1))
        with pytest.raises(EnvelopeError):
            a.store.load_keyring("ear", Keyring.loads)


def test_a_kek_rotation_rewraps_the_keyring(tmp_path: Path) -> None:
    with make_env("sqlite", tmp_path) as a:
        before = a.service.keyring.signing_ring(a.clock()).current().kid
        old = a.store.kek_ring.current_id
        a.store.kek_ring.rotate()
        assert a.store.kek_usage()[old] >= 1
        assert a.store.rewrap_all() >= 1
        assert a.store.kek_usage()[old] == 0
        loaded = a.store.load_keyring("ear", Keyring.loads)
        assert loaded is not None
        assert loaded[0].current().kid == before


def _upgrade(url: str, revision: str) -> None:
    engine = make_engine(url)
    try:
        config = Config()
        config.set_main_option("script_location", "nacre.store:migrations")
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, revision)
    finally:
        engine.dispose()


def test_migration_0002_upgrades_an_existing_0001_database(kind: str, tmp_path: Path) -> None:
    with database(kind, tmp_path) as url:
        _upgrade(url, "0001_initial")
        engine = make_engine(url)
        try:
            with engine.begin() as conn:
                tables = set(sa.inspect(conn).get_table_names())
                assert "policies" in tables
                assert "signing_keyrings" not in tables
                conn.execute(
                    t.policies.insert().values(
                        id="p1",
                        kind="resource",
                        document="{}",
                        version=1,
                        created_at=NOW,
                        updated_at=NOW,
                    )
                )
        finally:
            engine.dispose()
        with open_store(url, sealer=make_sealer(tmp_path / "tee"), data_dir=tmp_path / "d") as s:
            with s.engine.connect() as conn:
                version = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
                diff = compare_metadata(MigrationContext.configure(conn), t.metadata)
            assert version == SCHEMA_HEAD == "0003_session_indexes"
            assert diff == []
            assert s.get_policy("p1").version == 1  # data of 0001 kept
            assert s.keyring_version("ear") == 0
            assert s.list_admin_keys() == []


def test_migration_0002_applies_from_empty(kind: str, tmp_path: Path) -> None:
    with database(kind, tmp_path) as url, open_store(url) as s:
        with s.engine.connect() as conn:
            tables = set(sa.inspect(conn).get_table_names())
            diff = compare_metadata(MigrationContext.configure(conn), t.metadata)
        assert {"signing_keyrings", "admin_keys"} <= tables
        assert diff == []


def test_first_start_imports_the_files_of_earlier_versions(kind: str, tmp_path: Path) -> None:
    with database(kind, tmp_path) as url:
        platform = SimPlatform.init(tmp_path / "sim")
        clock = Clock()
        config = config_for(url, tmp_path, platform, clock)
        data = config.data_dir
        data.mkdir(mode=0o700)
        legacy = Keyring.generate(clock())
        legacy.save(
            FileKeyringStore(data / "ear_keyring.bin"),
            lambda b: config.sealer.seal(b, policy="mrsigner", aad=b"nacre.server.ear-keyring/v1"),
        )
        ops = generate_admin_key()
        jwk = public_jwk_of(ops)
        doc = {
            "format": "nacre.server.admin-keys/v1",
            "keys": [
                {
                    "kid": jwk_thumbprint(jwk),
                    "name": "ops",
                    "jwk": jwk,
                    "roles": ["admin"],
                    "created_at": clock().isoformat(),
                }
            ],
        }
        (data / "admin_keys.json").write_text(json.dumps(doc))
        app = create_app(config)
        try:
            service = svc(app)
            client = SyncClient(app)
            try:
                assert kids(client) == [legacy.current().kid]
                r = client.get(
                    "/admin/v1/admin-keys",
                    headers={"Authorization": "Bearer " + sign_admin_token(ops, now=clock())},
                )
                assert r.status_code == 200, r.text
                assert [k["name"] for k in r.json()["keys"]] == ["ops"]
            finally:
                client.close()
            assert service.bootstrap_key is None
            assert not (data / "admin.key").exists()
            assert not (data / "ear_keyring.bin").exists()
            assert (data / "ear_keyring.bin.migrated").exists()
            assert not (data / "admin_keys.json").exists()
            assert (data / "admin_keys.json.migrated").exists()
            actions = [e.action for e in service.store.audit_entries()]
            assert actions == ["signing_keyring.migrate", "admin_key.migrate"]
        finally:
            service.close()
        # A restart finds nothing left to import and changes nothing.
        again = create_app(config)
        try:
            assert svc(again).keyring.version == 1
            assert len(svc(again).store.audit_entries()) == 2
        finally:
            svc(again).close()


def test_a_replica_without_the_kek_refuses_to_start(tmp_path: Path) -> None:
    with make_env("postgresql", tmp_path) as a:
        data = tmp_path / "unprovisioned"
        with pytest.raises(EnvelopeError) as info:
            create_app(replace(a.service.config, data_dir=data))
        assert info.value.field == "kek_id"
        assert info.value.hint is not None
        assert "kek.json" in info.value.hint


def test_admin_keys_are_capped_and_checked_before_the_database(tmp_path: Path) -> None:
    with make_env("sqlite", tmp_path) as a:
        jwk = public_jwk_of(generate_admin_key())
        kid = jwk_thumbprint(jwk)
        before = len(a.store.audit_entries())
        with pytest.raises(UsageError) as info:
            a.store.put_admin_key(kid, "ops", jwk, ["auditor"], actor="t", max_keys=1)
        assert info.value.field == "keys"
        with pytest.raises(UsageError):
            a.store.put_admin_key(kid, "bad name!", jwk, ["auditor"], actor="t", max_keys=9)
        with pytest.raises(UsageError):
            a.store.put_admin_key("not/a kid", "ops", jwk, ["auditor"], actor="t", max_keys=9)
        assert len(a.store.audit_entries()) == before
        assert a.store.get_admin_key(kid) is None
        assert a.store.get_admin_key("../x") is None
        assert a.store.revoke_admin_key(kid, actor="t") is False
