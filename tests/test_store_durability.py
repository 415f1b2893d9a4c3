"""kill -9 in the middle of a write load: every acknowledged write survives, the chain verifies;
SQLite fsyncs every commit except KBS session state's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import event

from nacre.store import open_store, verify_chain
from test_store_support import sealer_from_root_file

ACKS_BEFORE_KILL = 40

WRITER = r"""
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[4])
from test_store_support import sealer_from_root_file
from datetime import timedelta
from nacre.store import open_store

url, data_dir, root = sys.argv[1], sys.argv[2], Path(sys.argv[3])
store = open_store(url, sealer=sealer_from_root_file(root), data_dir=data_dir)
print("ready", flush=True)
i = 0
while True:
    name = f"load/item/n{i}"
    store.put_resource(name, f"secret-{i}".encode(), actor="loader")
    if i % 3 == 0:
        store.create_key(f"key-{i}", "AES-256", bytes([i % 256]) * 32, actor="loader")
    # KBS session state (written without an fsync on SQLite) survives a process crash too.
    session = store.create_session("sgx", ttl=timedelta(hours=1), session_id=f"{i:032x}")
    store.attest_session(session.id, session.nonce, tee_pubkey="{}", token=f"t{i}")
    # An audit entry committed without waiting for the disk, then synced (the KBS lane's way).
    store.record(actor="loader", action="release", target=f"r{i}", outcome="ok", durable=False)
    store.sync_deferred()
    print(i, flush=True)  # acknowledged: the call returned, so the transaction committed
    i += 1
"""


def test_sigkill_mid_write_loses_no_acknowledged_write(db_url: str, tmp_path: Path) -> None:
    root = tmp_path / "sealing_root.bin"
    root.write_bytes(os.urandom(32))
    data = tmp_path / "data"
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    proc = subprocess.Popen(
        [sys.executable, str(script), db_url, str(data), str(root), str(Path(__file__).parent)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    acked: list[int] = []
    deadline = time.monotonic() + 60
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        while len(acked) < ACKS_BEFORE_KILL and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            acked.append(int(line))
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        # Lines written before the kill were acknowledged too: read what is left in the pipe.
        rest, err = proc.communicate(timeout=30)
    acked.extend(int(x) for x in rest.split())
    assert proc.returncode == -signal.SIGKILL
    assert len(acked) >= ACKS_BEFORE_KILL, err[-2000:]

    with open_store(db_url, sealer=sealer_from_root_file(root), data_dir=data) as store:
        names = {str(r.name) for r in store.list_resources()}
        for i in acked:
            assert f"load/item/n{i}" in names
            assert store.get_resource(f"load/item/n{i}").data == f"secret-{i}".encode()
            if i % 3 == 0:
                assert store.key_material(f"key-{i}")[1] == bytes([i % 256]) * 32
            session = store.get_session(f"{i:032x}")
            assert (session.state, session.token) == ("attested", f"t{i}")
        released = {e.target for e in store.audit_entries() if e.action == "release"}
        assert {f"r{i}" for i in acked} <= released
        report = verify_chain(store)
        assert report.ok, report
        # Every acknowledged write has its audit entry (one per put, key and release).
        assert report.entries >= 2 * len(acked) + len([i for i in acked if i % 3 == 0])


def test_sqlite_fsyncs_every_commit_but_kbs_session_state(tmp_path: Path) -> None:
    """synchronous=FULL for every write transaction (resources, keys, audit), NORMAL only for
    KBS sessions and nonces, set on the connection before the transaction that needs it."""
    root = tmp_path / "sealing_root.bin"
    root.write_bytes(os.urandom(32))
    url = f"sqlite:///{tmp_path / 'db' / 'nacre.db'}"
    with open_store(url, sealer=sealer_from_root_file(root), data_dir=tmp_path / "data") as store:
        store.engine.dispose()  # from here on, every new connection is traced
        # (connection, statement); the hot KBS writes run on the thread's own connection, the
        # others on pooled ones: each connection has its own synchronous level.
        statements: list[tuple[int, str]] = []

        def trace(dbapi_conn: Any, _record: Any) -> None:
            conn = id(dbapi_conn)
            dbapi_conn.set_trace_callback(lambda stmt: statements.append((conn, stmt)))

        event.listen(store.engine, "connect", trace)

        def run(label: str, fn: Any) -> None:
            statements.append((0, f"-- {label}"))
            fn()

        session = store.create_session("sgx", ttl=timedelta(minutes=5))
        run("put", lambda: store.put_resource("a/b/c", b"x", actor="t"))
        run(
            "attest",
            lambda: store.attest_session(session.id, session.nonce, tee_pubkey="{}", token="t"),
        )
        run("audit", lambda: store.record(actor="t", action="a", target="x", outcome="ok"))
        run("sweep", store.sweep_expired)

    def level_at(label: str | None) -> str:
        """The synchronous level in force on its connection when the first write after
        ``label`` began."""
        start = 0 if label is None else statements.index((0, f"-- {label}"))
        levels: dict[int, str] = {}
        for i, (conn, stmt) in enumerate(statements):
            if stmt.startswith("PRAGMA synchronous="):
                levels[conn] = stmt.split("=", 1)[1]
            if i >= start and stmt == "BEGIN IMMEDIATE":
                return levels.get(conn, "FULL")  # a new connection starts at FULL
        raise AssertionError(f"no write transaction after {label}: {statements}")

    assert level_at(None) == "NORMAL"  # create_session
    assert level_at("put") == "FULL"
    assert level_at("attest") == "NORMAL"
    assert level_at("audit") == "FULL"
    assert level_at("sweep") == "NORMAL"
    # The connection-level default is FULL, and the PRAGMA runs outside any transaction.
    pragmas = 0
    for i, (conn, stmt) in enumerate(statements):
        if stmt.startswith("PRAGMA synchronous="):
            pragmas += 1
            after = [s for c, s in statements[i + 1 :] if c == conn]
            assert after[:1] == ["BEGIN IMMEDIATE"]
    assert pragmas >= 2
