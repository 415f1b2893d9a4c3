"""Attestation API, admin API and roles, OpenAPI, metrics, JWKS rotation, and the CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from nacre.cli import app as cli_app
from nacre.server.adminauth import generate_admin_key
from nacre.token import decrypt, kbs_report_data, verify_ear
from server_support import Env, Workload, b64, make_env, served
from test_store_support import BACKENDS

NAME = "default/key/model"


@pytest.fixture(params=BACKENDS)
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    with make_env(request.param, tmp_path) as e:
        yield e


def test_healthz_openapi_and_metrics(env: Env) -> None:
    assert env.client.get("/healthz").json() == {"status": "ok"}
    paths = env.client.get("/openapi.json").json()["paths"]
    for path, method in [
        ("/healthz", "get"),
        ("/metrics", "get"),
        ("/.well-known/jwks.json", "get"),
        ("/attestation/v1/{tee}", "post"),
        ("/kbs/v0/auth", "post"),
        ("/kbs/v0/attest", "post"),
        ("/kbs/v0/resource/{repo}/{type}/{tag}", "get"),
        ("/admin/v1/resources", "get"),
        ("/admin/v1/resources/{repo}/{type}/{tag}", "put"),
        ("/admin/v1/resources/{repo}/{type}/{tag}", "delete"),
        ("/admin/v1/policies/{policy_id}", "put"),
        ("/admin/v1/policies", "get"),
        ("/admin/v1/audit/verify", "get"),
        ("/admin/v1/admin-keys/{name}", "put"),
    ]:
        assert method in paths[path], path
    env.put_secret(NAME, b"s")
    w = Workload(env)
    w.handshake()
    assert w.resource(NAME).status_code == 200
    w.resource("default/key/none")
    text = env.client.get("/metrics").text
    assert 'nacre_attestations_total{api="kbs",status="affirming",tee="sgx"} 1.0' in text
    assert 'nacre_kbs_resource_requests_total{outcome="released"} 1.0' in text
    assert 'nacre_kbs_resource_requests_total{outcome="not_found"} 1.0' in text
    assert (
        'nacre_http_requests_total{method="POST",route="/kbs/v0/attest",status="200"} 1.0' in text
    )
    assert "nacre_http_request_duration_seconds_bucket" in text


def test_attestation_api_issues_ear(env: Env) -> None:
    runtime = {"hello": "world"}
    import hashlib

    from nacre.token import canonicalize

    rd = hashlib.sha384(canonicalize(runtime)).digest().ljust(64, b"\0")
    quote = env.platform.quote("sgx", rd)
    r = env.client.post(
        "/attestation/v1/sgx",
        json={"evidence": b64(quote), "runtime_data": {"structured": runtime}},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "affirming"
    assert body["sim"] is True
    assert body["policy_id"] == "default"
    claims = verify_ear(body["token"], env.client.get("/.well-known/jwks.json").json(), env.clock())
    assert claims.appraisal().annotated_evidence["sgx"]["report_data"] == rd.hex()

    p = env.client.post(
        "/attestation/v1/sgx", json={"evidence": b64(quote), "runtime_data": {"raw": b64(b"other")}}
    )
    assert p.status_code == 403
    assert p.json()["check"] == "report_data"
    p = env.client.post("/attestation/v1/tdx", json={"evidence": b64(quote)})
    assert p.status_code == 400
    assert p.json()["code"] == "TEE_MISMATCH"
    p = env.client.post("/attestation/v1/sgx", json={"evidence": b64(quote), "policy_id": "nope"})
    assert p.status_code == 400
    assert p.json()["field"] == "policy_id"
    p = env.client.post("/attestation/v1/sgx", json={"evidence": "%%%"})
    assert p.status_code == 400
    assert p.json()["field"] == "evidence"

    mrenclave = "ab" * 32
    r = env.client.put(
        "/admin/v1/policies/strict",
        headers=env.admin_headers(),
        json={
            "kind": "appraisal",
            "document": f"version: 1\nname: strict\nallow_sim: true\nsgx:\n  mrenclave: ['{mrenclave}']\n",
        },
    )
    assert r.status_code == 200, r.text
    r = env.client.post("/attestation/v1/sgx", json={"evidence": b64(quote), "policy_id": "strict"})
    assert r.status_code == 200
    assert r.json()["status"] == "contraindicated"
    failed = [c for c in r.json()["checks"] if not c["passed"]]
    assert failed[0]["name"] == "sgx.mrenclave"
    assert failed[0]["expected"].startswith(mrenclave[:8])


def test_tdx_evidence_through_kbs(env: Env) -> None:
    env.put_secret(NAME, b"td secret")
    w = Workload(env, tee="tdx")
    w.handshake()
    assert decrypt(w.resource(NAME).json(), w.key) == b"td secret"


def test_admin_roles_are_checked_per_endpoint(env: Env) -> None:
    writer = env.register_key("ci-writer", ["secret-writer"])
    auditor = env.register_key("auditor", ["auditor"])
    body = {"data": b64(b"x")}
    r = env.client.put(f"/admin/v1/resources/{NAME}", json=body, headers=env.admin_headers(writer))
    assert r.status_code == 200, r.text
    r = env.client.put(f"/admin/v1/resources/{NAME}", json=body, headers=env.admin_headers(auditor))
    assert r.status_code == 403
    assert r.json()["check"] == "role"
    assert (
        env.client.get("/admin/v1/resources", headers=env.admin_headers(auditor)).status_code == 200
    )
    r = env.client.get("/admin/v1/audit/verify", headers=env.admin_headers(auditor))
    assert r.status_code == 200
    assert r.json()["ok"] is True
    assert (
        env.client.get("/admin/v1/audit/verify", headers=env.admin_headers(writer)).status_code
        == 403
    )
    r = env.client.put(
        "/admin/v1/policies/p",
        json={"kind": "appraisal", "document": "version: 1\nname: p\n"},
        headers=env.admin_headers(writer),
    )
    assert r.status_code == 403
    r = env.client.put(
        "/admin/v1/policies/rp",
        json={"kind": "resource", "document": "claims.isv_svn >= 1"},
        headers=env.admin_headers(writer),
    )
    assert r.status_code == 200, r.text
    r = env.client.put(
        "/admin/v1/policies/bad",
        json={"kind": "resource", "document": "claims.("},
        headers=env.admin_headers(),
    )
    assert r.status_code == 400
    assert r.json()["code"] == "POLICY_INVALID"
    r = env.client.put(
        "/admin/v1/admin-keys/x",
        json={"jwk": {}, "roles": ["admin"]},
        headers=env.admin_headers(writer),
    )
    assert r.status_code == 403
    # Role narrowing: a key holding secret-writer and auditor, asking for auditor, cannot write;
    # asking for a role its key does not hold is refused outright.
    both = env.register_key("both", ["secret-writer", "auditor"])
    r = env.client.put(
        f"/admin/v1/resources/{NAME}", json=body, headers=env.admin_headers(both, role="auditor")
    )
    assert r.status_code == 403
    r = env.client.put(
        f"/admin/v1/resources/{NAME}", json=body, headers=env.admin_headers(both, role="admin")
    )
    assert r.status_code == 401
    assert r.json()["field"] == "role"
    assert env.client.get("/admin/v1/resources").status_code == 401
    r = env.client.get("/admin/v1/resources", headers=env.admin_headers(generate_admin_key()))
    assert r.status_code == 401
    assert r.json()["field"] == "kid"
    env.clock.offset = timedelta(hours=1)
    stale = env.admin_headers(writer)
    env.clock.offset = timedelta(0)
    assert env.client.get("/admin/v1/resources", headers=stale).status_code == 401
    # Metadata only, never the secret; delete; then 404.
    r = env.client.get(f"/admin/v1/resources/{NAME}", headers=env.admin_headers(auditor))
    assert r.status_code == 200
    assert set(r.json()) == {
        "name",
        "policy_id",
        "version",
        "created_at",
        "updated_at",
    }
    assert (
        env.client.delete(
            f"/admin/v1/resources/{NAME}", headers=env.admin_headers(writer)
        ).status_code
        == 200
    )
    assert (
        env.client.get(f"/admin/v1/resources/{NAME}", headers=env.admin_headers()).status_code
        == 404
    )
    actions = [e.action for e in env.store.audit_entries()]
    assert actions.count("admin_key.register") == 4
    assert {"resource.put", "resource.delete", "policy.set"} <= set(actions)
    r = env.client.get("/admin/v1/audit/verify", headers=env.admin_headers())
    assert r.json()["ok"] is True
    assert r.json()["entries"] == len(actions)


def test_keyring_rotates_when_due_and_keeps_old_key_published(tmp_path: Path) -> None:
    with make_env("sqlite", tmp_path, signing_key_lifetime=timedelta(hours=1)) as env:
        env.put_secret(NAME, b"s")
        env.clock.offset = timedelta(minutes=59)
        w = Workload(env)
        w.handshake()  # signed by the first key shortly before it is due
        old = env.client.get("/.well-known/jwks.json").json()["keys"]
        assert len(old) == 1
        env.clock.offset = timedelta(hours=1, seconds=1)
        w2 = Workload(env)
        w2.handshake()  # rotation happens on this request
        keys = env.client.get("/.well-known/jwks.json").json()["keys"]
        assert len(keys) == 2
        assert old[0]["kid"] in {k["kid"] for k in keys}
        assert verify_ear(w2.token, {"keys": keys}, env.clock()).kid != old[0]["kid"]
        r = env.new_client().get(
            f"/kbs/v0/resource/{NAME}", headers={"Authorization": f"Bearer {w.token}"}
        )
        assert r.status_code == 200, r.text  # the old key's unexpired token still verifies
        env.clock.offset = timedelta(hours=2)
        assert [k["kid"] for k in env.client.get("/.well-known/jwks.json").json()["keys"]] == [
            keys[0]["kid"]
        ]
        assert not (env.data_dir / "ear_keyring.bin").exists()  # the ring lives in the database
        assert (env.data_dir / "admin.key").stat().st_mode & 0o777 == 0o600
        assert [e.action for e in env.store.audit_entries()].count("signing_keyring.rotate") == 1
        db_file = env.url.removeprefix("sqlite:///")
        assert b"pkcs8" not in Path(db_file).read_bytes()


def test_secret_cli_against_a_served_app(tmp_path: Path) -> None:
    with make_env("sqlite", tmp_path) as env, served(env.app) as url:
        key = str(env.data_dir / "admin.key")
        secret = tmp_path / "secret.bin"
        secret.write_bytes(b"cli secret")
        policy = tmp_path / "policy.yaml"
        policy.write_text("version: 1\nrules:\n  - name: svn\n    expr: claims.isv_svn >= 0\n")
        runner = CliRunner()
        common = ["--server", url, "--admin-key", key, "--json"]
        r = runner.invoke(
            cli_app,
            ["secret", "put", NAME, "--file", str(secret), "--policy", str(policy), *common],
        )
        assert r.exit_code == 0, r.output
        assert json.loads(r.output)["policy_id"] == "resource:default:key:model"
        r = runner.invoke(cli_app, ["secret", "get", NAME, *common])
        assert r.exit_code == 0
        assert "cli secret" not in r.output
        assert json.loads(r.output)["version"] == 1
        r = runner.invoke(cli_app, ["secret", "list", *common])
        assert r.exit_code == 0
        assert json.loads(r.output)["resources"][0]["name"] == NAME
        w = Workload(env)
        w.handshake()
        assert decrypt(w.resource(NAME).json(), w.key) == b"cli secret"
        r = runner.invoke(cli_app, ["secret", "delete", NAME, *common])
        assert r.exit_code == 0
        r = runner.invoke(cli_app, ["secret", "get", NAME, *common])
        assert r.exit_code == 1
        assert json.loads(r.output)["error"]["status"] == 404
        r = runner.invoke(cli_app, ["secret", "put", "bad name", "--file", str(secret), *common])
        assert r.exit_code == 2
        r = runner.invoke(
            cli_app,
            [
                "secret",
                "list",
                "--server",
                url,
                "--admin-key",
                str(tmp_path / "nokey"),
                "--json",
            ],
        )
        assert r.exit_code == 2
        httpx.get(f"{url}/healthz").raise_for_status()


def test_report_data_helper_matches_guest_components_layout() -> None:
    jwk = {"kty": "EC", "crv": "P-256", "alg": "ECDH-ES+A256KW", "x": "a", "y": "b"}
    rd = kbs_report_data("n" * 44, jwk)
    assert len(rd) == 64
    assert rd[48:] == bytes(16)
