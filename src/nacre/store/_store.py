"""The :class:`Store`: resources, policies, keys, sessions and nonces, audit — one transaction per call.

Every method that changes data commits before it returns (an acknowledged write is durable: see
``nacre.store._engine`` for SQLite's settings; ``record(durable=False)`` is durable once
``sync_deferred`` returned), records its audit entry in the same transaction, and checks its
input before it opens one, so bad input never reaches the database.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from dataclasses import field as dc_field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, Final, TypeVar, cast

from sqlalchemy import bindparam, delete, func, select, text, update
from sqlalchemy.engine import Connection, Engine, Row
from sqlalchemy.exc import IntegrityError

from nacre.errors import LimitExceededError, UsageError
from nacre.store import _schema as t
from nacre.store._engine import (
    READ_ONLY,
    SCHEMA_HEAD,
    UNSYNCED,
    current_revision,
    make_engine,
    sqlite_begin_write,
    sqlite_path,
    upgrade_head,
)
from nacre.store._fast import FastRow, Prepared, RawConnection, integrity_errors
from nacre.store.audit import (
    AuditEntry,
    PendingEntry,
    append_entry,
    append_prepared,
    iter_entries,
    prepare_entry,
)
from nacre.store.envelope import (
    Envelope,
    KekRing,
    KekSealer,
    SealPolicyName,
    envelope_aad,
    open_envelope,
    rewrap,
    seal_envelope,
)
from nacre.store.errors import (
    ConflictError,
    EnvelopeError,
    LifecycleError,
    NonceError,
    NotFoundError,
)
from nacre.store.group_commit import GroupCommit
from nacre.store.models import (
    AdminKeyRecord,
    KeyInfo,
    KeyState,
    KeyType,
    KeyVersionInfo,
    KeyVersionState,
    Policy,
    PolicyKind,
    Resource,
    ResourceInfo,
    ResourceName,
    Session,
    SessionState,
)
from nacre.store.thread_connections import ThreadConnections
from nacre.store.writer_lock import SqliteWriterLock

__all__ = [
    "DELETION_WAIT_MAX_DAYS",
    "DELETION_WAIT_MIN_DAYS",
    "MAX_KEY_MATERIAL_BYTES",
    "MAX_POLICY_BYTES",
    "MAX_RESOURCE_BYTES",
    "MAX_SESSION_FIELD_BYTES",
    "MAX_SIGNING_KEYRING_BYTES",
    "ResourceRelease",
    "Store",
    "SweepResult",
    "default_url",
    "open_store",
]

#: Largest secret a resource version may hold.
MAX_RESOURCE_BYTES: Final = 1024 * 1024
#: Largest policy document.
MAX_POLICY_BYTES: Final = 256 * 1024
#: Largest key material (RSA-3072 PKCS#8 DER is ~1.8 KiB).
MAX_KEY_MATERIAL_BYTES: Final = 16 * 1024
#: Waiting period bounds for scheduled key deletion (as cloud KMSes do).
DELETION_WAIT_MIN_DAYS: Final = 7
DELETION_WAIT_MAX_DAYS: Final = 30
#: Largest attested TEE public key (JWK) or token kept with a session.
MAX_SESSION_FIELD_BYTES: Final = 64 * 1024
#: Longest session a caller may ask for.
MAX_SESSION_TTL: Final = timedelta(hours=24)
#: Largest serialised signing keyring (``nacre.token.keyring.MAX_KEYRING_BYTES`` too).
MAX_SIGNING_KEYRING_BYTES: Final = 1024 * 1024
#: Largest public JWK of an admin key (Ed25519 or P-256: ~150 bytes).
MAX_ADMIN_JWK_BYTES: Final = 2048

_T = TypeVar("_T")
_PURPOSE: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,31}")
_ADMIN_NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_KID: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: pg_advisory_xact_lock key serialising the bootstrap of the first admin key ("nacre" + 2).
_BOOTSTRAP_LOCK: Final = 0x6E61637265_02

_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_NONCE: Final = re.compile(r"[A-Za-z0-9_\-+/=]{16,128}")
_TRANSITIONS: Final[dict[str, frozenset[str]]] = {
    "enabled": frozenset({"disabled", "pending_deletion"}),
    "disabled": frozenset({"enabled", "pending_deletion"}),
    "pending_deletion": frozenset({"disabled", "destroyed"}),
    "destroyed": frozenset(),
}


# -- hot-path statements, built once ----------------------------------------------------------
# The KBS handshake runs these on every request: built (and their cache keys generated) once,
# they skip SQLAlchemy's per-call expression construction; the compiled form is cached per engine.


def _policy_columns(alias: str) -> list[Any]:
    p = t.policies
    return [
        p.c.id.label(f"{alias}_id"),
        p.c.kind.label(f"{alias}_kind"),
        p.c.document.label(f"{alias}_document"),
        p.c.version.label(f"{alias}_version"),
        p.c.created_at.label(f"{alias}_created_at"),
        p.c.updated_at.label(f"{alias}_updated_at"),
    ]


#: A session, its nonce and (``pid``) one policy, in one statement.
_SESSION_AND_POLICY: Final = Prepared(
    select(t.sessions, t.nonces.c.value.label("nonce_value"), *_policy_columns("p"))
    .select_from(
        t.sessions.outerjoin(t.nonces, t.nonces.c.session_id == t.sessions.c.id).outerjoin(
            t.policies, t.policies.c.id == bindparam("pid")
        )
    )
    .where(t.sessions.c.id == bindparam("sid"))
)
#: A live resource, its current version's envelope and its release policy, in one statement.
_RESOURCE_FOR_RELEASE: Final = Prepared(
    select(
        t.resources,
        t.resource_versions.c.version.label("rv_version"),
        t.resource_versions.c.ciphertext,
        t.resource_versions.c.wrapped_key,
        t.resource_versions.c.kek_id,
        t.resource_versions.c.nonce,
        t.resource_versions.c.aad,
        *_policy_columns("p"),
    )
    .select_from(
        t.resources.outerjoin(
            t.resource_versions,
            (t.resource_versions.c.resource_id == t.resources.c.id)
            & (t.resource_versions.c.version == t.resources.c.current_version),
        ).outerjoin(t.policies, t.policies.c.id == t.resources.c.policy_id)
    )
    .where(
        t.resources.c.repo == bindparam("repo"),
        t.resources.c.type == bindparam("type"),
        t.resources.c.tag == bindparam("tag"),
        ~t.resources.c.deleted,
    )
)
_INSERT_SESSION: Final = Prepared(
    t.sessions.insert().values(
        id=bindparam("id"),
        tee=bindparam("tee"),
        state="pending",
        created_at=bindparam("created_at"),
        expires_at=bindparam("expires_at"),
    )
)
_INSERT_NONCE: Final = Prepared(
    t.nonces.insert().values(
        value=bindparam("value"),
        session_id=bindparam("session_id"),
        created_at=bindparam("created_at"),
        expires_at=bindparam("expires_at"),
    )
)
_CONSUME_NONCE: Final = Prepared(
    update(t.nonces)
    .where(
        t.nonces.c.value == bindparam("n_value"),
        t.nonces.c.session_id == bindparam("n_sid"),
        t.nonces.c.consumed_at.is_(None),
        t.nonces.c.expires_at > bindparam("n_at"),
    )
    .values(consumed_at=bindparam("n_at"))
)
_ATTEST_SESSION: Final = Prepared(
    update(t.sessions)
    .where(t.sessions.c.id == bindparam("s_id"), t.sessions.c.expires_at > bindparam("s_at"))
    .values(state="attested", tee_pubkey=bindparam("s_tee_pubkey"), token=bindparam("s_token"))
    .returning(t.sessions.c.tee, t.sessions.c.created_at, t.sessions.c.expires_at)
)

_NONCE_ROW: Final = Prepared(
    select(t.nonces.c.consumed_at, t.nonces.c.expires_at).where(
        t.nonces.c.value == bindparam("n_value"), t.nonces.c.session_id == bindparam("n_sid")
    )
)
_SESSION_EXISTS: Final = Prepared(
    select(t.sessions.c.id).where(t.sessions.c.id == bindparam("sid"))
)


def _prefixed_policy(row: FastRow, alias: str) -> Policy | None:
    m = row
    if m[f"{alias}_id"] is None:
        return None
    return Policy(
        id=str(m[f"{alias}_id"]),
        kind=cast(PolicyKind, m[f"{alias}_kind"]),
        document=str(m[f"{alias}_document"]),
        version=int(m[f"{alias}_version"]),
        created_at=m[f"{alias}_created_at"],
        updated_at=m[f"{alias}_updated_at"],
    )


@dataclass(frozen=True, slots=True)
class ResourceRelease:
    """A live resource about to be released: its current version and release policy, read in one
    statement; the plaintext stays sealed until :meth:`Store.open_release` (after the policy)."""

    info: ResourceInfo
    version: int
    policy: Policy | None
    envelope: Envelope = dc_field(repr=False)


@dataclass(frozen=True, slots=True)
class SweepResult:
    sessions: int
    nonces: int


def _now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise UsageError("times are timezone-aware", field="now", expected="aware", actual=now)
    return now


def _check_id(field: str, value: str) -> str:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise UsageError(
            f"invalid {field}",
            field=field,
            expected="1-128 characters of [A-Za-z0-9._:-], starting alphanumeric",
            actual=repr(value)[:200],
        )
    return value


def _check_size(field: str, data: bytes, limit: int) -> bytes:
    if not isinstance(data, bytes | bytearray):
        raise UsageError(
            f"{field} is bytes", field=field, expected="bytes", actual=type(data).__name__
        )
    if len(data) > limit:
        raise LimitExceededError(
            f"{field} is too large",
            field=field,
            expected=f"<= {limit} bytes",
            actual=f"{len(data)} bytes",
        )
    return bytes(data)


def _check_actor(actor: str) -> str:
    if not isinstance(actor, str) or not 1 <= len(actor) <= 256:
        raise UsageError("invalid actor", field="actor", expected="1-256 characters", actual=actor)
    return actor


def _policy(row: Row[Any]) -> Policy:
    return Policy(
        id=str(row.id),
        kind=cast(PolicyKind, row.kind),
        document=str(row.document),
        version=int(row.version),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _resource_info(row: Row[Any] | FastRow) -> ResourceInfo:
    return ResourceInfo(
        name=ResourceName(str(row.repo), str(row.type), str(row.tag)),
        policy_id=None if row.policy_id is None else str(row.policy_id),
        current_version=int(row.current_version),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _key_info(row: Row[Any]) -> KeyInfo:
    return KeyInfo(
        id=str(row.id),
        type=cast(KeyType, row.type),
        state=cast(KeyState, row.state),
        current_version=int(row.current_version),
        exportable=bool(row.exportable),
        policy_id=None if row.policy_id is None else str(row.policy_id),
        deletion_date=row.deletion_date,
        rotation_period_s=None if row.rotation_period_s is None else int(row.rotation_period_s),
        next_rotation_at=row.next_rotation_at,
        expires_at=row.expires_at,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _key_version(row: Row[Any]) -> KeyVersionInfo:
    return KeyVersionInfo(
        key_id=str(row.key_id),
        version=int(row.version),
        state=cast(KeyVersionState, row.state),
        public_key=None if row.public_key is None else bytes(row.public_key),
        created_at=row.created_at,
    )


def _session(row: Row[Any] | FastRow, nonce: str) -> Session:
    return Session(
        id=str(row.id),
        nonce=nonce,
        tee=str(row.tee),
        state=cast(SessionState, row.state),
        created_at=row.created_at,
        expires_at=row.expires_at,
        tee_pubkey=None if row.tee_pubkey is None else str(row.tee_pubkey),
        token=None if row.token is None else str(row.token),
    )


def _admin_key(row: Row[Any]) -> AdminKeyRecord:
    jwk = json.loads(str(row.jwk))
    return AdminKeyRecord(
        kid=str(row.kid),
        name=str(row.name),
        jwk={str(k): str(v) for k, v in jwk.items()},
        roles=tuple(str(r) for r in json.loads(str(row.roles))),
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )


def _check_purpose(purpose: str) -> str:
    if not isinstance(purpose, str) or not _PURPOSE.fullmatch(purpose):
        raise UsageError(
            "invalid keyring purpose",
            field="purpose",
            expected="1-32 of [a-z0-9._-], e.g. ear",
            actual=repr(purpose)[:80],
        )
    return purpose


def _check_kid(kid: str) -> str:
    if not isinstance(kid, str) or not _KID.fullmatch(kid):
        raise UsageError(
            "invalid admin key id",
            field="kid",
            expected="an RFC 7638 thumbprint (base64url)",
            actual=repr(kid)[:80],
        )
    return kid


def _keyring_conflict(purpose: str, expected_version: int) -> ConflictError:
    return ConflictError(
        "another replica saved the signing keyring first",
        code="KEYRING_CONFLICT",
        field="version",
        expected=f"stored version {expected_version}",
        actual=f"{purpose}: changed by another writer",
        hint="reload the keyring and retry",
    )


def _envelope(row: Row[Any] | FastRow) -> Envelope:
    return Envelope(
        ciphertext=bytes(row.ciphertext),
        wrapped_key=bytes(row.wrapped_key),
        kek_id=str(row.kek_id),
        nonce=bytes(row.nonce),
        aad=bytes(row.aad),
    )


def _envelope_values(env: Envelope) -> dict[str, Any]:
    return {
        "ciphertext": env.ciphertext,
        "wrapped_key": env.wrapped_key,
        "kek_id": env.kek_id,
        "nonce": env.nonce,
        "aad": env.aad,
    }


def _fsync_wal(database: Path, items: Sequence[None]) -> list[None]:
    """One fsync covering every commit queued in ``items`` (see :meth:`Store.sync_deferred`)."""
    wal = database.with_name(database.name + "-wal")
    try:
        fd = os.open(wal, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        # No WAL: the last connection checkpointed it into the database file (and synced that)
        # and removed it. Sync the database file all the same: it is cheap when clean.
        fd = os.open(database, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return [None] * len(items)


def _conflict(orig: BaseException | None) -> ConflictError:
    return ConflictError(
        "another writer changed the same row first, or a constraint refused the write",
        field="row",
        expected="a write consistent with the stored data",
        actual=str(orig).splitlines()[0] if orig is not None else "integrity error",
        hint="retry the operation",
    )


class Store:
    """Repositories over one database. Thread-safe (one engine, a connection per call)."""

    def __init__(self, engine: Engine, ring: KekRing | None) -> None:
        self._engine = engine
        # Read-only snapshots: an engine view carrying the option (set once, not per call).
        self._reader = engine.execution_options(**{READ_ONLY: True})
        # Writes committed without an fsync (SQLite: synchronous=NORMAL, see nacre.store._engine).
        self._unsynced = engine.execution_options(**{UNSYNCED: True})
        self._dialect = engine.dialect
        self._sqlite = engine.dialect.name == "sqlite"
        self._integrity = integrity_errors(engine.dialect)
        # SQLite has one writer at a time: writers queue on a lock shared by this process's
        # threads and the other processes on the file (nacre.store.writer_lock), not in SQLite's
        # sleeping busy handler. PostgreSQL has row locks: no serialisation here.
        database = engine.url.database if self._sqlite else None
        self._write_lock: AbstractContextManager[object] = (
            SqliteWriterLock(Path(database)) if database else nullcontext()
        )
        # SQLite: the hot statements run on a connection each thread keeps (no pool round trip).
        self._connections = ThreadConnections(engine) if database else None
        self._ring = ring
        # Audit entries appended on their own (releases, denials) share commits under load.
        self._audit_batches: GroupCommit[PendingEntry, AuditEntry] = GroupCommit(self._append_batch)
        # record(durable=False): counted here, made durable by sync_deferred (shared fsyncs).
        self._deferred = 0
        self._deferred_lock = threading.Lock()
        self._wal_syncs: GroupCommit[None, None] | None = (
            GroupCommit(partial(_fsync_wal, Path(database))) if database else None
        )

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def kek_ring(self) -> KekRing:
        if self._ring is None:
            raise UsageError(
                "this store was opened without a KEK sealer: it cannot read or write secrets",
                field="sealer",
                expected="open_store(url, sealer=..., data_dir=...)",
                actual="None",
            )
        return self._ring

    def close(self) -> None:
        if self._connections is not None:
            self._connections.close()
        self._engine.dispose()
        if isinstance(self._write_lock, SqliteWriterLock):
            self._write_lock.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self, *, unsynced: bool = False) -> Iterator[Connection]:
        """A write transaction, committed on exit. A constraint the checks before it missed (a
        concurrent insert of the same name on PostgreSQL) becomes a :class:`ConflictError`.
        ``unsynced``: on SQLite the commit is not fsynced (it survives a process crash; a power
        cut may lose it unless :meth:`sync_deferred` ran after it: nacre.store._engine)."""
        engine = self._unsynced if unsynced else self._engine
        try:
            with self._write_lock, engine.begin() as conn:
                yield conn
        except IntegrityError as exc:
            raise _conflict(exc.orig) from exc
        except self._integrity as exc:  # from a Prepared statement (the driver's own class)
            raise _conflict(exc) from exc

    @contextmanager
    def _write(self, *, unsynced: bool = False) -> Iterator[Connection | RawConnection]:
        """A write transaction for :class:`Prepared` statements only, committed on exit, as
        :meth:`_tx`. On SQLite it runs on this thread's driver connection itself
        (:class:`~nacre.store.thread_connections.ThreadConnections`): SQLAlchemy's connection,
        transaction and pool machinery cost more than the statements of a KBS write."""
        if self._connections is None:
            with self._tx(unsynced=unsynced) as conn:
                yield conn
            return
        try:
            with self._connections.connection() as (driver, info), self._write_lock:
                sqlite_begin_write(driver, info, unsynced=unsynced)
                try:
                    yield RawConnection(driver, self._dialect)
                except BaseException:
                    if driver.in_transaction:
                        driver.execute("ROLLBACK")
                    raise
                driver.execute("COMMIT")
        except self._integrity as exc:
            raise _conflict(exc) from exc

    @contextmanager
    def _raw_read(self) -> Iterator[Any]:
        """A DBAPI connection for one :class:`Prepared` read statement. One statement reads one
        snapshot by itself (SQLite: its own read transaction in autocommit mode, as the driver
        is set up, on this thread's connection; PostgreSQL: the driver's implicit transaction on
        a pooled connection, rolled back after), so no BEGIN."""
        if self._connections is not None:
            with self._connections.connection() as (driver, _info):
                yield driver
            return
        pooled = self._engine.raw_connection()
        try:
            dbapi_conn = pooled.dbapi_connection
            assert dbapi_conn is not None
            yield dbapi_conn
            pooled.rollback()
        finally:
            pooled.close()  # back to the pool (which rolls back whatever is left open)

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """A read-only snapshot (on SQLite a deferred transaction that never waits for writers)."""
        with self._reader.connect() as conn:
            yield conn
            conn.rollback()

    # -- audit -------------------------------------------------------------------------------

    def record(
        self,
        *,
        actor: str,
        action: str,
        target: str,
        outcome: str,
        detail: Mapping[str, Any] | None = None,
        now: datetime | None = None,
        durable: bool = True,
    ) -> AuditEntry:
        """Append an audit entry on its own (a release, a denial ...). Never pass secrets.

        ``durable``: committed and on disk when this returns; concurrent calls share a
        transaction (group commit). ``durable=False`` (for a caller that must not wait for a
        disk, e.g. on an event loop): committed, which survives a crash of the process, and made
        power-cut safe by the next :meth:`sync_deferred`, which the caller must await before it
        acknowledges anything that depends on the entry. PostgreSQL commits are durable anyway.
        """
        _check_actor(actor)
        entry = prepare_entry(
            actor=actor,
            action=action,
            target=target,
            outcome=outcome,
            detail=detail or {},
            now=_now(now),
        )
        if durable or not self._sqlite:
            return self._audit_batches.submit(entry)
        with self._write(unsynced=True) as conn:
            appended = append_prepared(conn, entry)
        with self._deferred_lock:
            self._deferred += 1
        return appended

    def deferred_mark(self) -> int:
        """How many ``record(durable=False)`` commits this store has made: a caller compares
        it before and after its work to learn whether it must :meth:`sync_deferred`."""
        return self._deferred

    def sync_deferred(self) -> None:
        """Make every commit this process made before the call durable (SQLite: an fsync of the
        WAL file; nothing on PostgreSQL). Blocking; concurrent calls share an fsync.

        Why an fsync of the ``-wal`` file suffices, outside the write lock: in WAL mode a commit
        appends its frames to that file, and SQLite resets the WAL only after a checkpoint has
        copied every frame into the database file and fsynced it (synchronous=NORMAL). So a
        commit made before this call is, when the fsync returns, either in the synced WAL or in
        the synced database file. Nothing holds the write lock meanwhile: other writers go on.
        """
        if self._wal_syncs is not None:
            self._wal_syncs.submit(None)

    def _append_batch(self, entries: Sequence[PendingEntry]) -> list[AuditEntry]:
        with self._write() as conn:
            return [append_prepared(conn, entry) for entry in entries]

    def audit_entries(self, *, after: int = 0, limit: int | None = None) -> list[AuditEntry]:
        out: list[AuditEntry] = []
        with self._read() as conn:
            for entry in iter_entries(conn, after=after):
                if limit is not None and len(out) >= limit:
                    break
                out.append(entry)
        return out

    # -- policies ----------------------------------------------------------------------------

    def set_policy(
        self,
        policy_id: str,
        kind: PolicyKind,
        document: str,
        *,
        actor: str,
        now: datetime | None = None,
    ) -> Policy:
        """Create a policy or replace its document (the version goes up by one)."""
        _check_id("policy id", policy_id)
        _check_actor(actor)
        if kind not in t.POLICY_KINDS:
            raise UsageError(
                "unknown policy kind", field="kind", expected="resource or appraisal", actual=kind
            )
        if not isinstance(document, str):
            raise UsageError(
                "a policy document is text", field="document", expected="str", actual=type(document)
            )
        _check_size("policy document", document.encode("utf-8"), MAX_POLICY_BYTES)
        at = _now(now)
        with self._tx() as conn:
            row = conn.execute(
                select(t.policies).where(t.policies.c.id == policy_id).with_for_update()
            ).one_or_none()
            if row is None:
                version = 1
                conn.execute(
                    t.policies.insert().values(
                        id=policy_id,
                        kind=kind,
                        document=document,
                        version=1,
                        created_at=at,
                        updated_at=at,
                    )
                )
            else:
                if row.kind != kind:
                    raise ConflictError(
                        "a policy id is bound to one kind",
                        field="kind",
                        expected=row.kind,
                        actual=kind,
                    )
                version = int(row.version) + 1
                conn.execute(
                    update(t.policies)
                    .where(t.policies.c.id == policy_id)
                    .values(document=document, version=version, updated_at=at)
                )
            append_entry(
                conn,
                actor=actor,
                action="policy.set",
                target=policy_id,
                outcome="ok",
                detail={"kind": kind, "version": version},
                now=at,
            )
            stored = conn.execute(select(t.policies).where(t.policies.c.id == policy_id)).one()
            return _policy(stored)

    def get_policy(self, policy_id: str) -> Policy:
        _check_id("policy id", policy_id)
        with self._read() as conn:
            row = conn.execute(select(t.policies).where(t.policies.c.id == policy_id)).one_or_none()
        if row is None:
            raise NotFoundError(
                "no such policy", field="policy id", expected="an existing policy", actual=policy_id
            )
        return _policy(row)

    def list_policies(self, kind: PolicyKind | None = None) -> list[Policy]:
        query = select(t.policies).order_by(t.policies.c.id)
        if kind is not None:
            query = query.where(t.policies.c.kind == kind)
        with self._read() as conn:
            return [_policy(r) for r in conn.execute(query).all()]

    def _require_policy(self, conn: Connection, policy_id: str | None, kind: PolicyKind) -> None:
        if policy_id is None:
            return
        _check_id("policy id", policy_id)
        found = conn.execute(
            select(t.policies.c.kind).where(t.policies.c.id == policy_id)
        ).scalar_one_or_none()
        if found is None:
            raise NotFoundError(
                "no such policy", field="policy_id", expected="an existing policy", actual=policy_id
            )
        if found != kind:
            raise UsageError(
                f"policy {policy_id} is a {found} policy",
                field="policy_id",
                expected=f"a {kind} policy",
                actual=found,
            )

    # -- resources ---------------------------------------------------------------------------

    def put_resource(
        self,
        name: str | ResourceName,
        data: bytes,
        *,
        policy_id: str | None = None,
        actor: str,
        now: datetime | None = None,
    ) -> ResourceInfo:
        """Store a new version of a resource (older versions are kept). ``policy_id`` None: no
        release policy beyond an affirming attestation."""
        rname = name if isinstance(name, ResourceName) else ResourceName.parse(name)
        plaintext = _check_size("resource data", data, MAX_RESOURCE_BYTES)
        _check_actor(actor)
        ring = self.kek_ring
        at = _now(now)
        r = t.resources
        with self._tx() as conn:
            self._require_policy(conn, policy_id, "resource")
            row = conn.execute(
                select(r)
                .where(r.c.repo == rname.repo, r.c.type == rname.type, r.c.tag == rname.tag)
                .with_for_update()
            ).one_or_none()
            if row is None:
                version = 1
                resource_id = conn.execute(
                    r.insert()
                    .values(
                        repo=rname.repo,
                        type=rname.type,
                        tag=rname.tag,
                        policy_id=policy_id,
                        current_version=1,
                        deleted=False,
                        created_at=at,
                        updated_at=at,
                    )
                    .returning(r.c.id)
                ).scalar_one()
            else:
                resource_id = row.id
                version = int(row.current_version) + 1
                conn.execute(
                    update(r)
                    .where(r.c.id == resource_id)
                    .values(
                        current_version=version, policy_id=policy_id, deleted=False, updated_at=at
                    )
                )
            env = seal_envelope(
                ring, plaintext, envelope_aad("resource_versions", str(rname), version)
            )
            conn.execute(
                t.resource_versions.insert().values(
                    resource_id=resource_id, version=version, created_at=at, **_envelope_values(env)
                )
            )
            append_entry(
                conn,
                actor=actor,
                action="resource.put",
                target=str(rname),
                outcome="ok",
                detail={"version": version, "bytes": len(plaintext), "policy_id": policy_id},
                now=at,
            )
            return _resource_info(conn.execute(select(r).where(r.c.id == resource_id)).one())

    def _resource_row(self, conn: Connection, rname: ResourceName) -> Row[Any]:
        r = t.resources
        row = conn.execute(
            select(r).where(
                r.c.repo == rname.repo, r.c.type == rname.type, r.c.tag == rname.tag, ~r.c.deleted
            )
        ).one_or_none()
        if row is None:
            raise NotFoundError(
                "no such resource", field="name", expected="an existing resource", actual=str(rname)
            )
        return row

    def get_resource_info(self, name: str | ResourceName) -> ResourceInfo:
        rname = name if isinstance(name, ResourceName) else ResourceName.parse(name)
        with self._read() as conn:
            return _resource_info(self._resource_row(conn, rname))

    def get_resource(self, name: str | ResourceName, *, version: int | None = None) -> Resource:
        """The plaintext of a resource's current (or given) version."""
        rname = name if isinstance(name, ResourceName) else ResourceName.parse(name)
        ring = self.kek_ring
        rv = t.resource_versions
        with self._read() as conn:
            row = self._resource_row(conn, rname)
            want = int(row.current_version) if version is None else version
            vrow = conn.execute(
                select(rv).where(rv.c.resource_id == row.id, rv.c.version == want)
            ).one_or_none()
        if vrow is None:
            raise NotFoundError(
                "no such resource version",
                field="version",
                expected=f"1..{row.current_version}",
                actual=want,
            )
        data = open_envelope(
            ring, _envelope(vrow), envelope_aad("resource_versions", str(rname), want)
        )
        return Resource(info=_resource_info(row), version=want, data=data)

    def resource_for_release(self, name: str | ResourceName) -> ResourceRelease:
        """A live resource's current version and its release policy, in one statement; the
        plaintext stays sealed until :meth:`open_release`."""
        rname = name if isinstance(name, ResourceName) else ResourceName.parse(name)
        with self._raw_read() as dbapi_conn:
            rows, _ = _RESOURCE_FOR_RELEASE.execute(
                dbapi_conn,
                self._dialect,
                {"repo": rname.repo, "type": rname.type, "tag": rname.tag},
            )
        row = rows[0] if rows else None
        if row is None:
            raise NotFoundError(
                "no such resource", field="name", expected="an existing resource", actual=str(rname)
            )
        if row.rv_version is None:
            raise NotFoundError(
                "no such resource version",
                field="version",
                expected=f"1..{row.current_version}",
                actual=int(row.current_version),
            )
        return ResourceRelease(
            info=_resource_info(row),
            version=int(row.rv_version),
            policy=_prefixed_policy(row, "p"),
            envelope=_envelope(row),
        )

    def open_release(self, release: ResourceRelease) -> Resource:
        """The plaintext of a :meth:`resource_for_release` result."""
        data = open_envelope(
            self.kek_ring,
            release.envelope,
            envelope_aad("resource_versions", str(release.info.name), release.version),
        )
        return Resource(info=release.info, version=release.version, data=data)

    def list_resources(self) -> list[ResourceInfo]:
        r = t.resources
        query = select(r).where(~r.c.deleted).order_by(r.c.repo, r.c.type, r.c.tag)
        with self._read() as conn:
            return [_resource_info(row) for row in conn.execute(query).all()]

    def delete_resource(
        self, name: str | ResourceName, *, actor: str, now: datetime | None = None
    ) -> None:
        """Hide a resource from get/list (its encrypted versions are kept; a later put revives it
        with the next version number)."""
        rname = name if isinstance(name, ResourceName) else ResourceName.parse(name)
        _check_actor(actor)
        at = _now(now)
        with self._tx() as conn:
            row = self._resource_row(conn, rname)
            conn.execute(
                update(t.resources)
                .where(t.resources.c.id == row.id)
                .values(deleted=True, updated_at=at)
            )
            append_entry(
                conn,
                actor=actor,
                action="resource.delete",
                target=str(rname),
                outcome="ok",
                detail={"version": int(row.current_version)},
                now=at,
            )

    # -- keys (KMS) --------------------------------------------------------------------------

    def create_key(
        self,
        key_id: str,
        key_type: KeyType,
        material: bytes,
        *,
        public_key: bytes | None = None,
        exportable: bool = False,
        policy_id: str | None = None,
        rotation_period: timedelta | None = None,
        expires_at: datetime | None = None,
        actor: str,
        now: datetime | None = None,
    ) -> KeyInfo:
        """Store a new key (version 1, enabled). ``material`` is envelope-encrypted at once."""
        _check_id("key id", key_id)
        if key_type not in t.KEY_TYPES:
            raise UsageError(
                "unknown key type", field="type", expected=", ".join(t.KEY_TYPES), actual=key_type
            )
        secret = _check_size("key material", material, MAX_KEY_MATERIAL_BYTES)
        if public_key is not None:
            _check_size("public key", public_key, MAX_KEY_MATERIAL_BYTES)
        _check_actor(actor)
        period = self._period(rotation_period)
        at = _now(now)
        if expires_at is not None and _now(expires_at) <= at:
            raise UsageError(
                "a key's expiry lies in the future",
                field="expires_at",
                expected=f"> {at.isoformat()}",
                actual=expires_at.isoformat(),
            )
        ring = self.kek_ring
        try:
            with self._tx() as conn:
                self._require_policy(conn, policy_id, "resource")
                conn.execute(
                    t.keys.insert().values(
                        id=key_id,
                        type=key_type,
                        state="enabled",
                        deletion_date=None,
                        rotation_period_s=period,
                        next_rotation_at=None if period is None else at + timedelta(seconds=period),
                        expires_at=expires_at,
                        exportable=bool(exportable),
                        policy_id=policy_id,
                        current_version=1,
                        created_at=at,
                        updated_at=at,
                    )
                )
                self._insert_key_version(conn, ring, key_id, 1, secret, public_key, at)
                append_entry(
                    conn,
                    actor=actor,
                    action="key.create",
                    target=key_id,
                    outcome="ok",
                    detail={"type": key_type, "version": 1, "exportable": bool(exportable)},
                    now=at,
                )
                return _key_info(conn.execute(select(t.keys).where(t.keys.c.id == key_id)).one())
        except IntegrityError as exc:
            raise ConflictError(
                "a key with this id exists", field="key id", expected="a new id", actual=key_id
            ) from exc

    @staticmethod
    def _period(rotation_period: timedelta | None) -> int | None:
        if rotation_period is None:
            return None
        seconds = int(rotation_period.total_seconds())
        if seconds < 86400:
            raise UsageError(
                "a rotation period is at least a day",
                field="rotation_period",
                expected=">= 1 day",
                actual=str(rotation_period),
            )
        return seconds

    @staticmethod
    def _insert_key_version(
        conn: Connection,
        ring: KekRing,
        key_id: str,
        version: int,
        material: bytes,
        public_key: bytes | None,
        at: datetime,
    ) -> None:
        env = seal_envelope(ring, material, envelope_aad("key_versions", key_id, version))
        conn.execute(
            t.key_versions.insert().values(
                key_id=key_id,
                version=version,
                state="enabled",
                public_key=public_key,
                created_at=at,
                **_envelope_values(env),
            )
        )

    def _key_row(self, conn: Connection, key_id: str, *, lock: bool = False) -> Row[Any]:
        _check_id("key id", key_id)
        query = select(t.keys).where(t.keys.c.id == key_id)
        row = conn.execute(query.with_for_update() if lock else query).one_or_none()
        if row is None:
            raise NotFoundError(
                "no such key", field="key id", expected="an existing key", actual=key_id
            )
        return row

    def get_key(self, key_id: str) -> KeyInfo:
        with self._read() as conn:
            return _key_info(self._key_row(conn, key_id))

    def list_keys(self, *, include_destroyed: bool = True) -> list[KeyInfo]:
        query = select(t.keys).order_by(t.keys.c.id)
        if not include_destroyed:
            query = query.where(t.keys.c.state != "destroyed")
        with self._read() as conn:
            return [_key_info(r) for r in conn.execute(query).all()]

    def key_versions(self, key_id: str) -> list[KeyVersionInfo]:
        kv = t.key_versions
        with self._read() as conn:
            self._key_row(conn, key_id)
            rows = conn.execute(select(kv).where(kv.c.key_id == key_id).order_by(kv.c.version))
            return [_key_version(r) for r in rows.all()]

    def rotate_key(
        self,
        key_id: str,
        material: bytes,
        *,
        public_key: bytes | None = None,
        actor: str,
        now: datetime | None = None,
        due_by: datetime | None = None,
    ) -> KeyVersionInfo:
        """Add a new version and make it current (older versions stay usable to decrypt/verify).

        ``due_by`` (the scheduler's rotations): rotate only when the key's rotation date is at or
        before it, checked under the row lock, so replicas racing one due date add one version;
        otherwise :class:`LifecycleError` (field ``next_rotation_at``)."""
        secret = _check_size("key material", material, MAX_KEY_MATERIAL_BYTES)
        if public_key is not None:
            _check_size("public key", public_key, MAX_KEY_MATERIAL_BYTES)
        _check_actor(actor)
        ring = self.kek_ring
        at = _now(now)
        with self._tx() as conn:
            row = self._key_row(conn, key_id, lock=True)
            if row.state != "enabled":
                raise LifecycleError(
                    "only an enabled key rotates",
                    field="state",
                    expected="enabled",
                    actual=row.state,
                )
            if due_by is not None and (
                row.next_rotation_at is None or row.next_rotation_at > due_by
            ):
                raise LifecycleError(
                    "the key is not due for rotation (another replica rotated it)",
                    field="next_rotation_at",
                    expected=f"<= {due_by.isoformat()}",
                    actual=None
                    if row.next_rotation_at is None
                    else row.next_rotation_at.isoformat(),
                )
            version = int(row.current_version) + 1
            period = row.rotation_period_s
            self._insert_key_version(conn, ring, key_id, version, secret, public_key, at)
            conn.execute(
                update(t.keys)
                .where(t.keys.c.id == key_id)
                .values(
                    current_version=version,
                    updated_at=at,
                    next_rotation_at=None
                    if period is None
                    else at + timedelta(seconds=int(period)),
                )
            )
            append_entry(
                conn,
                actor=actor,
                action="key.rotate",
                target=key_id,
                outcome="ok",
                detail={"version": version},
                now=at,
            )
            kv = t.key_versions
            return _key_version(
                conn.execute(select(kv).where(kv.c.key_id == key_id, kv.c.version == version)).one()
            )

    def key_material(
        self, key_id: str, *, version: int | None = None, now: datetime | None = None
    ) -> tuple[KeyVersionInfo, bytes]:
        """Unwrap a key version's material for an operation inside the service. Refused unless
        the key is enabled and unexpired and the version is enabled."""
        ring = self.kek_ring
        at = _now(now)
        kv = t.key_versions
        with self._read() as conn:
            row = self._key_row(conn, key_id)
            want = int(row.current_version) if version is None else version
            vrow = conn.execute(
                select(kv).where(kv.c.key_id == key_id, kv.c.version == want)
            ).one_or_none()
        if row.state != "enabled":
            raise LifecycleError(
                f"key {key_id} is {row.state}", field="state", expected="enabled", actual=row.state
            )
        if row.expires_at is not None and row.expires_at <= at:
            raise LifecycleError(
                f"key {key_id} expired",
                field="expires_at",
                expected=f"> {at.isoformat()}",
                actual=row.expires_at.isoformat(),
            )
        if vrow is None:
            raise NotFoundError(
                "no such key version",
                field="version",
                expected=f"1..{row.current_version}",
                actual=want,
            )
        if vrow.state != "enabled":
            raise LifecycleError(
                f"key {key_id} version {want} is {vrow.state}",
                field="version state",
                expected="enabled",
                actual=vrow.state,
            )
        material = open_envelope(ring, _envelope(vrow), envelope_aad("key_versions", key_id, want))
        return _key_version(vrow), material

    def _transition(
        self,
        key_id: str,
        target: KeyState,
        *,
        actor: str,
        now: datetime | None,
        deletion_date: datetime | None = None,
        allowed_from: frozenset[str],
    ) -> KeyInfo:
        _check_actor(actor)
        at = _now(now)
        with self._tx() as conn:
            row = self._key_row(conn, key_id, lock=True)
            current = str(row.state)
            if current not in allowed_from or target not in _TRANSITIONS[current]:
                raise LifecycleError(
                    f"key {key_id} cannot go from {current} to {target}",
                    field="state",
                    expected=f"a state that may become {target}",
                    actual=current,
                    hint="destroyed is final; pending_deletion returns only via cancel (to disabled)",
                )
            conn.execute(
                update(t.keys)
                .where(t.keys.c.id == key_id)
                .values(state=target, deletion_date=deletion_date, updated_at=at)
            )
            detail: dict[str, Any] = {"from": current, "to": target}
            if deletion_date is not None:
                detail["deletion_date"] = deletion_date.isoformat()
            append_entry(
                conn,
                actor=actor,
                action=f"key.{target}",
                target=key_id,
                outcome="ok",
                detail=detail,
                now=at,
            )
            return _key_info(self._key_row(conn, key_id))

    def enable_key(self, key_id: str, *, actor: str, now: datetime | None = None) -> KeyInfo:
        return self._transition(
            key_id, "enabled", actor=actor, now=now, allowed_from=frozenset({"disabled"})
        )

    def disable_key(self, key_id: str, *, actor: str, now: datetime | None = None) -> KeyInfo:
        return self._transition(
            key_id, "disabled", actor=actor, now=now, allowed_from=frozenset({"enabled"})
        )

    def schedule_key_deletion(
        self, key_id: str, *, waiting_days: int, actor: str, now: datetime | None = None
    ) -> KeyInfo:
        """Enabled or disabled → pending_deletion; destroyed ``waiting_days`` (7..30) later."""
        if (
            isinstance(waiting_days, bool)
            or not isinstance(waiting_days, int)
            or not DELETION_WAIT_MIN_DAYS <= waiting_days <= DELETION_WAIT_MAX_DAYS
        ):
            raise UsageError(
                "the deletion waiting period is out of range",
                field="waiting_days",
                expected=f"{DELETION_WAIT_MIN_DAYS}..{DELETION_WAIT_MAX_DAYS}",
                actual=waiting_days,
            )
        at = _now(now)
        return self._transition(
            key_id,
            "pending_deletion",
            actor=actor,
            now=at,
            deletion_date=at + timedelta(days=waiting_days),
            allowed_from=frozenset({"enabled", "disabled"}),
        )

    def cancel_key_deletion(
        self, key_id: str, *, actor: str, now: datetime | None = None
    ) -> KeyInfo:
        """pending_deletion → disabled (enable it explicitly afterwards)."""
        return self._transition(
            key_id, "disabled", actor=actor, now=now, allowed_from=frozenset({"pending_deletion"})
        )

    def destroy_due_keys(self, *, actor: str = "system", now: datetime | None = None) -> list[str]:
        """Destroy every key whose deletion date has passed: state destroyed (final), all its
        versions' wrapped material erased. Returns the destroyed ids."""
        _check_actor(actor)
        at = _now(now)
        done: list[str] = []
        with self._tx() as conn:
            due = (
                conn.execute(
                    select(t.keys.c.id)
                    .where(t.keys.c.state == "pending_deletion", t.keys.c.deletion_date <= at)
                    .order_by(t.keys.c.id)
                    .with_for_update()
                )
                .scalars()
                .all()
            )
            for key_id in due:
                conn.execute(
                    update(t.key_versions)
                    .where(t.key_versions.c.key_id == key_id)
                    .values(
                        state="destroyed",
                        ciphertext=None,
                        wrapped_key=None,
                        kek_id=None,
                        nonce=None,
                        aad=None,
                    )
                )
                conn.execute(
                    update(t.keys)
                    .where(t.keys.c.id == key_id)
                    .values(state="destroyed", deletion_date=None, updated_at=at)
                )
                append_entry(
                    conn,
                    actor=actor,
                    action="key.destroyed",
                    target=str(key_id),
                    outcome="ok",
                    detail={"from": "pending_deletion", "to": "destroyed"},
                    now=at,
                )
                done.append(str(key_id))
        return done

    def keys_due_for_rotation(self, *, now: datetime | None = None) -> list[KeyInfo]:
        at = _now(now)
        query = (
            select(t.keys)
            .where(t.keys.c.state == "enabled", t.keys.c.next_rotation_at <= at)
            .order_by(t.keys.c.id)
        )
        with self._read() as conn:
            return [_key_info(r) for r in conn.execute(query).all()]

    # -- sessions and nonces -----------------------------------------------------------------

    def create_session(
        self,
        tee: str,
        *,
        ttl: timedelta,
        now: datetime | None = None,
        session_id: str | None = None,
        nonce: str | None = None,
    ) -> Session:
        """A KBS session with its single-use nonce (both random unless given)."""
        if not isinstance(tee, str) or not re.fullmatch(r"[a-z0-9-]{1,16}", tee):
            raise UsageError("invalid tee", field="tee", expected="e.g. sgx, tdx, snp", actual=tee)
        if not timedelta(0) < ttl <= MAX_SESSION_TTL:
            raise UsageError(
                "invalid session lifetime",
                field="ttl",
                expected=f"0 < ttl <= {MAX_SESSION_TTL}",
                actual=str(ttl),
            )
        sid = secrets.token_hex(16) if session_id is None else _check_id("session id", session_id)
        value = secrets.token_urlsafe(32) if nonce is None else nonce
        if not _NONCE.fullmatch(value):
            raise UsageError(
                "invalid nonce", field="nonce", expected="16-128 base64 characters", actual=value
            )
        at = _now(now)
        expires = at + ttl
        try:
            with self._write(unsynced=True) as conn:
                _INSERT_SESSION.on(
                    conn, {"id": sid, "tee": tee, "created_at": at, "expires_at": expires}
                )
                _INSERT_NONCE.on(
                    conn,
                    {"value": value, "session_id": sid, "created_at": at, "expires_at": expires},
                )
        except ConflictError as exc:
            raise ConflictError(
                "session id or nonce already used",
                field="session",
                expected="fresh values",
                actual=sid,
            ) from exc
        return Session(sid, value, tee, "pending", at, expires, None, None)

    def get_session(self, session_id: str, *, now: datetime | None = None) -> Session:
        """A live session; an expired one is reported as such (KBS answers 401)."""
        return self.kbs_session(session_id, now=now)[0]

    def kbs_session(
        self, session_id: str, *, now: datetime | None = None, policy_id: str | None = None
    ) -> tuple[Session, Policy | None]:
        """A live session (as :meth:`get_session`) and, read in the same statement, the policy
        ``policy_id`` (None when there is no such policy or none was asked for)."""
        _check_id("session id", session_id)
        if policy_id is not None:
            _check_id("policy id", policy_id)
        at = _now(now)
        with self._raw_read() as dbapi_conn:
            rows, _ = _SESSION_AND_POLICY.execute(
                dbapi_conn, self._dialect, {"sid": session_id, "pid": policy_id}
            )
        row = rows[0] if rows else None
        if row is None:
            raise NotFoundError(
                "no such session", field="session id", expected="a live session", actual=session_id
            )
        if row.expires_at <= at:
            raise NotFoundError(
                "the session expired",
                code="SESSION_EXPIRED",
                field="expires_at",
                expected=f"> {at.isoformat()}",
                actual=row.expires_at.isoformat(),
            )
        nonce = row.nonce_value
        session = _session(row, "" if nonce is None else str(nonce))
        return session, _prefixed_policy(row, "p")

    def _consume(
        self, conn: Connection | RawConnection, session_id: str, nonce: str, at: datetime
    ) -> None:
        params = {"n_value": nonce, "n_sid": session_id, "n_at": at}
        _, count = _CONSUME_NONCE.on(conn, params)
        if count == 1:
            return
        rows, _ = _NONCE_ROW.on(conn, params)
        row = rows[0] if rows else None
        if row is None:
            raise NonceError(
                "unknown nonce for this session",
                code="NONCE_UNKNOWN",
                field="nonce",
                expected="the nonce issued with this session",
                actual=nonce[:64],
            )
        if row.consumed_at is not None:
            raise NonceError(
                "the nonce was already used (replay)",
                code="NONCE_REPLAYED",
                field="nonce",
                expected="an unused nonce",
                actual=f"consumed at {row.consumed_at.isoformat()}",
            )
        raise NonceError(
            "the nonce expired",
            code="NONCE_EXPIRED",
            field="nonce",
            expected=f"expires after {at.isoformat()}",
            actual=row.expires_at.isoformat(),
        )

    def consume_nonce(self, session_id: str, nonce: str, *, now: datetime | None = None) -> None:
        """Mark the session's nonce used. Of concurrent consumers exactly one succeeds: the
        UPDATE matches only while ``consumed_at IS NULL``; the others raise :class:`NonceError`."""
        _check_id("session id", session_id)
        at = _now(now)
        with self._write(unsynced=True) as conn:
            self._consume(conn, session_id, nonce, at)

    def attest_session(
        self,
        session_id: str,
        nonce: str,
        *,
        tee_pubkey: str,
        token: str,
        now: datetime | None = None,
    ) -> Session:
        """Consume the nonce and record the attested TEE key and token, atomically."""
        _check_id("session id", session_id)
        for field, value in (("tee_pubkey", tee_pubkey), ("token", token)):
            if not isinstance(value, str):
                raise UsageError(
                    f"{field} is text", field=field, expected="str", actual=type(value)
                )
            _check_size(field, value.encode("utf-8"), MAX_SESSION_FIELD_BYTES)
        at = _now(now)
        with self._write(unsynced=True) as conn:
            # One statement writes the live session (taking its row lock on PostgreSQL) and
            # returns it; the nonce is then consumed in the same transaction (a NonceError rolls
            # both back).
            rows, _ = _ATTEST_SESSION.on(
                conn, {"s_id": session_id, "s_at": at, "s_tee_pubkey": tee_pubkey, "s_token": token}
            )
            row = rows[0] if rows else None
            if row is None:
                exists, _ = _SESSION_EXISTS.on(conn, {"sid": session_id})
                raise NotFoundError(
                    "no live session",
                    code="SESSION_EXPIRED" if exists else "NOT_FOUND",
                    field="session id",
                    expected="a live session",
                    actual=session_id,
                )
            self._consume(conn, session_id, nonce, at)
        # The row as just written (RETURNING; no second query).
        return Session(
            id=session_id,
            nonce=nonce,
            tee=str(row.tee),
            state="attested",
            created_at=row.created_at,
            expires_at=row.expires_at,
            tee_pubkey=tee_pubkey,
            token=token,
        )

    def sweep_expired(self, *, now: datetime | None = None) -> SweepResult:
        """Delete expired sessions (their nonces go with them) and expired stray nonces."""
        at = _now(now)
        with self._tx(unsynced=True) as conn:
            n = conn.execute(delete(t.nonces).where(t.nonces.c.expires_at <= at)).rowcount
            s = conn.execute(delete(t.sessions).where(t.sessions.c.expires_at <= at)).rowcount
        return SweepResult(sessions=int(s), nonces=int(n))

    # -- signing keyrings (server state shared by replicas) ------------------------------------

    def keyring_version(self, purpose: str) -> int:
        """The stored version of the ``purpose`` keyring (0: none saved yet). A cheap freshness
        check: reload with :meth:`load_keyring` only when it moved."""
        _check_purpose(purpose)
        sk = t.signing_keyrings
        with self._read() as conn:
            version = conn.execute(
                select(sk.c.version).where(sk.c.purpose == purpose)
            ).scalar_one_or_none()
        return 0 if version is None else int(version)

    def load_keyring(
        self, purpose: str, loads: Callable[[bytes, Callable[[bytes], bytes]], _T]
    ) -> tuple[_T, int] | None:
        """The stored ``purpose`` keyring as ``loads(wrapped, unwrap)`` makes it (e.g.
        ``nacre.token.Keyring.loads``), with its version; None when none was saved yet. ``unwrap``
        opens the row's envelope (bound to purpose and version), and nothing else."""
        _check_purpose(purpose)
        ring = self.kek_ring
        sk = t.signing_keyrings
        with self._read() as conn:
            row = conn.execute(select(sk).where(sk.c.purpose == purpose)).one_or_none()
        if row is None:
            return None
        version = int(row.version)
        env = _envelope(row)
        aad = envelope_aad("signing_keyrings", purpose, version)

        def unwrap(data: bytes) -> bytes:
            if data != env.ciphertext:
                raise EnvelopeError(
                    "unwrap was handed bytes other than the stored keyring",
                    field="keyring",
                    expected="the ciphertext load_keyring passed",
                    actual=f"{len(data)} bytes",
                )
            return open_envelope(ring, env, aad)

        return loads(env.ciphertext, unwrap), version

    def save_keyring(
        self,
        purpose: str,
        dump: Callable[[Callable[[bytes], bytes]], bytes],
        *,
        expected_version: int,
        event: str,
        actor: str,
        detail: Mapping[str, Any] | None = None,
        now: datetime | None = None,
    ) -> int:
        """Save the ``purpose`` keyring over ``expected_version`` (0: none yet) and return the new
        version, which is one more. ``dump(wrap)`` (e.g. ``Keyring.dump``) serialises the ring and
        passes it through ``wrap``, which envelope-encrypts it for this row.

        Compare-and-swap: when another writer saved first (the stored version is no longer
        ``expected_version``), nothing is written and :class:`ConflictError` (code
        ``KEYRING_CONFLICT``) is raised: reload and retry. The audit entry (action
        ``signing_keyring.<event>``) names the purpose and version, never key material.
        """
        _check_purpose(purpose)
        _check_actor(actor)
        if not isinstance(event, str) or not re.fullmatch(r"[a-z_]{1,32}", event):
            raise UsageError("invalid keyring event", field="event", expected="e.g. rotate")
        if isinstance(expected_version, bool) or not isinstance(expected_version, int):
            raise UsageError("a keyring version is an int", field="expected_version")
        if expected_version < 0:
            raise UsageError("a keyring version is >= 0", field="expected_version")
        ring = self.kek_ring
        at = _now(now)
        version = expected_version + 1
        aad = envelope_aad("signing_keyrings", purpose, version)
        sealed: list[Envelope] = []

        def wrap(clear: bytes) -> bytes:
            _check_size("signing keyring", clear, MAX_SIGNING_KEYRING_BYTES)
            env = seal_envelope(ring, clear, aad)
            sealed.append(env)
            return env.ciphertext

        wrapped = dump(wrap)
        if len(sealed) != 1 or wrapped != sealed[0].ciphertext:
            raise UsageError(
                "dump must pass the keyring through wrap exactly once and return its result",
                field="dump",
                expected="one wrap call",
                actual=f"{len(sealed)} calls",
            )
        values = {**_envelope_values(sealed[0]), "version": version, "updated_at": at}
        sk = t.signing_keyrings
        try:
            with self._tx() as conn:
                if expected_version == 0:
                    conn.execute(sk.insert().values(purpose=purpose, **values))
                else:
                    result = conn.execute(
                        update(sk)
                        .where(sk.c.purpose == purpose, sk.c.version == expected_version)
                        .values(**values)
                    )
                    if result.rowcount != 1:
                        raise _keyring_conflict(purpose, expected_version)
                append_entry(
                    conn,
                    actor=actor,
                    action=f"signing_keyring.{event}",
                    target=purpose,
                    outcome="ok",
                    detail={**(detail or {}), "version": version},
                    now=at,
                )
        except ConflictError as exc:
            if exc.code == "KEYRING_CONFLICT":
                raise
            raise _keyring_conflict(purpose, expected_version) from exc
        return version

    # -- admin keys (server state shared by replicas) ----------------------------------------

    @staticmethod
    def _admin_key_values(
        kid: str, name: str, jwk: Mapping[str, str], roles: Sequence[str]
    ) -> dict[str, Any]:
        _check_kid(kid)
        if not isinstance(name, str) or not _ADMIN_NAME.fullmatch(name):
            raise UsageError(
                "invalid admin key name",
                field="name",
                expected="1-64 of [A-Za-z0-9_-]",
                actual=name,
            )
        jwk_text = json.dumps(dict(jwk), separators=(",", ":"), sort_keys=True)
        _check_size("admin key jwk", jwk_text.encode("utf-8"), MAX_ADMIN_JWK_BYTES)
        if not roles or not all(isinstance(r, str) and 0 < len(r) <= 32 for r in roles):
            raise UsageError("admin key roles", field="roles", expected="1+ role names")
        roles_text = json.dumps(list(dict.fromkeys(roles)))
        return {"kid": kid, "name": name, "jwk": jwk_text, "roles": roles_text}

    def put_admin_key(
        self,
        kid: str,
        name: str,
        jwk: Mapping[str, str],
        roles: Sequence[str],
        *,
        actor: str,
        max_keys: int,
        event: str = "register",
        now: datetime | None = None,
    ) -> AdminKeyRecord:
        """Register an admin public key, or replace the name and roles of a registered (or
        revoked: it is active again) one. At most ``max_keys`` active keys. The caller checked
        that ``kid`` is the thumbprint of ``jwk``. Audit: ``admin_key.<event>``."""
        values = self._admin_key_values(kid, name, jwk, roles)
        _check_actor(actor)
        at = _now(now)
        ak = t.admin_keys
        with self._tx() as conn:
            row = conn.execute(select(ak).where(ak.c.kid == kid).with_for_update()).one_or_none()
            if row is None or row.revoked_at is not None:
                active = conn.execute(
                    select(func.count()).select_from(ak).where(ak.c.revoked_at.is_(None))
                ).scalar_one()
                if int(active) >= max_keys:
                    raise UsageError(
                        "too many admin keys", field="keys", expected=f"<= {max_keys} active"
                    )
            if row is None:
                conn.execute(ak.insert().values(**values, created_at=at, revoked_at=None))
            else:
                conn.execute(
                    update(ak)
                    .where(ak.c.kid == kid)
                    .values(name=values["name"], roles=values["roles"], revoked_at=None)
                )
            stored = _admin_key(conn.execute(select(ak).where(ak.c.kid == kid)).one())
            append_entry(
                conn,
                actor=actor,
                action=f"admin_key.{event}",
                target=kid,
                outcome="ok",
                detail={"name": stored.name, "roles": list(stored.roles)},
                now=at,
            )
            return stored

    def bootstrap_admin_key(
        self,
        kid: str,
        name: str,
        jwk: Mapping[str, str],
        roles: Sequence[str],
        *,
        actor: str = "system",
        now: datetime | None = None,
    ) -> AdminKeyRecord | None:
        """Register the first admin key, only while no active admin key exists (replicas
        starting together: exactly one registers). Returns it, or None when one existed."""
        values = self._admin_key_values(kid, name, jwk, roles)
        _check_actor(actor)
        at = _now(now)
        ak = t.admin_keys
        with self._tx() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _BOOTSTRAP_LOCK})
            active = conn.execute(
                select(func.count()).select_from(ak).where(ak.c.revoked_at.is_(None))
            ).scalar_one()
            if int(active):
                return None
            conn.execute(delete(ak).where(ak.c.kid == kid))
            conn.execute(ak.insert().values(**values, created_at=at, revoked_at=None))
            append_entry(
                conn,
                actor=actor,
                action="admin_key.register",
                target=kid,
                outcome="ok",
                detail={"name": name, "roles": list(dict.fromkeys(roles)), "bootstrap": True},
                now=at,
            )
            return _admin_key(conn.execute(select(ak).where(ak.c.kid == kid)).one())

    def get_admin_key(self, kid: str) -> AdminKeyRecord | None:
        """The key ``kid`` if registered and not revoked."""
        if not isinstance(kid, str) or not _KID.fullmatch(kid):
            return None
        ak = t.admin_keys
        with self._read() as conn:
            row = conn.execute(
                select(ak).where(ak.c.kid == kid, ak.c.revoked_at.is_(None))
            ).one_or_none()
        return None if row is None else _admin_key(row)

    def list_admin_keys(self, *, include_revoked: bool = False) -> list[AdminKeyRecord]:
        ak = t.admin_keys
        query = select(ak).order_by(ak.c.created_at, ak.c.kid)
        if not include_revoked:
            query = query.where(ak.c.revoked_at.is_(None))
        with self._read() as conn:
            return [_admin_key(r) for r in conn.execute(query).all()]

    def revoke_admin_key(self, kid: str, *, actor: str, now: datetime | None = None) -> bool:
        """Revoke an active admin key (its row stays, with ``revoked_at``); False if none.
        Audit: ``admin_key.remove``."""
        _check_kid(kid)
        _check_actor(actor)
        at = _now(now)
        ak = t.admin_keys
        with self._tx() as conn:
            result = conn.execute(
                update(ak).where(ak.c.kid == kid, ak.c.revoked_at.is_(None)).values(revoked_at=at)
            )
            if result.rowcount != 1:
                return False
            append_entry(
                conn,
                actor=actor,
                action="admin_key.remove",
                target=kid,
                outcome="ok",
                detail={},
                now=at,
            )
        return True

    # -- KEK maintenance ---------------------------------------------------------------------

    def rewrap_all(self, *, batch: int = 500) -> int:
        """Rewrap every data key under the current KEK (ciphertexts untouched); returns the count."""
        ring = self.kek_ring
        current = ring.current_id
        total = 0
        for table, keycols in (
            (t.resource_versions, ("resource_id", "version")),
            (t.key_versions, ("key_id", "version")),
            (t.signing_keyrings, ("purpose",)),
        ):
            while True:
                with self._tx() as conn:
                    rows = conn.execute(
                        select(table)
                        .where(table.c.kek_id != current, table.c.kek_id.is_not(None))
                        .limit(batch)
                        .with_for_update()
                    ).all()
                    for row in rows:
                        env = rewrap(ring, _envelope(row))
                        conn.execute(
                            update(table)
                            .where(*(table.c[k] == getattr(row, k) for k in keycols))
                            .values(wrapped_key=env.wrapped_key, kek_id=env.kek_id)
                        )
                    total += len(rows)
                if len(rows) < batch:
                    break
        return total

    def kek_usage(self) -> dict[str, int]:
        """Rows per KEK id (a KEK with no rows may be retired)."""
        usage: dict[str, int] = dict.fromkeys(self.kek_ring.ids, 0)
        with self._read() as conn:
            for table in (t.resource_versions, t.key_versions, t.signing_keyrings):
                rows = conn.execute(
                    select(table.c.kek_id, func.count())
                    .where(table.c.kek_id.is_not(None))
                    .group_by(table.c.kek_id)
                ).all()
                for kek_id, count in rows:
                    usage[str(kek_id)] = usage.get(str(kek_id), 0) + int(count)
        return usage

    def retire_unused_keks(self) -> list[str]:
        ring = self.kek_ring
        retired = [
            k
            for k, n in self.kek_usage().items()
            if n == 0 and k != ring.current_id and k in ring.ids
        ]
        for kek_id in retired:
            ring.retire(kek_id)
        return retired


