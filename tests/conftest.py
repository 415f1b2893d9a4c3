from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# tests/ helpers (vectors.py, pcs_simulator.py) are imported as plain modules.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from nacre.store import Store, open_store
from test_store_support import BACKENDS, database, make_sealer


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database on each backend (SQLite file; PostgreSQL schema)."""
    with database(str(request.param), tmp_path) as url:
        yield url


@pytest.fixture
def store(db_url: str, tmp_path: Path) -> Iterator[Store]:
    """A store on ``db_url`` with a simulated-TEE KEK sealer."""
    with open_store(db_url, sealer=make_sealer(tmp_path / "tee"), data_dir=tmp_path / "data") as s:
        yield s


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Commands run in-process (CliRunner) configure the root logger for a whole process; put it
    back after each test so one test's log level and handlers never leak into the next."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in logging.root.manager.loggerDict}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, lvl in levels.items():
        logging.getLogger(name).setLevel(lvl)
