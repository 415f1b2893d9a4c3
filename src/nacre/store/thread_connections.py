"""One SQLite driver connection per thread for the store's hot statements, kept between calls.

A KBS handshake runs five short statements or transactions on the store, each on a connection
checked out of SQLAlchemy's pool and checked back in (with the pool's reset on return): that
bookkeeping cost about as much CPU as a primary-key lookup. Here each thread keeps the driver
connection it was given the first time (taken from the engine, so set up by the same connect
hook: WAL, foreign keys, busy timeout) and reuses it.

- Busy: a thread whose connection is in use (an outer statement or transaction on the same
  thread) is given a pooled connection for the inner one, as before, never its own connection
  in the middle of its transaction.
- Clean: a connection goes back with no transaction open (anything left open is rolled back).
- Closed: when its thread ends (its thread-local slot goes, and with it the connection) or when
  the store closes (every connection still open).
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy.engine import Engine

__all__ = ["ThreadConnections"]


class _Held:
    """A thread's driver connection and what the store records about it (``info``)."""

    __slots__ = ("__weakref__", "busy", "driver", "info")

    def __init__(self, driver: Any, info: dict[Any, Any]) -> None:
        self.driver = driver
        self.info = info
        self.busy = False


def _close_quietly(driver: Any) -> None:
    with contextlib.suppress(Exception):  # closing: nothing is left to do with an error
        driver.close()


def _rollback_open(driver: Any) -> None:
    if driver.in_transaction:
        driver.execute("ROLLBACK")


class ThreadConnections:
    """``with connections.connection() as (driver, info)``: this thread's SQLite connection."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._local = threading.local()
        self._lock = threading.Lock()
        self._live: weakref.WeakSet[_Held] = weakref.WeakSet()
        self._closed = False

    @contextmanager
    def connection(self) -> Iterator[tuple[Any, dict[Any, Any]]]:
        held: _Held | None = getattr(self._local, "held", None)
        if held is None and not self._closed:
            held = self._open()
        if held is None or held.busy or self._closed:
            yield from self._pooled()
            return
        held.busy = True
        try:
            yield held.driver, held.info
        finally:
            try:
                _rollback_open(held.driver)
            finally:
                held.busy = False

    def _pooled(self) -> Iterator[tuple[Any, dict[Any, Any]]]:
        pooled = self._engine.raw_connection()
        try:
            driver = pooled.dbapi_connection
            assert driver is not None
            yield driver, pooled.info
        finally:
            pooled.close()  # back to the pool, which rolls back whatever is left open

    def _open(self) -> _Held | None:
        pooled = self._engine.raw_connection()
        info = dict(pooled.info)
        driver = pooled.dbapi_connection
        assert driver is not None
        pooled.detach()  # ours from now on: the pool neither counts nor closes it
        held = _Held(driver, info)
        # Closed with its thread: the slot is dropped when the thread ends.
        weakref.finalize(held, _close_quietly, driver)
        with self._lock:
            if self._closed:
                _close_quietly(driver)
                return None
            self._live.add(held)
        self._local.held = held
        return held

    def close(self) -> None:
        """Close every thread's connection (no statement may be running on them)."""
        with self._lock:
            self._closed = True
            held = list(self._live)
            self._live.clear()
        for h in held:
            _close_quietly(h.driver)
