"""Group commit: concurrent callers' small writes share one transaction and one commit.

A durable commit costs an fsync (milliseconds on real disks), and a store has one writer at a
time (SQLite's lock, the audit chain's head row on PostgreSQL). Committing every audit entry on
its own therefore caps a server at about one fsync's worth of releases, however many cores it
has. Here a caller that finds no batch being written becomes the leader: it takes every item
queued so far (its own included), writes them in one transaction and wakes their callers; the
others wait, and the first of them still waiting after that leads the next batch. Nobody returns
before the transaction holding their item has committed, so durability is unchanged; only the
number of commits shrinks with the load.

A batch fails or succeeds as a whole (one transaction): every caller in a failed batch gets an
error naming the cause. Items are validated by the caller before they are queued, so one bad
item never fails another's batch.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

from nacre.store.errors import StoreError

__all__ = ["MAX_BATCH", "GroupCommit"]

_In = TypeVar("_In")
_Out = TypeVar("_Out")

#: Items one transaction takes at most (bounds a batch's lock hold time and memory).
MAX_BATCH: Final = 256


@dataclass(eq=False)  # compared by identity
class _Slot(Generic[_In, _Out]):
    item: _In
    done: bool = False
    result: _Out | None = None
    error: BaseException | None = None


class GroupCommit(Generic[_In, _Out]):
    """``submit(item)`` returns what ``write_batch`` made of ``item`` once its batch committed.

    ``write_batch(items)`` must write all the items in one transaction, commit it, and return one
    result per item, in order; it runs on the leading caller's thread, never two at once.
    """

    def __init__(
        self, write_batch: Callable[[Sequence[_In]], Sequence[_Out]], *, max_batch: int = MAX_BATCH
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._write_batch = write_batch
        self._max_batch = max_batch
        self._cond = threading.Condition(threading.Lock())
        self._queue: list[_Slot[_In, _Out]] = []
        self._leading = False
        #: Transactions written so far (tests read it).
        self.batches = 0

    def submit(self, item: _In) -> _Out:
        slot: _Slot[_In, _Out] = _Slot(item)
        with self._cond:
            self._queue.append(slot)
        while True:
            with self._cond:
                while not slot.done and self._leading:
                    self._cond.wait()
                if slot.done:
                    return self._outcome(slot, own_batch=False)
                # No batch is being written and ours is not written yet: lead the next one.
                self._leading = True
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
            self._lead(batch)
            if slot.done:
                return self._outcome(slot, own_batch=True)

    def _lead(self, batch: list[_Slot[_In, _Out]]) -> None:
        results: Sequence[_Out] = ()
        error: BaseException | None = None
        try:
            results = self._write_batch([s.item for s in batch])
            if len(results) != len(batch):
                raise StoreError(
                    "a group commit wrote a different number of items than it was given",
                    field="batch",
                    expected=str(len(batch)),
                    actual=str(len(results)),
                )
        except BaseException as exc:
            error = exc
        with self._cond:
            self.batches += 1
            for i, s in enumerate(batch):
                s.done = True
                if error is None:
                    s.result = results[i]
                else:
                    s.error = error
            self._leading = False
            self._cond.notify_all()

    @staticmethod
    def _outcome(slot: _Slot[_In, _Out], *, own_batch: bool) -> _Out:
        if slot.error is not None:
            if own_batch:
                raise slot.error
            # One exception object must not be raised in several threads at once (they would
            # share its traceback): the others get their own, chained to the cause.
            raise StoreError(
                "the transaction holding this write failed; nothing of it was stored",
                field="batch",
                expected="a committed batch",
                actual=f"{type(slot.error).__name__}: {slot.error}",
            ) from slot.error
        return slot.result  # type: ignore[return-value]