def default_url(data_dir: str | Path) -> str:
    return f"sqlite:///{Path(data_dir) / 'nacre.db'}"


def open_store(
    url: str,
    *,
    sealer: KekSealer | None = None,
    data_dir: str | Path | None = None,
    kek_policy: SealPolicyName = "mrsigner",
    migrate: bool = True,
) -> Store:
    """Connect, run the Alembic migrations up to head, and load (or create) the sealed KEKs.

    ``data_dir`` holds ``kek.json``; for a SQLite URL it defaults to the database's directory.
    Without ``sealer`` the store serves everything but secrets (e.g. ``nacre audit verify``).
    ``migrate=False`` opens an existing database as it is (refusing one not at the head revision)
    instead of creating or upgrading the schema.
    """
    engine = make_engine(url)
    try:
        if migrate:
            upgrade_head(engine)
        else:
            revision = current_revision(engine)
            if revision != SCHEMA_HEAD:
                raise UsageError(
                    "not a nacre database at this nacre's schema revision",
                    field="schema revision",
                    expected=SCHEMA_HEAD,
                    actual=revision,
                    hint="check the URL; nacre serve upgrades an older schema",
                )
        ring: KekRing | None = None
        if sealer is not None:
            directory = Path(data_dir) if data_dir is not None else None
            if directory is None:
                db_file = sqlite_path(url)
                if db_file is None:
                    raise UsageError(
                        "a PostgreSQL store needs a data directory for its sealed KEK",
                        field="data_dir",
                        expected="a directory",
                        actual=None,
                    )
                directory = db_file.parent
            ring = KekRing.load_or_create(directory, sealer, policy=kek_policy)
    except BaseException:
        engine.dispose()
        raise
    return Store(engine, ring)
