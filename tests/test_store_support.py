"""Shared helpers of the store tests (no tests here): databases, sealers, fixed times.

Every store test runs on SQLite (a file under tmp_path) and on PostgreSQL (a fresh schema per
test, dropped afterwards). PostgreSQL is required: when it is down the tests fail, never skip.
``NACRE_TEST_PG_URL`` overrides the server (default: trust auth on 127.0.0.1:5432, database test).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from nacre.store import KekSealer
from nacre.tee.backend import SgxIdentity
from nacre.tee.sealing import Sealer

__all__ = ["BACKENDS", "NOW", "PG_URL", "database", "make_sealer", "sealer_from_root_file"]

PG_URL: Final = os.environ.get("NACRE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
BACKENDS: Final = ("sqlite", "postgresql")
NOW: Final = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
IDENTITY: Final = SgxIdentity(
    mrenclave=bytes.fromhex("11" * 32), mrsigner=bytes.fromhex("22" * 32), isv_prod_id=7, isv_svn=3
)


def sealer_from_root_file(path: Path) -> Sealer:
    """The sim backend's sealing, as ``nacre.tee.sim`` builds it: a Sealer over a 32-byte root."""
    root = path.read_bytes()
    return Sealer(IDENTITY, lambda _policy: root)


def make_sealer(directory: Path) -> Sealer:
    """A sealer over a fresh sealing root written (0600) under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    root = directory / "sealing_root.bin"
    if not root.exists():
        root.write_bytes(secrets.token_bytes(32))
        root.chmod(0o600)
    sealer: KekSealer = sealer_from_root_file(root)  # Sealer satisfies the store's protocol
    assert isinstance(sealer, Sealer)
    return sealer


@contextmanager
def postgres_schema() -> Iterator[str]:
    """A URL whose search_path is a new, empty schema; the schema is dropped afterwards."""
    schema = f"nacre_test_{secrets.token_hex(6)}"
    admin = sa.create_engine(make_url(PG_URL).set(drivername="postgresql+psycopg"))
    try:
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        url = make_url(PG_URL).set(
            drivername="postgresql+psycopg", query={"options": f"-csearch_path={schema}"}
        )
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@contextmanager
def database(kind: str, tmp_path: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'db' / 'nacre.db'}"
    else:
        with postgres_schema() as url:
            yield url
