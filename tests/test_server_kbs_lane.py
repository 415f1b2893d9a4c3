"""The KBS lane answers as the rest of the API does: 404/405, request ids, content types,
Bearer parsing, metrics, OpenAPI, and RFC 7807 bodies for errors nobody expected."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from nacre.errors import UsageError
from nacre.server.app import NacreApp
from nacre.store.errors import StoreError
from server_support import Env, Workload, make_env, snapshot

NAME = "default/key/lane"


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    with make_env("sqlite", tmp_path) as e:
        yield e


def _problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = r.json()
    assert body["status"] == status
    assert body["request_id"] == r.headers["x-request-id"]
    return body


def test_unknown_paths_and_wrong_methods(env: Env) -> None:
    for path in ("/kbs/v0/nope", "/kbs/v0/resource/a/b", "/kbs/v0/resource/a/b/c/d"):
        body = _problem(env.client.get(path), 404)
        assert body["code"] == "NOTFOUND"
    r = env.client.get("/kbs/v0/auth")
    assert _problem(r, 405)["code"] == "METHODNOTALLOWED"
    assert r.headers["allow"] == "POST"
    r = env.client.post("/kbs/v0/resource/a/b/c", json={})
    _problem(r, 405)
    assert r.headers["allow"] == "GET"


def test_every_answer_carries_a_request_id(env: Env) -> None:
    w = Workload(env)
    r = w.auth()
    assert r.status_code == 200
    assert len(r.headers["x-request-id"]) == 16
    assert r.headers["x-request-id"] != w.auth().headers["x-request-id"]


def test_a_body_that_is_not_declared_json_is_refused(env: Env) -> None:
    before = snapshot(env.store)
    r = env.client.post(
        "/kbs/v0/auth",
        content=b'{"version": "0.4.0", "tee": "sgx"}',
        headers={"content-type": "text/plain"},
    )
    body = _problem(r, 400)
    assert (body["code"], body["field"]) == ("JSON_INVALID", "body")
    assert "text/plain" in body["actual"]
    ok = env.client.post(
        "/kbs/v0/auth",
        content=b'{"version": "0.4.0", "tee": "sgx"}',
        headers={"content-type": "application/json; charset=utf-8"},
    )
    assert ok.status_code == 200
    assert snapshot(env.store) != before  # the second one made a session
    schema = _problem(env.client.post("/kbs/v0/auth", json={"tee": "sgx"}), 400)
    assert (schema["code"], schema["field"]) == ("SCHEMA", "version")


def test_a_non_bearer_authorization_leaves_the_cookie_in_charge(env: Env) -> None:
    env.put_secret(NAME, b"x" * 16)
    w = Workload(env)
    w.handshake()
    client = env.new_client()
    r = client.get(f"/kbs/v0/resource/{NAME}", headers={"Authorization": f"Basic {w.token}"})
    assert _problem(r, 401)["code"] == "SESSION_MISSING"
    r = client.get(f"/kbs/v0/resource/{NAME}", headers={"Authorization": f"bearer  {w.token} "})
    assert r.status_code == 200, r.text


def test_unexpected_errors_are_problems_and_logged(
    env: Env, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store = env.store

    def crash(*_a: object, **_k: object) -> None:
        raise RuntimeError("db exploded: secret-looking detail")

    monkeypatch.setattr(store, "create_session", crash)
    r = env.new_client().post("/kbs/v0/auth", json={"version": "0.4.0", "tee": "sgx"})
    body = _problem(r, 500)
    assert body["code"] == "INTERNAL"
    assert "exploded" not in r.text
    assert any(getattr(rec, "event", None) == "http.crash" for rec in caplog.records)

    def refuse(*_a: object, **_k: object) -> None:
        raise UsageError("bad ttl", field="ttl", expected="> 0", actual="0")

    monkeypatch.setattr(store, "create_session", refuse)
    body = _problem(
        env.new_client().post("/kbs/v0/auth", json={"version": "0.4.0", "tee": "sgx"}), 400
    )
    assert (body["field"], body["expected"], body["actual"]) == ("ttl", "> 0", "0")

    def broken(*_a: object, **_k: object) -> None:
        raise StoreError("the chain is damaged", field="audit_head")

    monkeypatch.setattr(store, "create_session", broken)
    body = _problem(
        env.new_client().post("/kbs/v0/auth", json={"version": "0.4.0", "tee": "sgx"}), 500
    )
    assert body["type"].endswith("/InternalError")


def test_metrics_count_the_lane_by_route_template(env: Env) -> None:
    env.put_secret(NAME, b"x" * 16)
    w = Workload(env)
    w.handshake()
    assert w.resource(NAME).status_code == 200
    text = env.client.get("/metrics").text
    for route, status in (
        ("/kbs/v0/auth", "200"),
        ("/kbs/v0/attest", "200"),
        ("/kbs/v0/resource/{repo}/{type}/{tag}", "200"),
    ):
        assert (
            f'nacre_http_requests_total{{method="{"GET" if "resource" in route else "POST"}",'
            f'route="{route}",status="{status}"}} 1.0'
        ) in text


def test_openapi_describes_the_lane_routes(env: Env) -> None:
    doc = env.client.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]

    def refs(node: object) -> Iterator[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "$ref" and isinstance(value, str):
                    yield value
                else:
                    yield from refs(value)
        elif isinstance(node, list):
            for item in node:
                yield from refs(item)

    for ref in refs(doc):  # every reference resolves
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.rsplit("/", 1)[1] in schemas, ref
    auth = doc["paths"]["/kbs/v0/auth"]["post"]
    assert auth["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/KbsAuthRequest"
    )
    assert "version" in schemas["KbsAuthRequest"]["properties"]
    assert "runtime-data" in schemas["KbsAttestRequest"]["properties"]
    resource = doc["paths"]["/kbs/v0/resource/{repo}/{type}/{tag}"]["get"]
    assert {p["name"] for p in resource["parameters"]} >= {"repo", "type", "tag"}
    assert {"401", "403", "404"} <= resource["responses"].keys()


def test_inline_releases_are_synced_before_they_leave(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite: handlers run on the event loop; an answer that follows an audit entry (a
    release, a denial) waits for the WAL fsync, and is a 500 without the secret if it fails."""
    env.put_secret(NAME, b"x" * 16)
    store = env.store
    calls: list[int] = []
    real = store.sync_deferred

    def counting() -> None:
        calls.append(store.deferred_mark())
        real()

    monkeypatch.setattr(store, "sync_deferred", counting)
    w = Workload(env)
    w.handshake()
    assert calls == []  # auth and attest audit nothing on success
    assert w.resource(NAME).status_code == 200
    assert len(calls) == 1
    assert _problem(w.resource("default/key/missing"), 404)["code"] is not None
    assert len(calls) == 2  # the denial's audit entry too

    def failing() -> None:
        raise StoreError("fsync failed: disk full", field="wal")

    monkeypatch.setattr(store, "sync_deferred", failing)
    r = w.resource(NAME)
    body = _problem(r, 500)
    assert "ciphertext" not in r.text
    assert body["type"].endswith("/InternalError")


