"""Hot-path statements run on the DBAPI cursor, compiled once per dialect.

SQLAlchemy's execution machinery (execution context, events, cursor result) costs far more than
SQLite takes to run a primary-key lookup: on the KBS handshake it was most of the store's CPU. A
:class:`Prepared` statement is compiled by SQLAlchemy once per dialect, then run on the driver
cursor with the column types' own bind and result processors (the same conversions SQLAlchemy
applies: ``UtcDateTime``, ``LargeBinary`` ...), so the values read and written are the same.

It runs inside a transaction the caller already holds: an SQLAlchemy :class:`Connection`
(``conn.connection.dbapi_connection``: the same connection, so the same transaction) or a raw
pooled connection (:meth:`nacre.store.Store` read snapshots). Driver exceptions are not wrapped:
callers that expect an integrity error catch :func:`integrity_errors`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement

__all__ = ["FastRow", "Prepared", "RawConnection", "dbapi_of", "integrity_errors"]

_Processor = Callable[[Any], Any] | None


class FastRow:
    """One result row: columns by attribute (``row.expires_at``) or by key (``row["p_id"]``)."""

    __slots__ = ("_values",)

    def __init__(self, values: dict[str, Any]) -> None:
        self._values = values

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, name: str) -> Any:
        return self._values[name]


class RawConnection:
    """A driver connection inside a transaction its holder opened, with the engine's dialect:
    what :meth:`Prepared.on` needs without an SQLAlchemy :class:`Connection` around it."""

    __slots__ = ("dbapi", "dialect")

    def __init__(self, dbapi: Any, dialect: Dialect) -> None:
        self.dbapi = dbapi
        self.dialect = dialect


class _Compiled:
    __slots__ = ("binds", "columns", "compiled", "names", "sql")

    def __init__(self, statement: ClauseElement, dialect: Dialect) -> None:
        compiled = cast(SQLCompiler, statement.compile(dialect=dialect))
        self.compiled = compiled
        self.sql = compiled.string
        #: Bind parameter names in placeholder order (positional paramstyles), else None.
        self.names: tuple[str, ...] | None = (
            tuple(compiled.positiontup or ()) if compiled.positional else None
        )
        processors = compiled._bind_processors
        # No expanding (IN-list) parameters here: each processor is a plain callable or None.
        self.binds: dict[str, _Processor] = {
            name: cast(_Processor, processors.get(name)) for name in compiled.binds
        }
        columns: list[tuple[str, _Processor]] = []
        for entry in compiled._result_columns or ():
            key, type_ = entry[0], entry[3]
            columns.append((key, type_._cached_result_processor(dialect, None)))
        self.columns = tuple(columns)


class Prepared:
    """A SQLAlchemy Core statement with named :func:`~sqlalchemy.bindparam` parameters (every
    value it needs is a bind parameter or a literal), run on the DBAPI cursor."""

    def __init__(self, statement: ClauseElement) -> None:
        self._statement = statement
        self._by_dialect: dict[tuple[object, ...], _Compiled] = {}

    def _compiled(self, dialect: Dialect) -> _Compiled:
        # Everything the SQL text and its processors depend on (driver, placeholders, server
        # version: e.g. whether RETURNING renders), not just the backend's name.
        key = (type(dialect), dialect.paramstyle, dialect.server_version_info)
        compiled = self._by_dialect.get(key)
        if compiled is None:
            compiled = _Compiled(self._statement, dialect)
            self._by_dialect[key] = compiled
        return compiled

    def execute(
        self, dbapi_conn: Any, dialect: Dialect, params: Mapping[str, Any]
    ) -> tuple[list[FastRow], int]:
        """Run with ``params``; return the rows (all of them; empty when none are returned)
        and the driver's row count."""
        c = self._compiled(dialect)
        merged = c.compiled.construct_params(params)
        values: dict[str, Any] = {}
        for name, value in merged.items():
            proc = c.binds.get(name)
            values[name] = proc(value) if proc is not None and value is not None else value
        args: Sequence[Any] | dict[str, Any]
        args = [values[name] for name in c.names] if c.names is not None else values
        cursor = dbapi_conn.cursor()
        try:
            cursor.execute(c.sql, args)
            rows: list[FastRow] = []
            if cursor.description is not None:
                for raw in cursor.fetchall():
                    rows.append(
                        FastRow(
                            {
                                key: (proc(v) if proc is not None else v)
                                for (key, proc), v in zip(c.columns, raw, strict=True)
                            }
                        )
                    )
            return rows, cursor.rowcount
        finally:
            cursor.close()

    def on(
        self, conn: Connection | RawConnection, params: Mapping[str, Any]
    ) -> tuple[list[FastRow], int]:
        """Run inside the caller's transaction: an SQLAlchemy connection's (on its DBAPI
        connection) or a :class:`RawConnection`'s."""
        if isinstance(conn, RawConnection):
            return self.execute(conn.dbapi, conn.dialect, params)
        return self.execute(dbapi_of(conn), conn.dialect, params)


def dbapi_of(conn: Connection) -> Any:
    """The DBAPI connection under an SQLAlchemy connection (same transaction)."""
    return conn.connection.dbapi_connection


def integrity_errors(dialect: Dialect) -> tuple[type[BaseException], ...]:
    """The driver's integrity error class (what a constraint violation raises here)."""
    dbapi = dialect.loaded_dbapi
    error = getattr(dbapi, "IntegrityError", None)
    return (error,) if isinstance(error, type) else ()
