"""DeferredSync: waiters on one loop share fsyncs; each returns only after a sync that began
after it asked; failures reach every waiter of that sync; a cancelled waiter cancels nothing."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from nacre.server.deferred_sync import DeferredSync


class FakeDisk:
    def __init__(self, seconds: float = 0.005) -> None:
        self.seconds = seconds
        self.lock = threading.Lock()
        self.commits = 0  # what the loop has "committed" so far
        self.synced_upto: list[int] = []  # per sync: the commits it covered (read at its start)
        self.fail = False

    def sync(self) -> None:
        with self.lock:
            covered = self.commits
        time.sleep(self.seconds)
        if self.fail:
            raise OSError("fsync: I/O error")
        self.synced_upto.append(covered)


def test_waiters_share_syncs_and_are_covered() -> None:
    disk = FakeDisk()

    async def main() -> None:
        with ThreadPoolExecutor(2) as pool:
            ds = DeferredSync(disk.sync, pool)

            async def request(i: int) -> None:
                await asyncio.sleep(0.0005 * (i % 7))
                with disk.lock:
                    disk.commits += 1
                    mine = disk.commits
                await ds.wait()
                assert disk.synced_upto
                assert max(disk.synced_upto) >= mine

            await asyncio.gather(*(request(i) for i in range(200)))
            assert ds.started < 100  # far fewer syncs than requests

    asyncio.run(main())


def test_a_failed_sync_fails_its_waiters_and_the_next_one_runs() -> None:
    disk = FakeDisk()

    async def main() -> None:
        with ThreadPoolExecutor(2) as pool:
            ds = DeferredSync(disk.sync, pool)
            disk.fail = True
            results = await asyncio.gather(*(ds.wait() for _ in range(5)), return_exceptions=True)
            assert all(isinstance(r, OSError) for r in results), results
            disk.fail = False
            await ds.wait()  # recovers

    asyncio.run(main())


def test_a_cancelled_waiter_does_not_cancel_the_shared_sync() -> None:
    disk = FakeDisk(seconds=0.05)

    async def main() -> None:
        with ThreadPoolExecutor(2) as pool:
            ds = DeferredSync(disk.sync, pool)
            first = asyncio.ensure_future(ds.wait())
            second = asyncio.ensure_future(ds.wait())  # queued for the next sync
            third = asyncio.ensure_future(ds.wait())
            await asyncio.sleep(0.01)
            first.cancel()
            second.cancel()
            await third
            with pytest.raises(asyncio.CancelledError):
                await first
            assert len(disk.synced_upto) == 2  # both syncs ran to the end

    asyncio.run(main())


def test_waiters_are_failed_not_left_hanging_when_no_sync_can_start() -> None:
    disk = FakeDisk(seconds=0.05)

    async def main() -> None:
        pool = ThreadPoolExecutor(1)
        ds = DeferredSync(disk.sync, pool)
        first = asyncio.ensure_future(ds.wait())
        await asyncio.sleep(0.01)  # the first sync is running
        queued = asyncio.ensure_future(ds.wait())  # waits for the next one
        await asyncio.sleep(0)
        pool.shutdown(wait=False)  # the next sync cannot be scheduled
        await first
        with pytest.raises(RuntimeError):
            await asyncio.wait_for(queued, timeout=5)

    asyncio.run(main())
