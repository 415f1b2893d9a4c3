"""Spreading connections evenly over the worker processes of ``nacre serve --workers N``.

The workers share one listening socket. Left to the kernel and asyncio, whichever worker wakes
first accepts every connection queued at that moment (asyncio accepts up to the backlog in one
go): 64 keep-alive clients connecting at once were split 50/14 or 42/22 between two workers.
The busier worker then answers its clients about twice as slowly while the other has requests
to spare, and the tail latency is the busier one's.

Each worker here accepts on its own terms (:class:`FairAcceptor`, on the event loop, in place
of asyncio's server) and publishes how many connections it holds in a small shared file
(:class:`ConnectionShare`, one slot per worker, memory-mapped). A worker holding more than the
least loaded live worker leaves queued connections to it, for :data:`DEFER_SECONDS` at most:
then it accepts one itself, so a worker that is stopped, stuck or slow to wake delays a new
connection by that much and never refuses it. A slot not refreshed for :data:`STALE_SECONDS`
(its worker died, or is stopped) is left out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mmap
import os
import socket
import ssl
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from nacre.errors import UsageError
from nacre.server.json_logs import log_event

__all__ = ["DEFER_SECONDS", "STALE_SECONDS", "ConnectionShare", "FairAcceptor", "create_share"]

#: How long a worker over its share leaves a queued connection to the others.
DEFER_SECONDS: Final = 0.002
#: A worker whose slot is older than this is not counted (dead, stopped or stuck).
STALE_SECONDS: Final = 1.0
#: Connections accepted at most per wakeup (asyncio's server takes up to the backlog).
BURST: Final = 16
#: Pause after accept failed (e.g. out of file descriptors), as asyncio's server does.
PAUSE_SECONDS: Final = 1.0
_SLOT: Final = struct.Struct("=qd")  # connections held, monotonic time of the update


def create_share(path: Path, workers: int) -> None:
    """The parent's step: a zeroed share file with one slot per worker (mode 0600)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, bytes(_SLOT.size * workers))
    finally:
        os.close(fd)


class ConnectionShare:
    """The workers' connection counts, one slot each, in a memory-mapped file."""

    def __init__(self, path: Path, index: int) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.workers = size // _SLOT.size
        if not 0 <= index < self.workers:
            self._map.close()
            raise UsageError(
                "this worker has no slot in the connection share",
                field="worker index",
                expected=f"0 to {self.workers - 1}",
                actual=index,
            )
        self.index = index

    def publish(self, connections: int, now: float) -> None:
        _SLOT.pack_into(self._map, self.index * _SLOT.size, connections, now)

    def least_of_others(self, now: float) -> int | None:
        """The fewest connections a live other worker holds (None: no live other worker)."""
        least: int | None = None
        for i in range(self.workers):
            if i == self.index:
                continue
            count, at = _SLOT.unpack_from(self._map, i * _SLOT.size)
            if now - at <= STALE_SECONDS and (least is None or count < least):
                least = count
        return least

    def close(self) -> None:
        self._map.close()


class FairAcceptor:
    """Accepts on ``listener`` for this worker's event loop and hands each connection to
    ``protocol_factory`` (TLS first when ``ssl_context``), deferring to less loaded workers."""

    def __init__(
        self,
        listener: socket.socket,
        protocol_factory: Callable[[], asyncio.Protocol],
        *,
        held: Callable[[], int],
        share: ConnectionShare | None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._listener = listener
        self._factory = protocol_factory
        self._held = held
        self._share = share
        self._ssl = ssl_context
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reading = False
        self._stopped = False
        self._resume: asyncio.TimerHandle | None = None
        #: Accepted connections whose transport is not made yet (TLS handshakes).
        self._starting = 0
        #: Connections accepted, and times this worker deferred to another (tests read them).
        self.accepted = 0
        self.deferred = 0

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._listener.setblocking(False)
        self._read()

    def stop(self) -> None:
        """Accept no more (connections already accepted go on)."""
        self._stopped = True
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        self._unread()

    def publish(self) -> None:
        """Tell the other workers how many connections this one holds now."""
        if self._share is not None:
            self._share.publish(self._held() + self._starting, time.monotonic())

    def _read(self) -> None:
        if not self._reading and not self._stopped and self._loop is not None:
            self._loop.add_reader(self._listener.fileno(), self._on_readable)
            self._reading = True

    def _unread(self) -> None:
        if self._reading and self._loop is not None:
            self._loop.remove_reader(self._listener.fileno())
            self._reading = False

    def _over_share(self) -> bool:
        if self._share is None:
            return False
        now = time.monotonic()
        mine = self._held() + self._starting
        self._share.publish(mine, now)
        least = self._share.least_of_others(now)
        return least is not None and mine > least

    def _on_readable(self) -> None:
        for _ in range(BURST):
            if self._over_share():
                self._defer()
                return
            if not self._accept_one():
                return

    def _defer(self) -> None:
        """Leave the queue to the others for a moment, then take one connection regardless."""
        assert self._loop is not None
        self.deferred += 1
        self._unread()
        self._resume = self._loop.call_later(DEFER_SECONDS, self._resume_after_defer)

    def _resume_after_defer(self) -> None:
        self._resume = None
        if self._stopped:
            return
        self._accept_one()
        self._read()

    def _accept_one(self) -> bool:
        """Accept one queued connection; False when there is none (or accepting must pause)."""
        assert self._loop is not None
        try:
            conn, _addr = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return False
        except ConnectionAbortedError:
            return True  # that one went away while queued: try the next
        except OSError as exc:
            # Out of descriptors or memory (or anything else accept refuses): pause rather than
            # spin on a listener that stays readable, as asyncio's server does.
            log_event("http.accept.paused", logging.ERROR, error=str(exc), errno=exc.errno)
            self._unread()
            self._resume = self._loop.call_later(PAUSE_SECONDS, self._read)
            return False
        conn.setblocking(False)
        self.accepted += 1
        self._starting += 1
        task = self._loop.create_task(
            self._loop.connect_accepted_socket(self._factory, conn, ssl=self._ssl)
        )
        task.add_done_callback(lambda done: self._started(done, conn))
        self.publish()
        return True

    def _started(self, done: asyncio.Task[object], conn: socket.socket) -> None:
        self._starting -= 1
        if done.cancelled():
            conn.close()
            return
        error = done.exception()
        if error is not None:  # e.g. a failed TLS handshake: that client's problem
            with contextlib.suppress(OSError):
                conn.close()
            log_event("http.connection.failed", logging.DEBUG, error=type(error).__name__)
