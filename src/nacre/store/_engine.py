"""Engines and migrations: SQLite (WAL, FULL sync, foreign keys, busy timeout) or PostgreSQL.

SQLite durability is chosen per write transaction. Every write is fsynced at commit
(``synchronous=FULL``: it survives a crash and a power cut) except those marked :data:`UNSYNCED`,
committed with ``synchronous=NORMAL`` (written to the WAL, not fsynced). Those survive a crash of
the process (kill -9) like every other write, and are of two kinds:

- KBS session and nonce rows: a power cut may lose the last of them (never a later FULL commit:
  the WAL is fsynced in order), which makes the clients concerned authenticate again. Trustee
  keeps the same state in memory, lost on any restart.
- audit entries whose caller makes them durable before acknowledging anything
  (``Store.record(durable=False)`` then ``Store.sync_deferred()``, which fsyncs the WAL file
  outside the write lock; see there).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError

from nacre.errors import UsageError

__all__ = [
    "BUSY_TIMEOUT_MS",
    "READ_ONLY",
    "SCHEMA_HEAD",
    "UNSYNCED",
    "current_revision",
    "make_engine",
    "sqlite_begin_write",
    "sqlite_path",
    "upgrade_head",
]

#: How long a SQLite writer waits for the write lock before failing.
BUSY_TIMEOUT_MS: Final = 30_000
#: Connections a SQLite engine keeps open (and as many more it may open under a burst).
SQLITE_POOL_SIZE: Final = 48
SCHEMA_HEAD: Final = "0003_session_indexes"
#: pg_advisory_xact_lock key serializing concurrent migrations of replicas ("nacre" + 1).
_MIGRATION_LOCK: Final = 0x6E61637265_01


def parse_url(url: str) -> URL:
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise UsageError(
            "the database URL cannot be parsed",
            field="database",
            expected="sqlite:///PATH or postgresql://USER@HOST/DB",
            actual=url,
        ) from exc
    return parsed


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///`` URL, or ``None`` for other databases."""
    parsed = parse_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    return Path(parsed.database or "")


def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    # The driver must not open transactions itself: the "begin" hook below does, as IMMEDIATE.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    try:
        # WAL: readers never block the writer. synchronous=FULL: the WAL is fsynced at every
        # commit, so an acknowledged write survives a crash *and* a power cut (NORMAL+WAL may
        # lose the last commits on power loss). foreign_keys: SQLite checks no FK otherwise.
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    finally:
        cur.close()


#: Execution option marking a read-only connection (SQLite: deferred BEGIN, no write lock).
READ_ONLY: Final = "nacre_read_only"
#: Execution option marking a write committed without an fsync (SQLite: synchronous=NORMAL).
UNSYNCED: Final = "nacre_unsynced"
#: Where a pooled SQLite connection records the synchronous level it was last set to.
_SYNC_INFO: Final = "nacre_synchronous"


def _sqlite_begin(conn: Connection) -> None:
    # Writers take the write lock up front: read-then-write transactions (audit head, versions)
    # never deadlock on a lock upgrade, and writers queue under busy_timeout. Readers take a
    # deferred transaction: a consistent WAL snapshot that never waits for a writer.
    # On the driver connection itself: this runs before every transaction, and a statement
    # through SQLAlchemy's execution machinery costs as much as a query.
    driver = conn.connection.driver_connection
    assert driver is not None
    options = conn.get_execution_options()
    if options.get(READ_ONLY):
        driver.execute("BEGIN")
        return
    sqlite_begin_write(driver, conn.connection.info, unsynced=bool(options.get(UNSYNCED)))


def sqlite_begin_write(driver: Any, info: dict[Any, Any], *, unsynced: bool) -> None:
    """Open a write transaction (``BEGIN IMMEDIATE``) on the SQLite driver connection ``driver``
    whose pool record keeps ``info``, committing with an fsync unless ``unsynced``."""
    # The level applies to this connection's commits; set it (outside any transaction) only
    # when it changes. A connection starts at FULL (_sqlite_connect).
    level = "NORMAL" if unsynced else "FULL"
    if info.get(_SYNC_INFO, "FULL") != level:
        driver.execute(f"PRAGMA synchronous={level}")
        info[_SYNC_INFO] = level
    driver.execute("BEGIN IMMEDIATE")


def make_engine(url: str) -> Engine:
    parsed = parse_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        database = parsed.database
        if not database or database == ":memory:" or parsed.query.get("mode") == "memory":
            raise UsageError(
                "the store needs a SQLite file (an in-memory database is lost on exit)",
                field="database",
                expected="sqlite:///PATH",
                actual=url,
            )
        Path(database).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        engine = create_engine(
            parsed,
            connect_args={"timeout": BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
            # Enough pooled connections for the server's worker threads (anyio's default limit
            # is 40): an overflow connection is closed on return and the next one reopened (file
            # open, WAL mapping, the PRAGMAs below) on the request path.
            pool_size=SQLITE_POOL_SIZE,
            max_overflow=SQLITE_POOL_SIZE,
        )
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    if backend == "postgresql":
        if parsed.drivername == "postgresql":  # the default driver is psycopg 3, not psycopg2
            parsed = parsed.set(drivername="postgresql+psycopg")
        return create_engine(parsed, pool_pre_ping=True)
    raise UsageError(
        "the store runs on SQLite or PostgreSQL",
        field="database",
        expected="sqlite:///PATH or postgresql://...",
        actual=parsed.render_as_string(hide_password=True),
    )


def current_revision(engine: Engine) -> str | None:
    """The schema revision stamped in the database (``None``: not a nacre database)."""
    with engine.connect() as conn:
        revision = MigrationContext.configure(conn).get_current_revision()
        conn.rollback()
    return revision


def upgrade_head(engine: Engine) -> None:
    """Run Alembic ``upgrade head`` on ``engine`` (in one transaction; replicas take turns)."""
    config = Config()
    config.set_main_option("script_location", "nacre.store:migrations")
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
