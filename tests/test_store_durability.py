"""kill -9 in the middle of a write load: every acknowledged write survives, the chain verifies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nacre.store import open_store, verify_chain
from test_store_support import BACKENDS, database, sealer_from_root_file

ACKS_BEFORE_KILL = 40

WRITER = r"""
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[4])
from test_store_support import sealer_from_root_file
from nacre.store import open_store

url, data_dir, root = sys.argv[1], sys.argv[2], Path(sys.argv[3])
store = open_store(url, sealer=sealer_from_root_file(root), data_dir=data_dir)
print("ready", flush=True)
i = 0
while True:
    name = f"load/item/n{i}"
    store.put_resource(name, f"secret-{i}".encode(), actor="loader")
    if i % 3 == 0:
        store.create_key(f"key-{i}", "AES-256", bytes([i % 256]) * 32, actor="loader")
    print(i, flush=True)  # acknowledged: the call returned, so the transaction committed
    i += 1
"""


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with database(str(request.param), tmp_path) as url:
        yield url


def test_sigkill_mid_write_loses_no_acknowledged_write(db_url: str, tmp_path: Path) -> None:
    root = tmp_path / "sealing_root.bin"
    root.write_bytes(os.urandom(32))
    data = tmp_path / "data"
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    proc = subprocess.Popen(
        [sys.executable, str(script), db_url, str(data), str(root), str(Path(__file__).parent)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    acked: list[int] = []
    deadline = time.monotonic() + 60
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        while len(acked) < ACKS_BEFORE_KILL and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            acked.append(int(line))
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        # Lines written before the kill were acknowledged too: read what is left in the pipe.
        rest, err = proc.communicate(timeout=30)
    acked.extend(int(x) for x in rest.split())
    assert proc.returncode == -signal.SIGKILL
    assert len(acked) >= ACKS_BEFORE_KILL, err[-2000:]

    with open_store(db_url, sealer=sealer_from_root_file(root), data_dir=data) as store:
        names = {str(r.name) for r in store.list_resources()}
        for i in acked:
            assert f"load/item/n{i}" in names
            assert store.get_resource(f"load/item/n{i}").data == f"secret-{i}".encode()
            if i % 3 == 0:
                assert store.key_material(f"key-{i}")[1] == bytes([i % 256]) * 32
        report = verify_chain(store)
        assert report.ok, report
        # Every acknowledged write has its audit entry (one per put, one per key).
        assert report.entries >= len(acked) + len([i for i in acked if i % 3 == 0])
