"""Cache of collateral-side verification results (chains, CRLs, signed TCB info / QE identity).

Keyed by content (the bytes, or their SHA-256), bounded (LRU), thread-safe. Every entry carries
the validity windows it depends on; a hit is served only when ``now`` lies inside all of them,
otherwise the work is redone (and fails with the precise error). Evidence signatures are never cached: real evidence never repeats.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from datetime import datetime
from typing import Any, NamedTuple, TypeVar

from nacre.limits import VERIFY_CACHE_ENTRIES

__all__ = ["VerifyCache", "Window", "default_cache"]

T = TypeVar("T")


class Window(NamedTuple):
    """A validity window (a NamedTuple: a cold verification builds about ten)."""

    not_before: datetime
    not_after: datetime

    def contains(self, now: datetime) -> bool:
        return self.not_before <= now <= self.not_after


class VerifyCache:
    def __init__(self, max_entries: int = VERIFY_CACHE_ENTRIES) -> None:
        self._max = max_entries
        self._lock = threading.Lock()
        # key -> (value, not_before, not_after): the intersection of the entry's windows.
        self._entries: OrderedDict[Hashable, tuple[Any, datetime, datetime]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get_or_compute(
        self, key: Hashable, now: datetime, compute: Callable[[], tuple[T, tuple[Window, ...]]]
    ) -> T:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[1] <= now <= entry[2]:
                self._entries.move_to_end(key)
                self.hits += 1
                return entry[0]  # type: ignore[no-any-return]
        self.misses += 1
        value, windows = compute()
        if not windows:
            raise ValueError("a cached verification result must name the windows it depends on")
        not_before, not_after = windows[0].not_before, windows[0].not_after
        for w in windows:
            if w.not_before > not_before:
                not_before = w.not_before
            if w.not_after < not_after:
                not_after = w.not_after
        with self._lock:
            self._entries[key] = (value, not_before, not_after)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
        return value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


_DEFAULT = VerifyCache()


def default_cache() -> VerifyCache:
    return _DEFAULT
