"""Awaiting the durability of deferred commits from an event loop, one thread hop per fsync.

The KBS lane's handlers run on the event loop and commit their audit entries without waiting
for the disk (``Store.record(durable=False)``); an answer that depends on such an entry leaves
only once ``Store.sync_deferred`` (an fsync, on a worker thread) ran after the commit. Handing
every request to a thread for that cost as much CPU as the rest of its handling, so requests on
one loop share: if no sync is running, a request starts one; if one is running, it may have
begun before the request's commit, so the request waits for the next, which starts as soon as
the running one ends and covers everyone who queued for it.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

__all__ = ["DeferredSync"]


@dataclass
class _LoopState:
    #: The sync running now (it may have begun before the latest commit).
    running: asyncio.Future[None] | None = None
    #: Waiters for the sync that starts when ``running`` ends.
    next_one: asyncio.Future[None] | None = None


class DeferredSync:
    """``await wait()`` returns once a ``sync()`` that began after the call has finished."""

    def __init__(self, sync: Callable[[], None], executor: Executor) -> None:
        self._sync = sync
        self._executor = executor
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = (
            weakref.WeakKeyDictionary()
        )
        #: Syncs started so far (tests read it).
        self.started = 0

    async def wait(self) -> None:
        loop = asyncio.get_running_loop()
        state = self._loops.get(loop)
        if state is None:
            state = self._loops[loop] = _LoopState()
        if state.running is None:
            state.running = self._start(loop, state)
            future = state.running
        else:
            if state.next_one is None:
                state.next_one = loop.create_future()
            future = state.next_one
        # Shielded: a waiter that is cancelled (its client went away) must not cancel the sync
        # the others share.
        await asyncio.shield(future)

    def _start(self, loop: asyncio.AbstractEventLoop, state: _LoopState) -> asyncio.Future[None]:
        self.started += 1
        future = loop.run_in_executor(self._executor, self._sync)
        future.add_done_callback(lambda done: self._finished(loop, state, done))
        return future

    def _finished(
        self, loop: asyncio.AbstractEventLoop, state: _LoopState, done: asyncio.Future[None]
    ) -> None:
        state.running = None
        waiters = state.next_one
        if waiters is None:
            return
        state.next_one = None
        try:
            state.running = self._start(loop, state)
        except Exception as exc:  # e.g. the executor was shut down: the waiters must not hang
            if not waiters.done():
                waiters.set_exception(exc)
            return
        state.running.add_done_callback(lambda ended: _settle(waiters, ended))


def _settle(waiters: asyncio.Future[None], ended: asyncio.Future[None]) -> None:
    if waiters.done():
        return
    if ended.cancelled():
        waiters.cancel()
    elif (error := ended.exception()) is not None:
        waiters.set_exception(error)
    else:
        waiters.set_result(None)
