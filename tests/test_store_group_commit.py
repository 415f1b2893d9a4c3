"""Group commit: concurrent audit appends share transactions; nobody returns before theirs
committed; a failed batch fails every caller in it and nothing else."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from nacre.errors import UsageError
from nacre.store import Store, verify_chain
from nacre.store.errors import StoreError
from nacre.store.group_commit import GroupCommit

THREADS = 16


def test_concurrent_submits_share_batches_and_get_their_own_results() -> None:
    committed: list[int] = []
    active = threading.Lock()

    def write(items: Sequence[int]) -> list[int]:
        assert active.acquire(blocking=False), "two batches were written at once"
        try:
            time.sleep(0.005)  # a commit's fsync
            committed.extend(items)
            return [i * 10 for i in items]
        finally:
            active.release()

    group: GroupCommit[int, int] = GroupCommit(write)
    start = threading.Barrier(THREADS)

    def call(i: int) -> tuple[int, bool]:
        start.wait()
        result = group.submit(i)
        return result, i in committed  # committed before submit returned

    with ThreadPoolExecutor(THREADS) as pool:
        outcomes = list(pool.map(call, range(THREADS * 4)))
    assert [r for r, _ in outcomes] == [i * 10 for i in range(THREADS * 4)]
    assert all(seen for _, seen in outcomes)
    assert sorted(committed) == list(range(THREADS * 4))
    assert group.batches < THREADS * 4  # commits were shared


def test_a_failed_batch_fails_each_of_its_callers_and_only_them() -> None:
    fail = threading.Event()
    fail.set()
    entered = threading.Event()
    release = threading.Event()

    def write(items: Sequence[str]) -> list[str]:
        if "first" in items:
            entered.set()
            release.wait(5)
        if fail.is_set() and "boom" in items:
            raise RuntimeError("disk full")
        return [f"ok:{i}" for i in items]

    group: GroupCommit[str, str] = GroupCommit(write)
    results: dict[str, object] = {}

    def call(item: str) -> None:
        try:
            results[item] = group.submit(item)
        except Exception as exc:
            results[item] = exc

    first = threading.Thread(target=call, args=("first",))
    first.start()
    assert entered.wait(5)
    # While the first batch is being written, three callers queue: they form the next batch.
    followers = [threading.Thread(target=call, args=(x,)) for x in ("boom", "b", "c")]
    for th in followers:
        th.start()
    deadline = time.monotonic() + 5
    while len(group._queue) < 3 and time.monotonic() < deadline:
        time.sleep(0.001)
    release.set()
    for th in [first, *followers]:
        th.join(5)
    assert results["first"] == "ok:first"
    errors = [results[x] for x in ("boom", "b", "c")]
    assert all(isinstance(e, Exception) for e in errors), errors
    # The leader of the failed batch gets the cause itself, the others a StoreError naming it.
    assert sum(isinstance(e, RuntimeError) for e in errors) == 1
    others = [e for e in errors if isinstance(e, StoreError)]
    assert len(others) == 2
    assert all("disk full" in str(e) and isinstance(e.__cause__, RuntimeError) for e in others)
    fail.clear()
    assert group.submit("after") == "ok:after"  # the group goes on


def test_a_wrong_result_count_is_an_error() -> None:
    group: GroupCommit[int, int] = GroupCommit(lambda items: [])
    with pytest.raises(StoreError, match="different number"):
        group.submit(1)


def test_max_batch_bounds_a_transaction() -> None:
    sizes: list[int] = []
    gate = threading.Event()

    def write(items: Sequence[int]) -> list[int]:
        gate.wait(5)
        sizes.append(len(items))
        return list(items)

    group: GroupCommit[int, int] = GroupCommit(write, max_batch=3)
    with ThreadPoolExecutor(10) as pool:
        futures = [pool.submit(group.submit, i) for i in range(10)]
        time.sleep(0.05)
        gate.set()
        assert sorted(f.result(5) for f in futures) == list(range(10))
    assert max(sizes) <= 3
    assert sum(sizes) == 10


def test_concurrent_records_chain_and_verify(store: Store) -> None:
    start = threading.Barrier(THREADS)

    def call(i: int) -> int:
        start.wait()
        return store.record(
            actor=f"t{i}", action="resource.release", target="a/b/c", outcome="released"
        ).seq

    with ThreadPoolExecutor(THREADS) as pool:
        seqs = list(pool.map(call, range(THREADS * 3)))
    assert len(set(seqs)) == len(seqs)  # every caller got its own entry
    entries = {e.seq: e for e in store.audit_entries()}
    for i, seq in enumerate(seqs):
        assert entries[seq].actor == f"t{i}"
    report = verify_chain(store)
    assert report.ok, report
    assert store._audit_batches.batches < len(seqs)


def test_a_bad_detail_fails_its_caller_alone(store: Store) -> None:
    before = len(store.audit_entries())
    with pytest.raises(UsageError, match="secret"):
        store.record(actor="t", action="a", target="x", outcome="ok", detail={"secret": "s"})
    store.record(actor="t", action="a", target="x", outcome="ok")
    assert len(store.audit_entries()) == before + 1


def test_deferred_records_are_committed_then_synced_outside_the_lock(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)
        time.sleep(0.003)  # a disk's flush, whatever the test machine's file system

    monkeypatch.setattr(os, "fsync", fsync)
    mark = store.deferred_mark()
    entry = store.record(actor="t", action="a", target="x", outcome="ok", durable=False)
    assert store.audit_entries()[-1] == entry  # committed: visible at once
    if store.engine.dialect.name != "sqlite":  # PostgreSQL: every commit is durable
        assert store.deferred_mark() == mark
        store.sync_deferred()
        assert synced == []
        return
    assert store.deferred_mark() == mark + 1
    assert synced == []  # not yet on disk
    store.sync_deferred()
    assert len(synced) == 1
    assert synced[0].endswith("nacre.db-wal")
    assert verify_chain(store).ok

    # Concurrent syncs share fsyncs, and each returns only after one that began after its call.
    synced.clear()
    start = threading.Barrier(THREADS)

    def call(_i: int) -> None:
        start.wait()
        store.record(actor="t", action="a", target="x", outcome="ok", durable=False)
        store.sync_deferred()

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(call, range(THREADS)))
    assert 1 <= len(synced) < THREADS
    assert verify_chain(store).ok
