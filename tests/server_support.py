"""Helpers of the server tests (no tests here): an app on SQLite or PostgreSQL, a simulated
workload doing the KBS handshake, a sync client over ``httpx.ASGITransport``, store snapshots."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import httpx
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import FastAPI
from sqlalchemy import select

from nacre.cli.demo_cmd import LocalServer
from nacre.server import NacreService, ServerConfig, create_app, load_admin_key, sign_admin_token
from nacre.server.adminauth import AdminPrivateKey, generate_admin_key, public_jwk_of
from nacre.sim import SimPlatform
from nacre.store import KekSealer, Store
from nacre.store import _schema as t
from nacre.token import kbs_report_data, public_jwk
from test_store_support import database, make_sealer

__all__ = ["Clock", "Env", "SyncClient", "Workload", "b64", "make_env", "served", "snapshot"]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class Clock:
    """The server's clock: real time plus an offset the test moves."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


class SyncClient:
    """``httpx.AsyncClient`` over ``ASGITransport``, driven synchronously (one event loop)."""

    def __init__(self, app: FastAPI) -> None:
        self._loop = asyncio.new_event_loop()
        self._client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver"
        )

    @property
    def cookies(self) -> httpx.Cookies:
        return self._client.cookies

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        return self._loop.run_until_complete(self._client.request(method, url, **kwargs))

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def put(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("PUT", url, **kwargs)

    def delete(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("DELETE", url, **kwargs)

    def close(self) -> None:
        self._loop.run_until_complete(self._client.aclose())
        self._loop.close()


@dataclass
class Env:
    app: FastAPI
    client: SyncClient
    platform: SimPlatform
    data_dir: Path
    url: str
    sealer: KekSealer
    clock: Clock
    clients: list[SyncClient] = field(default_factory=list)

    @property
    def service(self) -> NacreService:
        svc: NacreService = self.app.state.nacre
        return svc

    @property
    def store(self) -> Store:
        return self.service.store

    def new_client(self, app: FastAPI | None = None) -> SyncClient:
        client = SyncClient(app or self.app)
        self.clients.append(client)
        return client

    def admin_headers(
        self, key: AdminPrivateKey | None = None, role: str | None = None
    ) -> dict[str, str]:
        signer = key or load_admin_key(self.data_dir / "admin.key")
        token = sign_admin_token(signer, now=self.clock(), role=role)
        return {"Authorization": f"Bearer {token}"}

    def register_key(self, name: str, roles: list[str]) -> AdminPrivateKey:
        key = generate_admin_key()
        r = self.client.put(
            f"/admin/v1/admin-keys/{name}",
            json={"jwk": public_jwk_of(key), "roles": roles},
            headers=self.admin_headers(),
        )
        assert r.status_code == 200, r.text
        return key

    def put_secret(self, name: str, data: bytes, policy: str | None = None) -> httpx.Response:
        body: dict[str, Any] = {"data": b64(data)}
        if policy is not None:
            body["policy"] = policy
        r = self.client.put(f"/admin/v1/resources/{name}", json=body, headers=self.admin_headers())
        assert r.status_code == 200, r.text
        return r


def config_for(
    url: str, tmp_path: Path, platform: SimPlatform, clock: Clock, **kw: Any
) -> ServerConfig:
    return ServerConfig(
        database_url=url,
        data_dir=tmp_path / "data",
        sealer=make_sealer(tmp_path / "seal"),
        trust_sim=True,
        sim_trust=platform.trust_roots(),
        collateral_provider=platform.bundle,
        clock=clock,
        **kw,
    )


@contextmanager
def make_env(kind: str, tmp_path: Path, **kw: Any) -> Iterator[Env]:
    with database(kind, tmp_path) as url:
        platform = SimPlatform.init(tmp_path / "sim")
        clock = Clock()
        config = config_for(url, tmp_path, platform, clock, **kw)
        app = create_app(config)
        env = Env(app, SyncClient(app), platform, config.data_dir, url, config.sealer, clock)
        try:
            yield env
        finally:
            env.client.close()
            for c in env.clients:
                c.close()
            env.service.close()


class Workload:
    """A simulated TEE workload speaking KBS v0.4.0 the way guest-components do."""

    def __init__(self, env: Env, client: SyncClient | None = None, tee: str = "sgx") -> None:
        self.env = env
        self.client = client or env.new_client()
        self.tee = tee
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.jwk = public_jwk(self.key)
        self.nonce = ""
        self.token = ""

    def auth(self) -> httpx.Response:
        r = self.client.post(
            "/kbs/v0/auth",
            json={
                "version": "0.4.0",
                "tee": self.tee,
                "extra-params": {"supported-hash-algorithms": ["sha256", "sha384", "sha512"]},
            },
        )
        if r.status_code == 200:
            self.nonce = r.json()["nonce"]
        return r

    def attest_body(
        self, *, bind_jwk: dict[str, str] | None = None, manifest: Any = None
    ) -> dict[str, Any]:
        report_data = kbs_report_data(self.nonce, bind_jwk or self.jwk)
        quote = self.env.platform.quote(self.tee, report_data, manifest)
        return {
            "runtime-data": {"nonce": self.nonce, "tee-pubkey": self.jwk},
            "tee-evidence": {"primary_evidence": {"quote": b64(quote)}, "additional_evidence": ""},
        }

    def attest(self, **kw: Any) -> httpx.Response:
        r = self.client.post("/kbs/v0/attest", json=self.attest_body(**kw))
        if r.status_code == 200:
            self.token = r.json()["token"]
        return r

    def handshake(self) -> None:
        assert self.auth().status_code == 200
        r = self.attest()
        assert r.status_code == 200, r.text

    def resource(self, name: str, *, bearer: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        return self.client.get(f"/kbs/v0/resource/{name}", headers=headers)


def snapshot(store: Store) -> dict[str, Any]:
    """Everything a refused request must leave as it was."""
    with store.engine.connect() as conn:
        tables: dict[str, list[Any]] = {
            name: [tuple(row) for row in conn.execute(select(table)).all()]
            for name, table in (
                ("sessions", t.sessions),
                ("nonces", t.nonces),
                ("resources", t.resources),
                ("resource_versions", t.resource_versions),
                ("policies", t.policies),
            )
        }
    return {**tables, "audit": [e.to_json() for e in store.audit_entries()]}


@contextmanager
def served(app: FastAPI, *, lifespan: Literal["on", "off"] = "off") -> Iterator[str]:
    """``app`` on uvicorn at 127.0.0.1 (:class:`nacre.cli.demo_cmd.LocalServer`); yields its URL.
    Lifespan off by default: the test's :class:`Env` owns the service and closes it."""
    with LocalServer(app, lifespan=lifespan) as server:
        yield server.url
