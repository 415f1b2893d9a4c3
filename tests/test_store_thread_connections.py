"""SQLite hot statements run on a connection each thread keeps: reused, never shared within a
transaction, handed back clean, closed with its thread and with the store."""

from __future__ import annotations

import gc
import sqlite3
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine

from nacre.store import open_store
from nacre.store.thread_connections import ThreadConnections


def _engine(tmp_path: Path) -> Any:
    return create_engine(
        f"sqlite:///{tmp_path / 'x.db'}", connect_args={"check_same_thread": False}
    )


def _is_closed(driver: Any) -> bool:
    try:
        driver.execute("SELECT 1")
    except sqlite3.ProgrammingError:
        return True
    return False


def test_a_thread_reuses_its_connection_and_an_inner_use_gets_another(tmp_path: Path) -> None:
    conns = ThreadConnections(_engine(tmp_path))
    with conns.connection() as (first, _):
        pass
    with conns.connection() as (again, info):
        assert again is first
        info["mark"] = 1
        with conns.connection() as (inner, _):  # the outer one is busy
            assert inner is not first
    with conns.connection() as (third, info):
        assert third is first
        assert info["mark"] == 1
    conns.close()
    assert _is_closed(first)


def test_a_connection_goes_back_with_no_transaction_open(tmp_path: Path) -> None:
    conns = ThreadConnections(_engine(tmp_path))
    with conns.connection() as (driver, _):
        driver.isolation_level = None
        driver.execute("CREATE TABLE t (x)")

    def fail_mid_transaction() -> None:
        with conns.connection() as (driver, _):
            driver.execute("BEGIN IMMEDIATE")
            driver.execute("INSERT INTO t VALUES (1)")
            raise RuntimeError("the caller failed mid-transaction")

    with pytest.raises(RuntimeError):
        fail_mid_transaction()
    with conns.connection() as (driver, _):
        assert not driver.in_transaction
        assert driver.execute("SELECT count(*) FROM t").fetchone() == (0,)
    conns.close()


def test_threads_have_their_own_closed_when_the_thread_ends(tmp_path: Path) -> None:
    conns = ThreadConnections(_engine(tmp_path))
    seen: list[Any] = []

    def work() -> None:
        with conns.connection() as (driver, _):
            seen.append(driver)

    with conns.connection() as (mine, _):
        pass
    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    del thread
    gc.collect()
    assert seen[0] is not mine
    assert _is_closed(seen[0])
    assert not _is_closed(mine)
    conns.close()
    assert _is_closed(mine)
    with conns.connection() as (after, _):  # a closed set hands out pooled connections
        assert after is not mine
        assert after.execute("SELECT 1").fetchone() == (1,)


def test_store_writes_and_reads_across_threads(tmp_path: Path) -> None:
    with open_store(f"sqlite:///{tmp_path / 'n.db'}", data_dir=tmp_path) as store:
        made: list[Any] = []
        thread = threading.Thread(
            target=lambda: made.append(store.create_session("sgx", ttl=timedelta(minutes=5)))
        )
        thread.start()
        thread.join()
        session, _ = store.kbs_session(made[0].id)  # another thread, another connection
        assert session.nonce == made[0].nonce
        store.attest_session(session.id, session.nonce, tee_pubkey="{}", token="t")
        assert store.get_session(session.id).state == "attested"
