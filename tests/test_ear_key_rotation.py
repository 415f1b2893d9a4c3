"""Rotating the EAR signing key on demand: ``/admin/v1/ear-keys`` and ``nacre ear-key``. Tokens
signed before a rotation keep working until they expire; new tokens carry the new key; replicas
sharing the database agree at once; only admins rotate."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from nacre.cli import app as cli_app
from nacre.server import create_app
from nacre.token import decrypt, verify_ear
from server_support import Env, Workload, make_env, served
from test_store_support import BACKENDS


@pytest.fixture(params=BACKENDS)
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    with make_env(request.param, tmp_path) as e:
        yield e


def _jwks_kids(env: Env) -> list[str]:
    return [k["kid"] for k in env.client.get("/.well-known/jwks.json").json()["keys"]]


def test_rotation_keeps_old_tokens_valid(env: Env) -> None:
    admin = env.admin_headers()
    assert env.put_secret("default/key/m", b"model key").status_code == 200
    before = Workload(env)
    before.handshake()
    listed = env.client.get("/admin/v1/ear-keys", headers=admin).json()
    old_kid = listed["current_kid"]
    assert [k["kid"] for k in listed["keys"]] == [old_kid]
    assert verify_ear(before.token, env.client.get("/.well-known/jwks.json").json(), env.clock())

    r = env.client.post("/admin/v1/ear-keys/rotate", headers=admin)
    assert r.status_code == 200, r.text
    rotated = r.json()
    assert rotated["rotated"] is True
    new_kid = rotated["current_kid"]
    assert new_kid != old_kid
    # Both published; the old token still fetches the secret; a new token is signed by the new key.
    assert set(_jwks_kids(env)) == {old_kid, new_kid}
    got = before.resource("default/key/m", bearer=before.token)
    assert got.status_code == 200, got.text
    assert decrypt(got.json(), before.key) == b"model key"
    after = Workload(env)
    after.handshake()
    jwks = env.client.get("/.well-known/jwks.json").json()
    assert verify_ear(after.token, jwks, env.clock()).kid == new_kid
    listed = env.client.get("/admin/v1/ear-keys", headers=admin).json()
    assert listed["current_kid"] == new_kid
    assert [k["current"] for k in listed["keys"]] == [True, False]
    # The rotation is audited with its actor.
    events = [e for e in env.store.audit_entries(limit=200) if "keyring" in e.action]
    assert any(e.actor.startswith("admin:") for e in events), [e.action for e in events]


def test_only_admins_rotate(env: Env) -> None:
    auditor = env.admin_headers(env.register_key("aud", ["auditor"]))
    writer = env.admin_headers(env.register_key("w", ["secret-writer"]))
    assert env.client.get("/admin/v1/ear-keys", headers=auditor).status_code == 200
    assert env.client.get("/admin/v1/ear-keys", headers=writer).status_code == 403
    before = _jwks_kids(env)
    for h in (auditor, writer, {}):
        assert env.client.post("/admin/v1/ear-keys/rotate", headers=h).status_code in (401, 403)
    assert _jwks_kids(env) == before


def test_a_replica_sees_the_rotation_at_once(tmp_path: Path) -> None:
    with make_env("postgresql", tmp_path) as env:
        data = tmp_path / "data-b"
        data.mkdir(mode=0o700)
        shutil.copy2(env.data_dir / "kek.json", data / "kek.json")  # the per-replica step
        other_app = create_app(replace(env.service.config, data_dir=data))
        other = env.new_client(other_app)
        try:
            w = Workload(env)
            w.handshake()
            r = env.client.post("/admin/v1/ear-keys/rotate", headers=env.admin_headers())
            new_kid = r.json()["current_kid"]
            # Replica B publishes the new key and accepts the old token.
            kids = [k["kid"] for k in other.get("/.well-known/jwks.json").json()["keys"]]
            assert new_kid in kids
            assert env.put_secret("default/key/r", b"x").status_code == 200
            r = other.get(
                "/kbs/v0/resource/default/key/r", headers={"Authorization": f"Bearer {w.token}"}
            )
            assert r.status_code == 200, r.text
        finally:
            other_app.state.nacre.close()


def test_ear_key_cli(tmp_path: Path) -> None:
    with make_env("sqlite", tmp_path) as env, served(env.app) as url:
        common = [
            "--server",
            url,
            "--admin-key",
            str(env.data_dir / "admin.key"),
        ]
        runner = CliRunner()

        def js(*args: str) -> dict[str, Any]:
            r = runner.invoke(cli_app, [*args, *common, "--json"])
            assert r.exit_code == 0, r.output
            out: dict[str, Any] = json.loads(r.stdout)
            return out

        first = js("ear-key", "list")["current_kid"]
        rotated = js("ear-key", "rotate")
        assert rotated["rotated"] is True
        assert rotated["current_kid"] != first
        listed = js("ear-key", "list")
        assert {k["kid"] for k in listed["keys"]} == {first, rotated["current_kid"]}
        r = runner.invoke(cli_app, ["ear-key", "list", *common])
        assert r.exit_code == 0
        assert rotated["current_kid"][:12] in r.stdout
        r = runner.invoke(cli_app, ["ear-key", "rotate", *common])
        assert r.exit_code == 0
        assert "rotated" in r.stdout
