"""The hash-chained audit log: appends, concurrent writers, tampering, ``nacre audit verify``."""

from __future__ import annotations

import itertools
import json
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from nacre.cli import app
from nacre.errors import LimitExceededError, UsageError
from nacre.store import Store, open_store, verify_chain
from nacre.store.audit import GENESIS_HASH, entry_hash
from test_store_support import NOW, make_sealer


def _fill(store: Store, n: int = 5) -> None:
    for i in range(n):
        store.record(
            actor="kbs",
            action="resource.release",
            target=f"a/b/{i}",
            outcome="ok" if i % 2 else "denied",
            detail={"check": f"mrenclave-{i}", "n": i},
            now=NOW,
        )


def test_entries_chain_from_genesis(store: Store) -> None:
    _fill(store, 3)
    entries = store.audit_entries()
    assert [e.seq for e in entries] == [1, 2, 3]
    assert entries[0].prev_hash == GENESIS_HASH
    for prev, entry in itertools.pairwise(entries):
        assert entry.prev_hash == prev.hash
    e = entries[1]
    assert e.hash == entry_hash(
        seq=e.seq,
        time=e.time,
        actor=e.actor,
        action=e.action,
        target=e.target,
        outcome=e.outcome,
        detail=e.detail,
        prev_hash=e.prev_hash,
    )
    assert e.time == "2026-06-01T12:00:00.000000Z"
    report = verify_chain(store)
    assert (report.ok, report.entries, report.head_seq, report.head_hash) == (
        True,
        3,
        3,
        entries[-1].hash,
    )


def test_store_writes_are_audited_without_secrets(store: Store) -> None:
    store.put_resource("a/b/c", b"TOP-SECRET-VALUE", actor="alice")
    store.create_key("k", "AES-256", b"K" * 32, actor="bob")
    actions = [(e.actor, e.action, e.target) for e in store.audit_entries()]
    assert actions == [("alice", "resource.put", "a/b/c"), ("bob", "key.create", "k")]
    dumped = json.dumps([e.to_json() for e in store.audit_entries()])
    assert "TOP-SECRET" not in dumped
    assert "KKKK" not in dumped


@pytest.mark.parametrize(
    "detail",
    [
        {"secret": "x"},
        {"nested": {"private_key": "x"}},
        {"Password": 1},
        {"blob": b"raw"},
        {"x": object()},
    ],
)
def test_detail_that_could_carry_secrets_is_refused(
    store: Store, detail: dict[str, object]
) -> None:
    with pytest.raises(UsageError):
        store.record(actor="a", action="x", target="t", outcome="ok", detail=detail)
    assert verify_chain(store).entries == 0


def test_oversized_detail_is_refused(store: Store) -> None:
    with pytest.raises(LimitExceededError):
        store.record(actor="a", action="x", target="t", outcome="ok", detail={"x": "y" * 20000})


def test_two_writers_never_fork_the_chain(db_url: str, tmp_path: Path) -> None:
    with open_store(db_url) as one, open_store(db_url) as two:
        barrier = threading.Barrier(2)
        errors: list[BaseException] = []

        def write(s: Store, name: str) -> None:
            barrier.wait()
            try:
                for i in range(25):
                    s.record(actor=name, action="tick", target=str(i), outcome="ok")
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(s, n)) for s, n in ((one, "a"), (two, "b"))]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
        assert errors == []
        report = verify_chain(one)
        assert (report.ok, report.entries) == (True, 50)


@pytest.mark.parametrize(
    ("sql", "field"),
    [
        ('UPDATE audit SET detail = \'{"check":"forged","n":2}\' WHERE seq = 3', "hash"),
        ("UPDATE audit SET outcome = 'ok' WHERE seq = 3", "hash"),
        ("UPDATE audit SET prev_hash = '" + "1" * 64 + "' WHERE seq = 3", "prev_hash"),
        ("DELETE FROM audit WHERE seq = 3", "seq"),
    ],
)
def test_tampered_row_is_the_first_broken_link(store: Store, sql: str, field: str) -> None:
    _fill(store, 5)
    before = store.audit_entries()
    with store.engine.begin() as conn:
        conn.exec_driver_sql(sql)
    report = verify_chain(store)
    assert not report.ok
    assert (report.broken_seq, report.field, report.entries) == (3, field, 2)
    if field == "hash":
        assert report.actual == before[2].hash
        assert report.expected != before[2].hash
    if field == "prev_hash":
        assert (report.expected, report.actual) == (before[1].hash, "1" * 64)


