"""The KMS HTTP API (``/kms/v1``): roles, every operation over HTTP, attested workloads with EAR
tokens allowed or denied by the key policy, export as JWE, error statuses; ``nacre key`` and
``nacre policy set|show`` against a served app."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from typer.testing import CliRunner

from nacre.cli import app as cli_app
from nacre.sim import Manifest, ManifestFile
from nacre.token import EarInput, Keyring, decrypt, issue_ear
from server_support import Env, Workload, b64, make_env, served
from test_store_support import BACKENDS

KEYS = "/kms/v1/keys"


@pytest.fixture(params=BACKENDS)
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    with make_env(request.param, tmp_path) as e:
        yield e


@pytest.fixture
def lite(tmp_path: Path) -> Iterator[Env]:
    with make_env("sqlite", tmp_path) as e:
        yield e


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _post(env: Env, path: str, body: dict[str, Any] | None, headers: dict[str, str]) -> Any:
    return env.client.post(path, json=body or {}, headers=headers)


def _create(env: Env, name: str, key_type: str, **extra: Any) -> dict[str, Any]:
    r = env.client.post(
        KEYS, json={"type": key_type, "name": name, **extra}, headers=env.admin_headers()
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _policy(env: Env, policy_id: str, document: str) -> None:
    r = env.client.put(
        f"/admin/v1/policies/{policy_id}",
        json={"kind": "resource", "document": document},
        headers=env.admin_headers(),
    )
    assert r.status_code == 200, r.text


def _problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = r.json()
    return body


def _mrenclave(env: Env) -> str:
    return env.platform.measure().mr_enclave.hex()


def test_every_operation_round_trips_over_http(env: Env) -> None:
    admin = env.admin_headers()
    user = env.admin_headers(env.register_key("app", ["key-user"]))
    _create(env, "aes", "AES-256")
    _create(env, "rsa", "RSA-3072")
    _create(env, "p256", "EC-P256")
    _create(env, "ed", "Ed25519")
    for h in (admin, user):
        # encrypt / decrypt with aad, AES and RSA
        for key in ("aes", "rsa"):
            r = _post(env, f"{KEYS}/{key}/encrypt", {"plaintext": b64(b"hi"), "aad": b64(b"c")}, h)
            assert r.status_code == 200, r.text
            ct = r.json()["ciphertext"]
            r = _post(env, f"{KEYS}/{key}/decrypt", {"ciphertext": ct, "aad": b64(b"c")}, h)
            assert base64.b64decode(r.json()["plaintext"]) == b"hi"
            bad = _problem(_post(env, f"{KEYS}/{key}/decrypt", {"ciphertext": ct}, h), 400)
            assert bad["code"] == "CIPHERTEXT_INVALID" or bad["check"]
        # data key, wrap / unwrap
        r = _post(env, f"{KEYS}/aes/generate-data-key", {"size": 16}, h)
        dk = r.json()
        assert len(base64.b64decode(dk["plaintext"])) == 16
        r = _post(env, f"{KEYS}/aes/decrypt", {"ciphertext": dk["ciphertext"]}, h)
        assert r.json()["plaintext"] == dk["plaintext"]
        r = _post(env, f"{KEYS}/aes/wrap", {"key_material": b64(b"k" * 32)}, h)
        wrapped = r.json()["wrapped"]
        r = _post(env, f"{KEYS}/aes/unwrap", {"wrapped": wrapped}, h)
        assert base64.b64decode(r.json()["key_material"]) == b"k" * 32
        # sign / verify
        for key in ("p256", "ed"):
            r = _post(env, f"{KEYS}/{key}/sign", {"message": b64(b"msg")}, h)
            assert r.status_code == 200, r.text
            sig = r.json()["signature"]
            r = _post(env, f"{KEYS}/{key}/verify", {"message": b64(b"msg"), "signature": sig}, h)
            assert r.json()["valid"] is True
            r = _post(env, f"{KEYS}/{key}/verify", {"message": b64(b"other"), "signature": sig}, h)
            assert r.json()["valid"] is False
    # The public key PEM verifies a service signature offline.
    info = env.client.get(f"{KEYS}/p256", headers=user).json()
    assert info["type"] == "EC-P256"
    assert info["versions"][0]["version"] == 1
    public = serialization.load_pem_public_key(info["public_key_pem"].encode())
    assert isinstance(public, ec.EllipticCurvePublicKey)
    r = _post(env, f"{KEYS}/p256/sign", {"message": b64(b"offline")}, user)
    public.verify(base64.b64decode(r.json()["signature"]), b"offline", ec.ECDSA(hashes.SHA256()))
    assert env.client.get(f"{KEYS}/aes", headers=user).json()["public_key_pem"] is None
    # Every use is in the audit log, attributed to the caller; no data in it.
    entries = env.store.audit_entries(limit=1000)
    actions = {e.action for e in entries}
    assert {"kms.encrypt", "kms.decrypt", "kms.sign", "kms.verify", "kms.wrap"} <= actions
    assert any(e.actor.startswith("admin:app:") for e in entries if e.action == "kms.sign")


def test_management_roles_and_lifecycle(lite: Env) -> None:
    env = lite
    admin = env.admin_headers()
    user = env.admin_headers(env.register_key("user", ["key-user"]))
    auditor = env.admin_headers(env.register_key("aud", ["auditor"]))
    writer = env.admin_headers(env.register_key("writer", ["secret-writer"]))
    body = {"type": "AES-256", "name": "k1", "rotation_days": 30}
    for h in (user, auditor, writer):
        p = _problem(env.client.post(KEYS, json=body, headers=h), 403)
        assert p["check"] == "role"
        assert p["expected"] == "admin"
    created = _create(env, "k1", "AES-256", rotation_days=30)
    assert created["state"] == "enabled"
    assert created["current_version"] == 1
    for h in (admin, user, auditor):
        r = env.client.get(KEYS, headers=h)
        assert [k["id"] for k in r.json()["keys"]] == ["k1"]
    assert _problem(env.client.get(KEYS, headers=writer), 403)["check"] == "role"
    # Auditors list, but may not use.
    p = _problem(_post(env, f"{KEYS}/k1/encrypt", {"plaintext": b64(b"x")}, auditor), 403)
    assert p["check"] == "role"
    ct = _post(env, f"{KEYS}/k1/encrypt", {"plaintext": b64(b"x")}, user).json()["ciphertext"]
    # rotate: version 2 current, version 1 ciphertext still opens.
    assert _problem(_post(env, f"{KEYS}/k1/rotate", None, user), 403)["check"] == "role"
    assert _post(env, f"{KEYS}/k1/rotate", None, admin).json()["current_version"] == 2
    r = _post(env, f"{KEYS}/k1/decrypt", {"ciphertext": ct}, user)
    assert r.json()["version"] == 1
    assert _post(env, f"{KEYS}/k1/encrypt", {"plaintext": b64(b"x")}, user).json()["version"] == 2
    # disable -> 409 on use, enable again.
    assert _post(env, f"{KEYS}/k1/disable", None, admin).json()["state"] == "disabled"
    p = _problem(_post(env, f"{KEYS}/k1/encrypt", {"plaintext": b64(b"x")}, user), 409)
    assert p["check"] == "state"
    assert p["code"] == "KEY_DISABLED"
    assert _post(env, f"{KEYS}/k1/enable", None, admin).json()["state"] == "enabled"
    # schedule-delete: bad waiting period 400, then pending, cancel -> disabled.
    _problem(_post(env, f"{KEYS}/k1/schedule-delete", {"days": 1}, admin), 400)
    r = _post(env, f"{KEYS}/k1/schedule-delete", {"days": 7}, admin)
    assert r.json()["state"] == "pending_deletion"
    assert r.json()["deletion_date"]
    p = _problem(_post(env, f"{KEYS}/k1/encrypt", {"plaintext": b64(b"x")}, user), 409)
    assert p["code"] == "KEY_PENDING_DELETION"
    assert _post(env, f"{KEYS}/k1/cancel-delete", None, admin).json()["state"] == "disabled"
    # Errors: 404 unknown key, 409 duplicate, 400 bad type / base64 / op on wrong key type,
    # 401 no token, 422-free schema errors are 400.
    assert _problem(env.client.get(f"{KEYS}/nope", headers=admin), 404)["status"] == 404
    _problem(_post(env, f"{KEYS}/nope/encrypt", {"plaintext": b64(b"x")}, admin), 404)
    _problem(env.client.post(KEYS, json=body, headers=admin), 409)
    _problem(env.client.post(KEYS, json={"type": "DES", "name": "d"}, headers=admin), 400)
    _create(env, "ed", "Ed25519")
    p = _problem(_post(env, f"{KEYS}/ed/encrypt", {"plaintext": b64(b"x")}, admin), 400)
    assert p["check"] == "type"
    p = _problem(_post(env, f"{KEYS}/ed/sign", {"message": "***"}, admin), 400)
    assert p["field"] == "message"
    p = _problem(env.client.post(f"{KEYS}/ed/sign", json={"message": b64(b"x")}), 401)
    assert p["field"] == "Authorization"
    p = _problem(_post(env, f"{KEYS}/ed/sign", {"message": b64(b"x")}, _bearer("a.b.c")), 401)
    _problem(_post(env, f"{KEYS}/ed/sign", {"message": b64(b"x")}, {"Content-Type": "x"}), 401)
    r = env.client.post(
        KEYS,
        json={"type": "AES-256", "name": "late", "expires_at": "2030-01-01T00:00:00"},
        headers=admin,
    )
    assert _problem(r, 400)["field"] == "expires_at"
    big = {"message": b64(b"x" * (64 * 1024 + 1))}
    assert _problem(_post(env, f"{KEYS}/ed/sign", big, admin), 413)["field"] == "message"
    # Principals may not export; the check is named.
    p = _problem(_post(env, f"{KEYS}/ed/export", None, admin), 403)
    assert p["check"] == "caller"
    paths = env.client.get("/openapi.json").json()["paths"]
    assert "post" in paths["/kms/v1/keys/{key_id}/sign"]
    assert "get" in paths["/kms/v1/keys"]


def test_attested_workload_uses_keys_its_policy_admits(lite: Env) -> None:
    env = lite
    mrenclave = _mrenclave(env)
    _policy(
        env,
        "pinned",
        "version: 1\nrules:\n"
        f"  - name: enclave\n    expr: claims.mrenclave == '{mrenclave}'\n"
        "    message: only the measured build\n",
    )
    _policy(env, "shared", 'version: 1\nadmin_use: true\nrules:\n  - name: any\n    expr: "true"\n')
    _create(env, "signer", "EC-P256", policy_id="pinned")
    _create(env, "shared", "AES-256", policy_id="shared", exportable=True)
    _create(env, "nopolicy", "AES-256", exportable=True)
    _create(env, "secret", "AES-256", policy_id="pinned", exportable=True)
    good = Workload(env)
    good.handshake()
    bad = Workload(env)
    assert bad.auth().status_code == 200
    manifest = Manifest(name="modified", files=(ManifestFile("app.py", bytes(32)),))
    assert bad.attest(manifest=manifest).status_code == 200
    ok, no = _bearer(good.token), _bearer(bad.token)
    # The measured workload signs; the modified one is denied with the rule named.
    r = _post(env, f"{KEYS}/signer/sign", {"message": b64(b"m")}, ok)
    assert r.status_code == 200, r.text
    p = _problem(_post(env, f"{KEYS}/signer/sign", {"message": b64(b"m")}, no), 403)
    assert p["check"] == "policy.rule"
    assert p["type"].endswith("/KmsAccessDenied")
    assert "enclave" in p["detail"]
    # admin_use: false -> principals are denied with that check named.
    p = _problem(
        _post(env, f"{KEYS}/signer/sign", {"message": b64(b"m")}, env.admin_headers()), 403
    )
    assert p["check"] == "policy.admin_use"
    # A key without a policy serves principals only.
    p = _problem(_post(env, f"{KEYS}/nopolicy/encrypt", {"plaintext": b64(b"x")}, ok), 403)
    assert p["check"] == "policy_id"
    # Workloads may not manage or list.
    assert _problem(_post(env, f"{KEYS}/signer/rotate", None, ok), 403)["check"] == "role"
    assert _problem(env.client.get(KEYS, headers=ok), 403)["check"] == "role"
    # Both kinds of caller share an admin_use key.
    ct = _post(env, f"{KEYS}/shared/encrypt", {"plaintext": b64(b"x")}, ok).json()["ciphertext"]
    r = _post(env, f"{KEYS}/shared/decrypt", {"ciphertext": ct}, env.admin_headers())
    assert base64.b64decode(r.json()["plaintext"]) == b"x"
    # Export: a JWE to the attested TEE key that only the workload's key opens.
    r = _post(env, f"{KEYS}/secret/export", None, ok)
    assert r.status_code == 200, r.text
    exported = r.json()
    assert exported["format"] == "raw"
    assert exported["type"] == "AES-256"
    material = decrypt(exported["jwe"], good.key)
    assert len(material) == 32
    _problem(_post(env, f"{KEYS}/secret/export", None, no), 403)
    assert _problem(_post(env, f"{KEYS}/signer/export", None, ok), 403)["check"] == "exportable"
    # A token signed by another service (claiming the pinned MRENCLAVE), one whose signature
    # does not verify, or an expired one, is 401 and uses nothing.
    now = env.clock()
    foreign = issue_ear(
        EarInput(
            tee="sgx",
            status="affirming",
            trustworthiness_vector={"hardware": 2},
            claims={"mrenclave": mrenclave, "isv_svn": 1},
            policy_id="default",
            tee_pubkey=good.jwk,
        ),
        Keyring.generate(now),
        now,
        timedelta(minutes=5),
    )
    p = _problem(_post(env, f"{KEYS}/signer/sign", {"message": b64(b"m")}, _bearer(foreign)), 401)
    assert p["code"] == "TOKEN_UNKNOWN_KEY"
    assert p["check"] == "token"
    other = _bearer(good.token[:-8] + ("AAAAAAAA" if not good.token.endswith("A" * 8) else "B" * 8))
    p = _problem(_post(env, f"{KEYS}/signer/sign", {"message": b64(b"m")}, other), 401)
    assert p["check"] == "token"
    env.clock.offset = timedelta(days=2)
    _problem(_post(env, f"{KEYS}/signer/sign", {"message": b64(b"m")}, ok), 401)
    denied = [e for e in env.store.audit_entries(limit=1000) if e.outcome == "denied"]
    assert any(e.action == "kms.sign" and e.detail.get("check") == "policy.rule" for e in denied)


def test_release_policy_accepts_admin_use(lite: Env) -> None:
    env = lite
    doc = "version: 1\nadmin_use: true\nrules:\n  - name: svn\n    expr: claims.isv_svn >= 0\n"
    _policy(env, "both", doc)
    r = env.client.put(
        "/admin/v1/resources/default/key/both",
        json={"data": b64(b"s"), "policy_id": "both"},
        headers=env.admin_headers(),
    )
    assert r.status_code == 200, r.text
    w = Workload(env)
    w.handshake()
    assert decrypt(w.resource("default/key/both").json(), w.key) == b"s"
    r = env.client.put(
        "/admin/v1/policies/bad",
        json={"kind": "resource", "document": "admin_use: 3\n"},
        headers=env.admin_headers(),
    )
    assert _problem(r, 400)["field"] == "admin_use"


def test_key_and_policy_cli_against_a_served_app(tmp_path: Path) -> None:
    with make_env("sqlite", tmp_path) as env, served(env.app) as url:
        common = ["--server", url, "--admin-key", str(env.data_dir / "admin.key")]
        runner = CliRunner()

        def run(*args: str, input: bytes | None = None) -> Any:
            return runner.invoke(cli_app, [*args, *common], input=input)

        def js(*args: str) -> dict[str, Any]:
            r = run(*args, "--json")
            assert r.exit_code == 0, r.output
            out: dict[str, Any] = json.loads(r.stdout)
            return out

        # policy set / show (and policy test still there)
        doc = tmp_path / "p.yaml"
        doc.write_text("version: 1\nadmin_use: true\nrules:\n  - name: t\n    expr: 'true'\n")
        assert js("policy", "set", "kp", "--file", str(doc))["version"] == 1
        shown = js("policy", "show", "kp")
        assert shown["kind"] == "resource"
        assert "admin_use" in shown["document"]
        r = run("policy", "show", "kp")
        assert r.exit_code == 0
        assert "resource policy" in r.stdout
        bad = tmp_path / "bad.yaml"
        bad.write_text("nope: 1\n")
        r = run("policy", "set", "bad", "--file", str(bad), "--json")
        assert r.exit_code == 1
        assert json.loads(r.stdout)["error"]["status"] == 400
        r = run("policy", "set", "x", "--file", str(doc), "--kind", "other")
        assert r.exit_code == 2
        assert runner.invoke(cli_app, ["policy", "test", "--help"]).exit_code == 0
        # key create / list / show / rotate / disable / enable / schedule-delete
        made = js("key", "create", "db", "--type", "AES-256", "--policy-id", "kp")
        assert made["policy_id"] == "kp"
        assert made["state"] == "enabled"
        js("key", "create", "sig", "--type", "EC-P256")
        assert {k["id"] for k in js("key", "list")["keys"]} == {"db", "sig"}
        r = run("key", "list")
        assert r.exit_code == 0
        assert "db" in r.stdout
        assert "BEGIN PUBLIC KEY" in js("key", "show", "sig")["public_key_pem"]
        assert js("key", "rotate", "db")["current_version"] == 2
        # encrypt / decrypt through files and stdin / stdout
        plain = tmp_path / "plain.bin"
        plain.write_bytes(b"\x00secret bytes\xff")
        enc = tmp_path / "enc.bin"
        r = run("key", "encrypt", "db", "--in", str(plain), "--out", str(enc), "--aad", "ctx")
        assert r.exit_code == 0, r.output
        assert b"secret" not in enc.read_bytes()
        r = run("key", "decrypt", "db", "--aad", "ctx", input=enc.read_bytes())
        assert r.exit_code == 0, r.output
        assert r.stdout_bytes == b"\x00secret bytes\xff"
        r = run("key", "decrypt", "db", "--in", str(enc), "--json")
        assert r.exit_code == 1
        assert json.loads(r.stdout)["error"]["status"] == 400
        # sign prints base64 (or hex); verify checks it
        r = run("key", "sign", "sig", "--file", str(plain))
        assert r.exit_code == 0, r.output
        sig = r.stdout.strip()
        assert base64.b64decode(sig)
        assert run("key", "verify", "sig", "--file", str(plain), "--signature", sig).exit_code == 0
        r = run("key", "sign", "sig", "--file", str(plain), "--hex")
        hexsig = r.stdout.strip()
        bytes.fromhex(hexsig)
        r = run("key", "verify", "sig", "--file", str(enc), "--signature", hexsig, "--hex")
        assert r.exit_code == 1
        assert "INVALID" in r.stdout
        # lifecycle
        assert js("key", "disable", "db")["state"] == "disabled"
        r = run("key", "encrypt", "db", "--in", str(plain), "--json")
        assert r.exit_code == 1
        assert json.loads(r.stdout)["error"]["status"] == 409
        assert js("key", "enable", "db")["state"] == "enabled"
        assert js("key", "schedule-delete", "db", "--days", "7")["state"] == "pending_deletion"
        assert js("key", "cancel-delete", "db")["state"] == "disabled"
        # usage errors
        assert run("key", "create", "z", "--type", "DES").exit_code == 2
        assert run("key", "create", "z", "--expires-at", "soon").exit_code == 2
        r = runner.invoke(
            cli_app,
            ["key", "list", "--server", url, "--admin-key", str(tmp_path / "no"), "--json"],
        )
        assert r.exit_code == 2
        httpx.get(f"{url}/healthz").raise_for_status()