def test_postgresql_handlers_run_on_worker_threads(tmp_path: Path) -> None:
    with make_env("postgresql", tmp_path) as pg:
        assert isinstance(pg.app, NacreApp)
        lane = pg.app.kbs_lane
        assert lane is not None
        assert lane._inline is False
        pg.put_secret(NAME, b"y" * 16)
        w = Workload(pg)
        w.handshake()
        assert w.resource(NAME).status_code == 200


def test_one_log_line_per_request_carries_the_outcome(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    env.put_secret(NAME, b"x" * 16)
    w = Workload(env)
    caplog.set_level("INFO", logger="nacre.server")
    w.handshake()
    assert w.resource(NAME).status_code == 200
    lines = [(getattr(r, "event", None), r.__dict__) for r in caplog.records]
    assert [event for event, _ in lines] == ["http.request"] * 3
    auth, attest, release = (fields for _, fields in lines)
    assert (auth["route"], auth["status"]) == ("/kbs/v0/auth", 200)
    assert "tee" not in auth
    assert (attest["route"], attest["tee"], attest["ear_status"], attest["sim"]) == (
        "/kbs/v0/attest",
        "sgx",
        "affirming",
        True,
    )
    assert (release["route"], release["resource"], release["version"]) == (
        "/kbs/v0/resource/{repo}/{type}/{tag}",
        NAME,
        1,
    )
    assert w.token not in caplog.text
