"""``nacre serve --workers N``: one listening socket served by N supervised worker processes.

Real servers as subprocesses. Which worker serves a connection is read from /proc (the server's
end of the TCP connection belongs to exactly one worker's file table): there is no endpoint
revealing process ids. To make a given worker answer, the other one is stopped (SIGSTOP) for a
moment: the kernel then hands new connections to the only worker accepting.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import ssl
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, TypeVar

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from nacre.sdk import KbsClient
from nacre.server import ADMIN_KEY_FILE, load_admin_key, sign_admin_token
from nacre.sim import SimPlatform
from nacre.tee.sim import SimBackend
from serve_process import ServeProcess, start_serve
from test_serve_tls import _issue

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads worker processes and sockets in /proc"
)

WORKERS: Final = 2
#: Longest wait for anything here (a worker start is ~1 s; slow CI machines get slack).
WAIT_SECONDS: Final = 20.0
RESOURCE: Final = "workers/key/model"
SECRET: Final = b"model key served by workers"
_T = TypeVar("_T")


def _start(
    root: Path, *, workers: int = WORKERS, tls: tuple[Path, Path, Path] | None = None
) -> ServeProcess:
    """``nacre serve --workers N`` on a free port, answering /healthz (one worker is enough)."""
    return start_serve(root / "data", root / "sim", root / "serve.log", tls=tls, workers=workers)


def _stop(server: ServeProcess) -> None:
    """Stop the server and its workers, whatever state the test left them in."""
    for pid in _children(server.proc.pid):
        _signal(pid, signal.SIGCONT)
    server.stop()


def _wait(check: Callable[[], _T | None], what: str, server: ServeProcess | None = None) -> _T:
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            tail = f"\n{server.log_tail()}" if server is not None else ""
            raise AssertionError(f"timed out waiting for {what}{tail}")
        time.sleep(0.05)


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


# -------------------------------------------------------------------------- /proc


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process, None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    state, ppid = text.rsplit(")", 1)[1].split()[:2]
    return state, int(ppid)


def _children(parent: int) -> list[int]:
    """Live (not zombie) children of ``parent``."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None and stat[1] == parent and stat[0] != "Z":
                out.append(int(entry.name))
    return sorted(out)


def _workers(server: ServeProcess, count: int = WORKERS) -> list[int]:
    return _wait(
        lambda: pids if len(pids := _children(server.proc.pid)) == count else None,
        f"{count} worker processes",
        server,
    )


def _metrics_dir(worker: int) -> Path:
    """The private PROMETHEUS_MULTIPROC_DIR the parent gave its workers."""
    environ = Path(f"/proc/{worker}/environ").read_bytes().split(b"\0")
    value = next(e for e in environ if e.startswith(b"PROMETHEUS_MULTIPROC_DIR="))
    path = Path(value.split(b"=", 1)[1].decode())
    assert path.is_dir()
    return path


def _socket_owner(inode: str, pids: list[int]) -> int | None:
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    return None


@dataclass
class Conn:
    """One keep-alive HTTP/1.1 connection (raw: the test must know which socket a request used)."""

    sock: socket.socket
    server_port: int

    @classmethod
    def open(cls, url: str) -> Conn:
        port = int(url.rsplit(":", 1)[1])
        return cls(socket.create_connection(("127.0.0.1", port), timeout=WAIT_SECONDS), port)

    def get(self, path: str) -> tuple[int, bytes]:
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(65536)
            assert chunk, "connection closed before a response"
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        length = next(
            int(line.split(":", 1)[1])
            for line in lines
            if line.lower().startswith("content-length:")
        )
        while len(body) < length:
            chunk = self.sock.recv(65536)
            assert chunk, "connection closed in a response body"
            body += chunk
        return int(lines[0].split()[1]), body

    def owner(self, pids: list[int]) -> int:
        """The worker holding the server's end of this connection."""
        client_port = self.sock.getsockname()[1]
        inode = None
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                rows = Path(table).read_text().splitlines()[1:]
            except OSError:
                continue
            for row in rows:
                fields = row.split()
                local, remote, state = fields[1], fields[2], fields[3]
                if (
                    state == "01"  # ESTABLISHED
                    and int(local.rsplit(":", 1)[1], 16) == self.server_port
                    and int(remote.rsplit(":", 1)[1], 16) == client_port
                ):
                    inode = fields[9]
        assert inode is not None, "the server's end of the connection is not in /proc/net/tcp"
        owner = _socket_owner(inode, pids)
        assert owner is not None, f"no worker in {pids} holds the connection"
        return owner

    def close(self) -> None:
        self.sock.close()


