"""The hash-chained, append-only audit log, and its offline check.

Entry ``n`` carries ``prev_hash`` = hash of entry ``n - 1`` (64 zeros for entry 1) and
``hash = SHA-256(canonical JSON of {seq, time, actor, action, target, outcome, detail, prev_hash})``,
canonical JSON being sorted keys, no whitespace, UTF-8, no NaN. The single ``audit_head`` row holds
the last ``seq`` and ``hash``: appenders lock it (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite
transactions are ``BEGIN IMMEDIATE``, one writer at a time), so two writers never fork the chain,
and a truncated tail shows as a head that names a missing entry.

``detail`` is a small JSON object about the event, never secret material: keys that look like
secrets (``secret``, ``plaintext``, ``private``, ``password``, ``material``, ``data_key``) and
non-JSON values are refused before anything is written.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import bindparam, select, update
from sqlalchemy.engine import Connection

from nacre.errors import LimitExceededError, UsageError
from nacre.store._fast import Prepared, RawConnection
from nacre.store._schema import AUDIT_GENESIS_HASH, audit, audit_head
from nacre.store.errors import StoreError

if TYPE_CHECKING:
    from nacre.store._store import Store

__all__ = [
    "GENESIS_HASH",
    "MAX_AUDIT_DETAIL_BYTES",
    "AuditEntry",
    "ChainReport",
    "PendingEntry",
    "append_entry",
    "append_prepared",
    "entry_hash",
    "iter_entries",
    "prepare_entry",
    "verify_chain",
    "verify_chain_on",
]

GENESIS_HASH: Final = AUDIT_GENESIS_HASH
#: The canonical JSON of one entry's ``detail`` may not exceed this.
MAX_AUDIT_DETAIL_BYTES: Final = 16 * 1024
_FORBIDDEN_KEY_PARTS: Final = ("secret", "plaintext", "private", "password", "material", "data_key")
_BATCH: Final = 1000
# The append path's statements, built once (the hot path of every release and denial).
_LOCK_HEAD: Final = Prepared(
    select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == 1).with_for_update()
)
_ENTRY_COLUMNS: Final = (
    "seq",
    "time",
    "actor",
    "action",
    "target",
    "outcome",
    "detail",
    "prev_hash",
    "hash",
)
_INSERT_ENTRY: Final = Prepared(
    audit.insert().values({name: bindparam(name) for name in _ENTRY_COLUMNS})
)
_MOVE_HEAD: Final = Prepared(
    update(audit_head)
    .where(audit_head.c.id == 1)
    .values(seq=bindparam("h_seq"), hash=bindparam("h_hash"))
)


def _canonical(obj: object) -> str:
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def _iso(t: datetime) -> str:
    if t.tzinfo is None:
        raise UsageError(
            "audit times are timezone-aware", field="now", expected="aware datetime", actual=t
        )
    return t.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class AuditEntry:
    seq: int
    time: str
    actor: str
    action: str
    target: str
    outcome: str
    detail: Mapping[str, Any]
    prev_hash: str
    hash: str

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "time": self.time,
            "actor": self.actor,
            "action": self.action,
            "target": self.target,
            "outcome": self.outcome,
            "detail": dict(self.detail),
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


def entry_hash(
    *,
    seq: int,
    time: str,
    actor: str,
    action: str,
    target: str,
    outcome: str,
    detail: Mapping[str, Any],
    prev_hash: str,
) -> str:
    """SHA-256 (hex) over the canonical JSON of the entry's fields."""
    body = {
        "seq": seq,
        "time": time,
        "actor": actor,
        "action": action,
        "target": target,
        "outcome": outcome,
        "detail": detail,
        "prev_hash": prev_hash,
    }
    return hashlib.sha256(_canonical(body).encode("utf-8")).hexdigest()


