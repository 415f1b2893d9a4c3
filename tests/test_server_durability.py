"""kill -9 of ``nacre serve`` in the middle of an admin write load and of KBS releases, then restart
on the same state: every acknowledged (2xx) write is there, readable, audited, every released
secret has its audit entry (on SQLite the KBS lane commits those without waiting for the disk and
syncs the WAL before it answers), and the audit chain verifies.

The server is a real subprocess (``nacre serve``), on SQLite (the embedded default, in the data
directory) and on PostgreSQL (a fresh schema, dropped afterwards; PostgreSQL must be up: these
tests fail, never skip, when it is not).
"""

from __future__ import annotations

import base64
import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import httpx
import pytest

from nacre.sdk import KbsClient
from nacre.sim import SimPlatform
from nacre.store import default_url, open_store, verify_chain
from nacre.tee.sim import SimBackend
from serve_process import ServeProcess, start_serve
from test_store_support import BACKENDS, postgres_schema

WRITERS: Final = 4
#: Acknowledged writes to wait for before the kill (the writers keep going until it).
ACKS_BEFORE_KILL: Final = 40
LOAD_DEADLINE_SECONDS: Final = 20.0


def _payload(name: str) -> bytes:
    return f"secret of {name}".encode()


@pytest.fixture(params=BACKENDS)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield default_url(tmp_path / "data")
    else:
        with postgres_schema() as url:
            yield url


class WriteLoad:
    """``WRITERS`` threads PUTting distinct resources until the server stops answering."""

    def __init__(self, server: ServeProcess) -> None:
        self.server = server
        self.headers = server.admin_headers()
        self.lock = threading.Lock()
        self.acked: list[str] = []
        self.refused: list[str] = []  # non-2xx answers (must not happen)
        self.failed = 0  # transport errors: writes in flight when the server died
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._writer, args=(w,), daemon=True) for w in range(WRITERS)
        ]

    def _writer(self, w: int) -> None:
        with httpx.Client(base_url=self.server.url, timeout=10.0) as http:
            i = 0
            while not self.stop.is_set() and i < 100_000:
                name = f"load/w{w}/n{i}"
                body = {"data": base64.b64encode(_payload(name)).decode("ascii")}
                try:
                    r = http.put(f"/admin/v1/resources/{name}", json=body, headers=self.headers)
                except httpx.TransportError:
                    with self.lock:
                        self.failed += 1
                    return
                with self.lock:
                    if 200 <= r.status_code < 300:
                        self.acked.append(name)
                    else:
                        self.refused.append(f"{name}: {r.status_code} {r.text[:200]}")
                i += 1

    def start(self) -> None:
        for th in self.threads:
            th.start()

    def wait_for(self, acks: int) -> None:
        deadline = time.monotonic() + LOAD_DEADLINE_SECONDS
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.acked) >= acks or self.refused:
                    return
            time.sleep(0.01)

    def join(self) -> None:
        self.stop.set()
        for th in self.threads:
            th.join(timeout=15)
        assert not any(th.is_alive() for th in self.threads)


RELEASED: Final = "rel/key/model"


class ReleaseLoad:
    """One thread doing full KBS handshakes for :data:`RELEASED` until the server stops
    answering; ``released`` holds the EAR ``jti`` of every secret that arrived."""

    def __init__(self, server: ServeProcess, platform: SimPlatform) -> None:
        self.server = server
        self.backend = SimBackend(platform)
        self.released: list[str] = []
        self.wrong: list[str] = []  # a release that was not the registered secret
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                with KbsClient(self.server.url, backend=self.backend, get_retries=0) as kbs:
                    data = kbs.get_resource(RELEASED)
                    token = kbs.token
            except Exception:
                return
            if data != _payload(RELEASED) or token is None:
                self.wrong.append(repr(data[:40]))
                continue
            claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
            self.released.append(str(claims["jti"]))

    def join(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()


def test_sigkill_mid_write_load_then_restart_keeps_every_acknowledged_write(
    database: str, tmp_path: Path
) -> None:
    data_dir, sim_dir, log = tmp_path / "data", tmp_path / "sim", tmp_path / "serve.log"
    url_arg = None if database.startswith("sqlite") else database

    first = start_serve(data_dir, sim_dir, log, database=url_arg)
    try:
        with httpx.Client(base_url=first.url, timeout=10.0) as http:
            put = http.put(
                f"/admin/v1/resources/{RELEASED}",
                json={"data": base64.b64encode(_payload(RELEASED)).decode("ascii")},
                headers=first.admin_headers(),
            )
            assert put.status_code == 200, put.text
        releases = ReleaseLoad(first, SimPlatform.load_or_init(sim_dir))
        releases.thread.start()
        load = WriteLoad(first)
        load.start()
        load.wait_for(ACKS_BEFORE_KILL)
        deadline = time.monotonic() + LOAD_DEADLINE_SECONDS
        while len(releases.released) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        status = first.sigkill()  # in the middle of the load: the writers are still going
    finally:
        first.stop()
    load.join()
    releases.join()
    assert not releases.wrong, releases.wrong
    assert len(releases.released) >= 3, first.log_tail()

    assert status == -signal.SIGKILL
    assert not load.refused, load.refused[:5]
    assert len(load.acked) >= ACKS_BEFORE_KILL, first.log_tail()
    assert load.failed >= 1  # at least one write was in flight (or sent) when the server died
    acked = list(load.acked)

    second = start_serve(data_dir, sim_dir, log, database=url_arg)
    try:
        headers = second.admin_headers()
        with httpx.Client(base_url=second.url, timeout=10.0) as http:
            for name in acked:
                r = http.get(f"/admin/v1/resources/{name}", headers=headers)
                assert r.status_code == 200, (name, r.status_code, r.text[:300])
                assert r.json()["name"] == name
                assert r.json()["version"] == 1
            listed = http.get("/admin/v1/resources", headers=headers)
            assert listed.status_code == 200
            names = {x["name"] for x in listed.json()["resources"]}
            assert set(acked) <= names
            # Nothing but what was sent: unacknowledged writes may have landed, nothing else.
            assert all(n.startswith("load/w") or n == RELEASED for n in names)

            online = http.get("/admin/v1/audit/verify", headers=headers)
            assert online.status_code == 200
            assert online.json()["ok"] is True, online.json()

            # The restarted server keeps taking writes, and the chain stays whole.
            after = http.put(
                "/admin/v1/resources/load/after/restart",
                json={"data": base64.b64encode(b"after").decode("ascii")},
                headers=headers,
            )
            assert after.status_code == 200, after.text
            again = http.get("/admin/v1/audit/verify", headers=headers)
            assert again.json()["ok"] is True, again.json()
    finally:
        second.stop()
    assert second.proc.returncode is not None

    # Offline, with the service's own sealer: every acknowledged secret decrypts to what was
    # sent, every one has its audit entry, and the chain verifies.
    sealer = SimBackend(SimPlatform.load_or_init(sim_dir))
    with open_store(database, sealer=sealer, data_dir=data_dir, migrate=False) as store:
        for name in acked:
            assert store.get_resource(name).data == _payload(name)
        report = verify_chain(store)
        assert report.ok, report
        puts = {
            e.target
            for e in store.audit_entries()
            if e.action == "resource.put" and e.outcome == "ok"
        }
        assert set(acked) <= puts
        assert "load/after/restart" in puts
        released = {
            e.actor
            for e in store.audit_entries()
            if e.action == "resource.release" and e.outcome == "released"
        }
        assert {f"ear:{jti}" for jti in releases.released} <= released