def _served_while_others_stopped(server: ServeProcess, serving: int, pids: list[int]) -> Conn:
    """A connection ``serving`` accepted and answered while every other worker was stopped."""
    others = [p for p in pids if p != serving]
    for pid in others:
        os.kill(pid, signal.SIGSTOP)
    try:
        conn = Conn.open(server.url)
        status, _ = conn.get("/healthz")
        assert status == 200
        assert conn.owner(pids) == serving
        return conn
    finally:
        for pid in others:
            _signal(pid, signal.SIGCONT)


# -------------------------------------------------------------------------- metrics


def _sample(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


def _settled(read: Callable[[], float]) -> float:
    """A metric once it stops moving (a request is counted just after its response is sent):
    the same value for 0.3 s."""
    last, same_since = read(), time.monotonic()
    deadline = same_since + WAIT_SECONDS
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = read()
        if now != last:
            last, same_since = now, time.monotonic()
        elif time.monotonic() - same_since >= 0.3:
            return now
    raise AssertionError("the metric kept changing")


def _reaches(read: Callable[[], float], expected: float) -> float:
    """The metric once it reaches ``expected`` (or what it is when the wait ends)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while (value := read()) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


# -------------------------------------------------------------------------- tests


@dataclass
class Served:
    server: ServeProcess
    platform: SimPlatform


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("serve-workers")
    platform = SimPlatform.load_or_init(root / "sim")
    server = _start(root)
    try:
        yield Served(server, platform)
    finally:
        _stop(server)


def test_both_workers_serve_and_metrics_sum_over_them(served: Served) -> None:
    server = served.server
    pids = _workers(server)
    a, b = pids
    conn_a = _served_while_others_stopped(server, a, pids)
    conn_b = _served_while_others_stopped(server, b, pids)
    try:

        def scrape(conn: Conn, name: str, **labels: str) -> float:
            status, body = conn.get("/metrics")
            assert status == 200
            return _sample(body.decode(), name, method="GET", route="/healthz", **labels)

        def requests_on(conn: Conn) -> float:
            return scrape(conn, "nacre_http_requests_total", status="200")

        before = _settled(lambda: requests_on(conn_a))
        for _ in range(3):
            assert conn_a.get("/healthz")[0] == 200
        for _ in range(4):
            assert conn_b.get("/healthz")[0] == 200
        # Each worker's /metrics is the sum over both: 3 + 4 more, whichever worker answers.
        assert _reaches(lambda: requests_on(conn_a), before + 7) == before + 7
        assert _settled(lambda: requests_on(conn_b)) == before + 7
        histogram = scrape(conn_b, "nacre_http_request_duration_seconds_count")
        assert histogram == before + 7  # histograms are summed too
    finally:
        conn_a.close()
        conn_b.close()


def test_a_burst_of_connections_is_spread_over_the_workers(served: Served) -> None:
    """Connections opened at once go half to each worker (the kernel and asyncio alone gave
    one worker most of them), so keep-alive clients share both workers' cores."""
    server = served.server
    pids = _workers(server)
    conns = [Conn.open(server.url) for _ in range(16)]
    try:
        for conn in conns:
            assert conn.get("/healthz")[0] == 200
        owners = [conn.owner(pids) for conn in conns]
        counts = sorted(owners.count(pid) for pid in pids)
        assert counts[1] - counts[0] <= 2, counts
    finally:
        for conn in conns:
            conn.close()


def test_kbs_handshakes_through_the_workers(served: Served) -> None:
    server, platform = served.server, served.platform
    mrenclave = platform.measure().mr_enclave.hex()
    policy = (
        f"version: 1\nrules:\n  - name: mrenclave\n    expr: claims.mrenclave == '{mrenclave}'\n"
    )
    key = load_admin_key(server.data_dir / ADMIN_KEY_FILE)
    token = sign_admin_token(key, now=datetime.now(UTC))
    with httpx.Client(base_url=server.url, timeout=WAIT_SECONDS) as http:
        r = http.put(
            f"/admin/v1/resources/{RESOURCE}",
            json={"data": base64.b64encode(SECRET).decode(), "policy": policy},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert r.status_code == 200, r.text
        for _ in range(3):  # each KbsClient: new connections, so the steps spread over workers
            with KbsClient(server.url, backend=SimBackend(platform), get_retries=0) as kbs:
                assert kbs.get_resource(RESOURCE) == SECRET

        def released() -> float:
            text = http.get("/metrics").text
            return _sample(text, "nacre_kbs_resource_requests_total", outcome="released")

        assert _reaches(released, 3) == 3


def test_a_killed_worker_is_restarted_and_service_continues(served: Served) -> None:
    server = served.server
    pids = _workers(server)
    victim, survivor = pids
    os.kill(victim, signal.SIGKILL)
    _wait(lambda: victim not in _children(server.proc.pid), "the killed worker to die", server)
    with httpx.Client(base_url=server.url, timeout=WAIT_SECONDS) as http:

        def replaced() -> list[int] | None:
            assert http.get("/healthz").status_code == 200  # the survivor serves meanwhile
            pids = _children(server.proc.pid)
            return pids if len(pids) == WORKERS and victim not in pids else None

        now = _wait(replaced, "a replacement worker", server)
    assert survivor in now
    (replacement,) = set(now) - {survivor}
    _served_while_others_stopped(server, replacement, now).close()
    assert server.proc.poll() is None
    died = [
        event
        for line in server.log.read_text().splitlines()
        if line.startswith("{") and (event := json.loads(line)).get("event") == "serve.worker.died"
    ]
    assert [(e["pid"], e["status"]) for e in died] == [(victim, "killed by SIGKILL")]


def test_tls_workers_and_sigterm_stop_everything(tmp_path: Path) -> None:
    tls = _issue(tmp_path, "workers")
    server = _start(tmp_path, tls=tls)
    try:
        pids = _workers(server)
        metrics_dir = _metrics_dir(pids[0])
        verify = ssl.create_default_context(cafile=str(tls[2]))
        for serving in pids:  # each worker serves HTTPS (the other stopped meanwhile)
            others = [p for p in pids if p != serving]
            for pid in others:
                os.kill(pid, signal.SIGSTOP)
            try:
                r = httpx.get(f"{server.url}/healthz", verify=verify, timeout=WAIT_SECONDS)
                assert r.status_code == 200
            finally:
                for pid in others:
                    _signal(pid, signal.SIGCONT)
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=WAIT_SECONDS) == 0, server.log_tail()
        assert [p for p in pids if _stat(p) is not None] == []  # no orphans, nothing left
        assert not metrics_dir.exists()
        log = server.log.read_text()
        assert log.count(f"nacre serving on {server.url}") == 1
        assert log.count(f"admin key: {server.data_dir / ADMIN_KEY_FILE}") == 1
    finally:
        _stop(server)


@pytest.mark.parametrize("count", ["0", "65"])
def test_workers_out_of_range_is_a_usage_error(count: str, tmp_path: Path) -> None:
    from nacre.cli import app

    result = CliRunner().invoke(
        app, ["serve", "--data-dir", str(tmp_path / "data"), "--workers", count]
    )
    assert result.exit_code == 2
    assert "--workers" in result.output
    assert "1 to 64" in result.output
    assert not (tmp_path / "data").exists()


def test_workers_that_keep_failing_to_start_make_the_parent_give_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nacre.server.serve_setup import ServeOptions, bind_listener
    from nacre.server.workers import Supervisor, WorkersFailedError

    monkeypatch.setenv("NACRE_SIM_DIR", str(tmp_path / "sim"))
    monkeypatch.delenv("NACRE_TEE", raising=False)
    not_a_dir = tmp_path / "data"
    not_a_dir.write_text("a file where the data directory should be\n")
    options = ServeOptions(
        database_url=f"sqlite:///{tmp_path / 'nacre.db'}", data_dir=not_a_dir, log_level="error"
    )
    listener = bind_listener("127.0.0.1", 0)
    before = _children(os.getpid())
    try:
        with pytest.raises(WorkersFailedError, match="keep exiting before they serve"):
            Supervisor(options, listener, WORKERS, max_startup_failures=2).run()
    finally:
        listener.close()
    assert _children(os.getpid()) == before  # every worker reaped


def test_workers_stop_when_their_parent_is_killed(tmp_path: Path) -> None:
    server = _start(tmp_path)
    pids = _workers(server)
    metrics_dir = _metrics_dir(pids[0])
    try:
        server.sigkill()  # the one way the parent cannot stop them itself

        def gone(pid: int) -> bool:
            stat = _stat(pid)
            return stat is None or stat[0] == "Z"  # exited (a zombie until its new parent reaps)

        _wait(lambda: all(gone(p) for p in pids), "the orphaned workers to stop", server)
        assert server.log.read_text().count('"event":"serve.worker.orphaned"') == WORKERS
        assert not metrics_dir.exists()  # removed by the orphans, as the parent would have
    finally:
        for pid in pids:
            _signal(pid, signal.SIGKILL)
        _stop(server)