def _check_detail(detail: Mapping[str, Any], path: str = "detail") -> None:
    for key, value in detail.items():
        if not isinstance(key, str):
            raise UsageError(
                "audit detail keys are strings", field=path, expected="str", actual=repr(key)
            )
        lowered = key.lower()
        if any(part in lowered for part in _FORBIDDEN_KEY_PARTS):
            raise UsageError(
                "audit detail must never carry secret material",
                field=f"{path}.{key}",
                expected=f"no key containing any of {list(_FORBIDDEN_KEY_PARTS)}",
                actual=key,
            )
        if isinstance(value, Mapping):
            _check_detail(value, f"{path}.{key}")
        elif isinstance(value, bytes | bytearray | memoryview):
            raise UsageError(
                "audit detail holds no raw bytes",
                field=f"{path}.{key}",
                expected="JSON values (str, int, bool, null, lists, objects)",
                actual="bytes",
            )


def _detail_json(detail: Mapping[str, Any]) -> str:
    _check_detail(detail)
    try:
        text = _canonical(dict(detail))
    except (TypeError, ValueError) as exc:
        raise UsageError(
            "audit detail is not JSON", field="detail", expected="a JSON object", actual=str(exc)
        ) from exc
    if len(text.encode("utf-8")) > MAX_AUDIT_DETAIL_BYTES:
        raise LimitExceededError(
            "audit detail is too large",
            field="detail",
            expected=f"<= {MAX_AUDIT_DETAIL_BYTES} bytes",
            actual=f"{len(text.encode('utf-8'))} bytes",
        )
    return text


@dataclass(frozen=True, slots=True)
class PendingEntry:
    """An entry checked and canonicalised, not yet chained (:func:`prepare_entry`)."""

    actor: str
    action: str
    target: str
    outcome: str
    detail_text: str
    detail: dict[str, Any]
    time: str


def prepare_entry(
    *,
    actor: str,
    action: str,
    target: str,
    outcome: str,
    detail: Mapping[str, Any],
    now: datetime,
) -> PendingEntry:
    """Check ``detail`` (no secrets, JSON, size) and fix the entry's fields; nothing is written."""
    detail_text = _detail_json(detail)
    detail_obj: dict[str, Any] = json.loads(detail_text)
    return PendingEntry(actor, action, target, outcome, detail_text, detail_obj, _iso(now))


def append_entry(
    conn: Connection,
    *,
    actor: str,
    action: str,
    target: str,
    outcome: str,
    detail: Mapping[str, Any],
    now: datetime,
) -> AuditEntry:
    """Append one entry inside the caller's transaction (which then commits or rolls back both)."""
    entry = prepare_entry(
        actor=actor, action=action, target=target, outcome=outcome, detail=detail, now=now
    )
    return append_prepared(conn, entry)


def append_prepared(conn: Connection | RawConnection, entry: PendingEntry) -> AuditEntry:
    """Chain ``entry`` after the current head, inside the caller's transaction."""
    # 1. Lock the chain head: concurrent appenders queue here (FOR UPDATE; BEGIN IMMEDIATE on SQLite).
    rows, _ = _LOCK_HEAD.on(conn, {})
    if len(rows) != 1:
        raise StoreError("the audit chain head row is missing", field="audit_head")
    head = rows[0]
    seq = int(head.seq) + 1
    prev_hash = str(head.hash)
    # 2. Hash the new entry over the canonical JSON of its fields and the previous hash.
    digest = entry_hash(
        seq=seq,
        time=entry.time,
        actor=entry.actor,
        action=entry.action,
        target=entry.target,
        outcome=entry.outcome,
        detail=entry.detail,
        prev_hash=prev_hash,
    )
    # 3. Insert it and move the head, in the same transaction.
    _INSERT_ENTRY.on(
        conn,
        {
            "seq": seq,
            "time": entry.time,
            "actor": entry.actor,
            "action": entry.action,
            "target": entry.target,
            "outcome": entry.outcome,
            "detail": entry.detail_text,
            "prev_hash": prev_hash,
            "hash": digest,
        },
    )
    _MOVE_HEAD.on(conn, {"h_seq": seq, "h_hash": digest})
    return AuditEntry(
        seq,
        entry.time,
        entry.actor,
        entry.action,
        entry.target,
        entry.outcome,
        entry.detail,
        prev_hash,
        digest,
    )