def test_truncated_tail_is_detected(store: Store) -> None:
    _fill(store, 4)
    with store.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM audit WHERE seq = 4"))
    report = verify_chain(store)
    assert (report.ok, report.field, report.broken_seq) == (False, "head", 4)


def test_rehashed_forgery_still_breaks_the_next_link(store: Store) -> None:
    _fill(store, 4)
    e = store.audit_entries()[1]
    forged_detail = {"check": "forged", "n": 1}
    forged = entry_hash(
        seq=e.seq,
        time=e.time,
        actor=e.actor,
        action=e.action,
        target=e.target,
        outcome=e.outcome,
        detail=forged_detail,
        prev_hash=e.prev_hash,
    )
    with store.engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE audit SET detail = :d, hash = :h WHERE seq = 2"),
            {"d": json.dumps(forged_detail), "h": forged},
        )
    report = verify_chain(store)
    assert (report.broken_seq, report.field, report.expected) == (3, "prev_hash", forged)


# -- the CLI -----------------------------------------------------------------------------------


def test_cli_audit_verify(db_url: str, tmp_path: Path) -> None:
    with open_store(db_url) as store:
        _fill(store, 3)
    runner = CliRunner()
    ok = runner.invoke(app, ["audit", "verify", "--database", db_url, "--json"])
    assert ok.exit_code == 0, ok.output
    doc = json.loads(ok.output)
    assert (doc["ok"], doc["entries"], doc["broken"]) == (True, 3, None)
    text = runner.invoke(app, ["audit", "verify", "--database", db_url])
    assert text.exit_code == 0
    assert "OK" in text.output
    with open_store(db_url) as store, store.engine.begin() as conn:
        conn.execute(sa.text("UPDATE audit SET actor = 'mallory' WHERE seq = 2"))
    bad = runner.invoke(app, ["audit", "verify", "--database", db_url, "--json"])
    assert bad.exit_code == 1
    broken = json.loads(bad.output)["broken"]
    assert (broken["seq"], broken["field"]) == (2, "hash")
    human = runner.invoke(app, ["audit", "verify", "--database", db_url])
    assert human.exit_code == 1
    assert "BROKEN at entry 2" in human.output


def test_cli_audit_verify_data_dir_and_usage(tmp_path: Path) -> None:
    runner = CliRunner()
    data = tmp_path / "data"
    with open_store(f"sqlite:///{data / 'nacre.db'}", sealer=make_sealer(tmp_path / "tee")) as s:
        s.put_resource("a/b/c", b"x", actor="admin")
    ok = runner.invoke(app, ["audit", "verify", "--data-dir", str(data)])
    assert ok.exit_code == 0, ok.output
    missing = runner.invoke(
        app, ["audit", "verify", "--data-dir", str(tmp_path / "none"), "--json"]
    )
    assert missing.exit_code == 2
    assert json.loads(missing.output)["error"]["field"] == "database"
    assert not (tmp_path / "none").exists()
    both = runner.invoke(
        app, ["audit", "verify", "--data-dir", str(data), "--database", "sqlite:///x.db"]
    )
    assert both.exit_code == 2
    assert runner.invoke(app, ["audit", "verify", "--database", "mysql://h/d"]).exit_code == 2
    assert runner.invoke(app, ["audit", "verify", "--bogus"]).exit_code == 2


def test_cli_audit_verify_refuses_a_database_that_is_not_nacre(db_url: str, tmp_path: Path) -> None:
    if db_url.startswith("sqlite"):
        path = Path(db_url.removeprefix("sqlite:///"))
        path.parent.mkdir(parents=True)
        sa.create_engine(db_url).dispose()
        with sa.create_engine(db_url).begin() as conn:
            conn.execute(sa.text("CREATE TABLE other (x INTEGER)"))
    result = CliRunner().invoke(app, ["audit", "verify", "--database", db_url, "--json"])
    assert result.exit_code == 2, result.output
    assert json.loads(result.output)["error"]["field"] == "schema revision"
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            assert "audit" not in sa.inspect(conn).get_table_names()
    finally:
        engine.dispose()
