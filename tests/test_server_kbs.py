"""KBS v0.4.0 over the in-process app: handshake, replicas, and each refusal with its own 4xx."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from nacre.server import create_app
from nacre.sim import Manifest, ManifestFile
from nacre.token import EarInput, Keyring, decrypt, issue_ear, verify_ear
from server_support import Env, Workload, b64, make_env, snapshot
from test_store_support import BACKENDS

SECRET = b"model-key: 0123456789abcdef"
NAME = "default/key/model"


@pytest.fixture(params=BACKENDS)
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    with make_env(request.param, tmp_path) as e:
        yield e


def _problem(r: object, status: int) -> dict[str, object]:
    import httpx

    assert isinstance(r, httpx.Response)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert isinstance(body, dict)
    assert body["status"] == status
    assert {"type", "title", "detail"} <= body.keys()
    return body


def test_handshake_releases_secret_wrapped_to_attested_key(env: Env) -> None:
    env.put_secret(NAME, SECRET)
    w = Workload(env)
    r = w.auth()
    assert r.status_code == 200
    assert r.json()["extra-params"] == ""
    assert len(__import__("base64").b64decode(r.json()["nonce"])) == 32
    assert "kbs-session-id" in r.headers["set-cookie"]
    r = w.attest()
    assert r.status_code == 200, r.text
    assert set(r.json()) == {"token"}

    claims = verify_ear(w.token, env.client.get("/.well-known/jwks.json").json(), env.clock())
    appraisal = claims.appraisal()
    assert appraisal.status == "affirming"
    assert appraisal.sim is True
    assert dict(appraisal.tee_pubkey or {}) == w.jwk

    r = w.resource(NAME)  # by cookie
    assert r.status_code == 200, r.text
    assert set(r.json()) == {"protected", "encrypted_key", "iv", "ciphertext", "tag"}
    assert decrypt(r.json(), w.key) == SECRET

    other = env.new_client()  # by Bearer, no cookie (passport model)
    r = other.get(f"/kbs/v0/resource/{NAME}", headers={"Authorization": f"Bearer {w.token}"})
    assert r.status_code == 200
    assert decrypt(r.json(), w.key) == SECRET

    audit = env.store.audit_entries()
    released = [e for e in audit if e.action == "resource.release"]
    assert [e.outcome for e in released] == ["released", "released"]
    assert SECRET.hex() not in json.dumps([e.to_json() for e in audit])
    r = env.client.get("/admin/v1/audit/verify", headers=env.admin_headers())
    assert r.status_code == 200
    assert r.json()["ok"] is True


def test_evidence_as_sgx_verifier_object_and_json_string(env: Env) -> None:
    env.put_secret(NAME, SECRET)
    for shape in ("quote-object", "json-string"):
        w = Workload(env)
        assert w.auth().status_code == 200
        body = w.attest_body()
        quote = body["tee-evidence"]["primary_evidence"]
        body["tee-evidence"] = (
            quote if shape == "quote-object" else json.dumps(body["tee-evidence"])
        )
        r = w.client.post("/kbs/v0/attest", json=body)
        assert r.status_code == 200, r.text
        assert decrypt(w.resource(NAME).json(), w.key) == SECRET


def test_two_instances_sharing_postgres_finish_each_others_handshake(tmp_path: Path) -> None:
    with make_env("postgresql", tmp_path) as a:
        b_app = create_app(a.service.config)
        try:
            a.put_secret(NAME, SECRET)
            w = Workload(a)
            assert w.auth().status_code == 200  # begun on A
            client_b = a.new_client(b_app)
            client_b.cookies.update(w.client.cookies)
            r = client_b.post("/kbs/v0/attest", json=w.attest_body())  # finished on B
            assert r.status_code == 200, r.text
            w.token = r.json()["token"]
            r = w.resource(NAME)  # released by A with the session B attested
            assert r.status_code == 200, r.text
            assert decrypt(r.json(), w.key) == SECRET
            r = client_b.get(f"/kbs/v0/resource/{NAME}")
            assert decrypt(r.json(), w.key) == SECRET
        finally:
            b_app.state.nacre.close()


def test_replayed_nonce_is_401_and_changes_nothing(env: Env) -> None:
    w = Workload(env)
    w.handshake()
    body = w.attest_body()
    before = snapshot(env.store)
    body_problem = _problem(w.client.post("/kbs/v0/attest", json=body), 401)
    assert body_problem["code"] == "NONCE_REPLAYED"
    # The old nonce on a fresh session is not that session's challenge either.
    w2 = Workload(env)
    assert w2.auth().status_code == 200
    before = snapshot(env.store)
    p = _problem(w2.client.post("/kbs/v0/attest", json=body), 401)
    assert p["code"] == "NONCE_MISMATCH"
    assert snapshot(env.store) == before


def test_expired_session_is_401_and_changes_nothing(env: Env) -> None:
    w = Workload(env)
    assert w.auth().status_code == 200
    body = w.attest_body()
    env.clock.offset = timedelta(minutes=6)
    before = snapshot(env.store)
    p = _problem(w.client.post("/kbs/v0/attest", json=body), 401)
    assert p["code"] == "SESSION_EXPIRED"
    assert snapshot(env.store) == before
    p = _problem(Workload(env).client.post("/kbs/v0/attest", json=body), 401)
    assert p["code"] == "SESSION_MISSING"


def test_token_signed_by_another_service_is_401(env: Env) -> None:
    env.put_secret(NAME, SECRET)
    w = Workload(env)
    now = env.clock()
    foreign = issue_ear(
        EarInput(
            tee="sgx",
            status="affirming",
            trustworthiness_vector={"hardware": 2},
            claims={"mrenclave": "00" * 32},
            policy_id="default",
            tee_pubkey=w.jwk,
        ),
        Keyring.generate(now),
        now,
        timedelta(minutes=5),
    )
    before = snapshot(env.store)
    p = _problem(w.resource(NAME, bearer=foreign), 401)
    assert p["code"] == "TOKEN_UNKNOWN_KEY"
    p = _problem(w.resource(NAME, bearer="not.a.token"), 401)
    assert snapshot(env.store) == before
    p = _problem(w.resource(NAME), 401)  # neither cookie nor bearer
    assert p["code"] == "SESSION_MISSING"


def test_expired_token_is_401(env: Env) -> None:
    env.put_secret(NAME, SECRET)
    w = Workload(env)
    w.handshake()
    env.clock.offset = timedelta(minutes=10)
    p = _problem(
        env.new_client().get(
            f"/kbs/v0/resource/{NAME}", headers={"Authorization": f"Bearer {w.token}"}
        ),
        401,
    )
    assert p["code"] == "TOKEN_EXPIRED"


def test_key_that_is_not_the_attested_one_is_403_naming_report_data(env: Env) -> None:
    env.put_secret(NAME, SECRET)
    w = Workload(env)
    assert w.auth().status_code == 200
    attacker = Workload(env)
    before = snapshot(env.store)
    # The quote binds the attacker's key; the request asks for the workload's.
    r = w.client.post("/kbs/v0/attest", json=w.attest_body(bind_jwk=attacker.jwk))
    p = _problem(r, 403)
    assert p["check"] == "report_data"
    assert p["code"] == "REPORT_DATA_MISMATCH"
    assert p["expected"] != p["actual"]
    assert len(str(p["expected"])) == 128
    assert snapshot(env.store) == before
    p = _problem(w.resource(NAME), 401)  # the session never attested
    assert p["code"] == "SESSION_NOT_ATTESTED"


def test_body_over_limit_is_413(env: Env) -> None:
    before = snapshot(env.store)
    big = {"version": "0.4.0", "tee": "sgx", "extra-params": "x" * (300 * 1024)}
    p = _problem(env.client.post("/kbs/v0/auth", json=big), 413)
    assert p["code"] == "LIMIT_EXCEEDED"
    assert p["limit"] == "max_request_bytes"
    p = _problem(
        env.client.put(
            f"/admin/v1/resources/{NAME}",
            json={"data": "A" * (3 * 1024 * 1024)},
            headers=env.admin_headers(),
        ),
        413,
    )
    assert p["field"] == "body"

    async def stream() -> object:  # no Content-Length: counted while read
        for _ in range(40):
            yield b"x" * 8192

    r = env.client.post(
        "/kbs/v0/attest", content=stream(), headers={"content-type": "application/json"}
    )
    _problem(r, 413)
    assert snapshot(env.store) == before


def test_malformed_json_is_400(env: Env) -> None:
    w = Workload(env)
    assert w.auth().status_code == 200
    before = snapshot(env.store)
    for path in ("/kbs/v0/auth", "/kbs/v0/attest", "/attestation/v1/sgx"):
        p = _problem(
            w.client.post(
                path, content=b'{"version": ', headers={"content-type": "application/json"}
            ),
            400,
        )
        assert p["code"] == "JSON_INVALID"
        assert p["field"] == "body"
    p = _problem(w.client.post("/kbs/v0/attest", json={"runtime-data": {"nonce": w.nonce}}), 400)
    assert p["code"] == "SCHEMA"
    p = _problem(w.client.post("/kbs/v0/auth", json={"version": "0.1.0", "tee": "sgx"}), 400)
    assert p["field"] == "version"
    assert p["expected"] == "0.4.0"
    p = _problem(w.client.post("/kbs/v0/auth", json={"version": "0.4.0", "tee": "nvidia"}), 400)
    body = w.attest_body()
    body["tee-evidence"] = {
        "primary_evidence": {"quote": b64(b"not a quote" * 10)},
        "additional_evidence": "",
    }
    p = _problem(w.client.post("/kbs/v0/attest", json=body), 400)
    assert p["check"] == "evidence"
    # Trustee's SEV-SNP evidence (the report as a serde JSON object): named, not a vague error.
    body["tee-evidence"] = {
        "primary_evidence": {"attestation_report": {"version": 3}, "cert_chain": None},
        "additional_evidence": "",
    }
    p = _problem(w.client.post("/kbs/v0/attest", json=body), 400)
    assert p["code"] == "EVIDENCE_SHAPE"
    assert p["field"] == "tee-evidence.attestation_report"
    assert "not supported yet" in str(p["title"])
    p = _problem(
        env.client.put(
            f"/admin/v1/resources/{NAME}",
            content=b"{",
            headers={**env.admin_headers(), "content-type": "application/json"},
        ),
        400,
    )
    assert snapshot(env.store) == before


def test_release_policy_deny_names_the_failed_check(env: Env) -> None:
    expected_mrenclave = env.platform.measure().mr_enclave.hex()
    policy = (
        "version: 1\nrules:\n"
        f"  - name: enclave\n    expr: claims.mrenclave == '{expected_mrenclave}'\n"
        "  - name: svn\n    expr: claims.isv_svn >= 3\n    message: enclave too old\n"
    )
    env.put_secret(NAME, SECRET, policy=policy)
    w = Workload(env)
    w.handshake()
    before_rows = {k: v for k, v in snapshot(env.store).items() if k != "audit"}
    p = _problem(w.resource(NAME), 403)
    assert p["check"] == "rules.svn"
    assert p["code"] == "POLICY_DENY"
    assert p["detail"] == "enclave too old"
    assert p["actual"] == "false"
    checks = p["checks"]
    assert isinstance(checks, list)
    assert [c["name"] for c in checks if not c["passed"]] == ["rules.svn"]
    assert {k: v for k, v in snapshot(env.store).items() if k != "audit"} == before_rows
    denial = env.store.audit_entries()[-1]
    assert (denial.action, denial.outcome, denial.detail["check"]) == (
        "resource.release",
        "denied",
        "rules.svn",
    )

    # A bare CEL expression that the measured workload satisfies releases.
    env.put_secret(
        "default/key/other", SECRET, policy=f'claims.mrenclave == "{expected_mrenclave}" && sim'
    )
    assert decrypt(w.resource("default/key/other").json(), w.key) == SECRET
    # A modified workload (other MRENCLAVE) is refused by name.
    env.put_secret(
        "default/key/pinned", SECRET, policy=f'claims.mrenclave == "{expected_mrenclave}"'
    )
    modified = Workload(env)
    assert modified.auth().status_code == 200
    manifest = Manifest(name="modified", files=(ManifestFile("app.py", bytes(32)),))
    assert modified.attest(manifest=manifest).status_code == 200
    p = _problem(modified.resource("default/key/pinned"), 403)
    assert p["check"] == "rules.expr"
    assert p["expected"] == f'claims.mrenclave == "{expected_mrenclave}"'
    assert p["actual"] == "false"


def test_unknown_resource_is_404(env: Env) -> None:
    w = Workload(env)
    w.handshake()
    p = _problem(w.resource("default/key/missing"), 404)
    assert p["code"] == "NOT_FOUND"
    _problem(w.resource("bad..name/x/y!"), 404)


def test_appraisal_policy_refusal_at_attest_is_403(env: Env) -> None:
    r = env.client.put(
        "/admin/v1/policies/default",
        json={"kind": "appraisal", "document": "version: 1\nname: strict\nallow_sim: false\n"},
        headers=env.admin_headers(),
    )
    assert r.status_code == 200, r.text
    w = Workload(env)
    assert w.auth().status_code == 200
    p = _problem(w.attest(), 403)
    assert p["check"] == "sim"
    assert p["code"] == "APPRAISAL_DENY"


def test_sqlite_file_holds_no_secret_in_clear(tmp_path: Path) -> None:
    with make_env("sqlite", tmp_path) as env:
        env.put_secret(NAME, SECRET)
        w = Workload(env)
        w.handshake()
        assert decrypt(w.resource(NAME).json(), w.key) == SECRET
        files = list((tmp_path / "db").glob("nacre.db*"))
        assert files
        for path in files:
            assert SECRET not in path.read_bytes()


def test_concurrent_attests_of_one_session_succeed_once(env: Env) -> None:
    from concurrent.futures import ThreadPoolExecutor

    w = Workload(env)
    assert w.auth().status_code == 200
    body = w.attest_body()
    clients = [env.new_client() for _ in range(4)]
    for c in clients:
        c.cookies.update(w.client.cookies)
    with ThreadPoolExecutor(4) as pool:
        statuses = sorted(
            pool.map(lambda c: c.post("/kbs/v0/attest", json=body).status_code, clients)
        )
    assert statuses == [200, 401, 401, 401]
