"""One SQLite writer at a time, across the threads and the processes sharing a database file.

SQLite itself admits one writer; left to it, a writer that finds the lock taken polls in its
busy handler, sleeping up to 100 ms between tries, so under concurrent load a write starts long
after the lock is free (and worker processes of one ``nacre serve --workers N`` would spend
their time asleep). Writers queue here instead and start the moment the previous one commits:
threads of one process on a lock, processes on an ``flock`` of a file beside the database, which
the kernel hands to the next waiter at once and releases by itself if its holder dies.

The ``flock`` belongs to an open file description, which ``fork`` shares, and a forked child
inherits the thread lock in whatever state its parent's threads left it: after a fork the child
gets a fresh thread lock and reopens the file, so it takes turns with its parent like any other
process.
"""

from __future__ import annotations

import fcntl
import os
import threading
import weakref
from pathlib import Path
from types import TracebackType

__all__ = ["SqliteWriterLock", "writer_lock_path"]


def writer_lock_path(database: Path) -> Path:
    return database.with_name(database.name + ".writer-lock")


class SqliteWriterLock:
    """A context manager held around every write transaction on one SQLite file."""

    def __init__(self, database: Path) -> None:
        self._path = writer_lock_path(database)
        self._threads = threading.Lock()
        self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        me = weakref.ref(self)

        def after_fork() -> None:  # in the child, with only the forking thread alive
            lock = me()
            if lock is not None and lock._fd >= 0:
                lock._threads = threading.Lock()
                # The parent's description stays the parent's (were it to die holding the lock,
                # a copy here would keep the lock held).
                os.close(lock._fd)
                lock._fd = os.open(lock._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

        os.register_at_fork(after_in_child=after_fork)

    def __enter__(self) -> SqliteWriterLock:
        self._threads.acquire()
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._threads.release()
            raise
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()

    def close(self) -> None:
        with self._threads:
            if self._fd >= 0:
                os.close(self._fd)
            self._fd = -1
