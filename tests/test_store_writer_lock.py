"""The SQLite writer lock: threads and processes (forked ones included) take turns, and a
waiter starts as soon as the holder lets go."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from nacre.store.writer_lock import SqliteWriterLock, writer_lock_path

HOLD = 0.3

CHILD = r"""
import sys, time
from pathlib import Path
from nacre.store.writer_lock import SqliteWriterLock
lock = SqliteWriterLock(Path(sys.argv[1]))
print("ready", flush=True)
with lock:
    print(time.time(), flush=True)
"""


def test_another_process_waits_for_the_holder(tmp_path: Path) -> None:
    db = tmp_path / "nacre.db"
    lock = SqliteWriterLock(db)
    assert writer_lock_path(db).exists()
    assert writer_lock_path(db).stat().st_mode & 0o777 == 0o600
    with lock:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(db)], stdout=subprocess.PIPE, text=True
        )
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        time.sleep(HOLD)
        released = time.time()
    acquired = float(child.stdout.readline())
    assert child.wait(10) == 0
    assert acquired >= released
    assert acquired - released < 1.0  # woken at once, not after a polling sleep
    lock.close()


def test_threads_take_turns(tmp_path: Path) -> None:
    lock = SqliteWriterLock(tmp_path / "nacre.db")
    inside = 0
    overlaps = 0
    guard = threading.Lock()

    def work() -> None:
        nonlocal inside, overlaps
        for _ in range(50):
            with lock:
                with guard:
                    inside += 1
                    overlaps += inside > 1
                time.sleep(0.0002)
                with guard:
                    inside -= 1

    threads = [threading.Thread(target=work) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    assert overlaps == 0
    lock.close()


def test_a_forked_child_has_its_own_lock(tmp_path: Path) -> None:
    lock = SqliteWriterLock(tmp_path / "nacre.db")
    read_end, write_end = os.pipe()
    with lock:
        pid = os.fork()
        if pid == 0:  # the child: the inherited lock object must not count as held
            try:
                os.close(read_end)
                with lock:
                    os.write(write_end, f"{time.time()}\n".encode())
            finally:
                os._exit(0)
        os.close(write_end)
        time.sleep(HOLD)
        released = time.time()
    with os.fdopen(read_end) as pipe:
        acquired = float(pipe.readline())
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert acquired >= released
    lock.close()