def iter_entries(conn: Connection, *, after: int = 0) -> Iterator[AuditEntry]:
    """Entries in ``seq`` order, read in batches. ``detail`` that is not JSON comes back as
    ``{"__unparseable__": <text>}`` (so that verification reports it as a broken hash)."""
    last = after
    while True:
        rows = conn.execute(
            select(audit).where(audit.c.seq > last).order_by(audit.c.seq).limit(_BATCH)
        ).all()
        if not rows:
            return
        for row in rows:
            try:
                detail = json.loads(row.detail)
            except ValueError:
                detail = {"__unparseable__": str(row.detail)}
            if not isinstance(detail, dict):
                detail = {"__not_an_object__": detail}
            yield AuditEntry(
                seq=int(row.seq),
                time=str(row.time),
                actor=str(row.actor),
                action=str(row.action),
                target=str(row.target),
                outcome=str(row.outcome),
                detail=detail,
                prev_hash=str(row.prev_hash),
                hash=str(row.hash),
            )
            last = int(row.seq)


@dataclass(frozen=True, slots=True)
class ChainReport:
    """The outcome of :func:`verify_chain`. When ``ok`` is false, ``broken_seq`` is the first entry
    that fails, ``field`` the check (``seq``, ``prev_hash``, ``hash``, ``head``) and
    ``expected``/``actual`` the values compared."""

    ok: bool
    entries: int
    head_seq: int
    head_hash: str
    broken_seq: int | None = None
    field: str | None = None
    expected: str | None = None
    actual: str | None = None
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "entries": self.entries,
            "head_seq": self.head_seq,
            "head_hash": self.head_hash,
            "broken": None
            if self.ok
            else {
                "seq": self.broken_seq,
                "field": self.field,
                "expected": self.expected,
                "actual": self.actual,
                "reason": self.reason,
            },
        }


def verify_chain_on(conn: Connection) -> ChainReport:
    """Walk the chain from entry 1, recomputing every hash and link; stop at the first break."""
    head = conn.execute(
        select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == 1)
    ).one()
    head_seq, head_hash = int(head.seq), str(head.hash)

    def broken(
        seq: int, count: int, field: str, expected: str, actual: str, reason: str
    ) -> ChainReport:
        return ChainReport(False, count, head_seq, head_hash, seq, field, expected, actual, reason)

    expected_seq = 1
    prev = GENESIS_HASH
    count = 0
    for entry in iter_entries(conn):
        # 1. Sequence numbers are contiguous from 1: a gap is a deleted entry.
        if entry.seq != expected_seq:
            return broken(
                expected_seq, count, "seq", str(expected_seq), str(entry.seq), "entry missing"
            )
        # 2. The link: this entry names the previous entry's hash.
        if entry.prev_hash != prev:
            return broken(entry.seq, count, "prev_hash", prev, entry.prev_hash, "link broken")
        # 3. The entry's own hash matches its contents.
        digest = entry_hash(
            seq=entry.seq,
            time=entry.time,
            actor=entry.actor,
            action=entry.action,
            target=entry.target,
            outcome=entry.outcome,
            detail=entry.detail,
            prev_hash=entry.prev_hash,
        )
        if digest != entry.hash:
            return broken(entry.seq, count, "hash", digest, entry.hash, "entry modified")
        prev = entry.hash
        expected_seq += 1
        count += 1
    # 4. The head names the last entry: a truncated tail or a rewritten head shows here.
    if head_seq != count or head_hash != prev:
        return broken(
            count + 1 if head_seq > count else head_seq,
            count,
            "head",
            f"{head_seq}:{head_hash}",
            f"{count}:{prev}",
            "chain head does not match the last entry",
        )
    return ChainReport(True, count, head_seq, head_hash)


def verify_chain(store: Store) -> ChainReport:
    """Check the whole audit chain of ``store`` (read-only)."""
    with store.engine.connect().execution_options(nacre_read_only=True) as conn:
        report = verify_chain_on(conn)
        conn.rollback()
    return report
