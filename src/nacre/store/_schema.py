"""The one schema (SQLAlchemy Core) for SQLite and PostgreSQL.

The tables are created and changed only by the Alembic migrations in ``nacre.store.migrations``;
``tests/test_store_migrations.py`` checks that the migrated database matches these definitions.
Times are stored as naive UTC and handed out timezone-aware (:class:`UtcDateTime`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    ForeignKeyConstraint,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.types import TypeDecorator

__all__ = [
    "AUDIT_GENESIS_HASH",
    "KEY_STATES",
    "KEY_TYPES",
    "POLICY_KINDS",
    "UtcDateTime",
    "admin_keys",
    "audit",
    "audit_head",
    "key_versions",
    "keys",
    "metadata",
    "nonces",
    "policies",
    "resource_versions",
    "resources",
    "sessions",
    "signing_keyrings",
]

POLICY_KINDS = ("resource", "appraisal")
KEY_TYPES = ("AES-256", "EC-P256", "EC-P384", "Ed25519", "secp256k1", "RSA-3072")
KEY_STATES = ("enabled", "disabled", "pending_deletion", "destroyed")
KEY_VERSION_STATES = ("enabled", "disabled", "destroyed")
SESSION_STATES = ("pending", "attested")
AUDIT_GENESIS_HASH = "0" * 64

_NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp stored as naive UTC, returned timezone-aware; naive input is refused."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store: pass a timezone-aware time")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime from the database, got {type(value).__name__}")
        return value.replace(tzinfo=UTC)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


metadata = MetaData(naming_convention=_NAMING)

policies = Table(
    "policies",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("document", Text, nullable=False),
    Column("version", Integer, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    CheckConstraint(_in("kind", POLICY_KINDS), name="kind"),
    CheckConstraint("version >= 1", name="version"),
)

resources = Table(
    "resources",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("repo", String(128), nullable=False),
    Column("type", String(128), nullable=False),
    Column("tag", String(128), nullable=False),
    Column("policy_id", String(128), ForeignKey("policies.id"), nullable=True),
    Column("current_version", Integer, nullable=False),
    Column("deleted", Boolean, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    UniqueConstraint("repo", "type", "tag", name="uq_resources_name"),
    CheckConstraint("current_version >= 1", name="current_version"),
)

resource_versions = Table(
    "resource_versions",
    metadata,
    Column("resource_id", Integer, ForeignKey("resources.id"), nullable=False),
    Column("version", Integer, nullable=False),
    Column("ciphertext", LargeBinary, nullable=False),
    Column("wrapped_key", LargeBinary, nullable=False),
    Column("kek_id", String(32), nullable=False),
    Column("nonce", LargeBinary, nullable=False),
    Column("aad", LargeBinary, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    PrimaryKeyConstraint("resource_id", "version"),
)

keys = Table(
    "keys",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("type", String(16), nullable=False),
    Column("state", String(24), nullable=False),
    Column("deletion_date", UtcDateTime, nullable=True),
    Column("rotation_period_s", BigInteger, nullable=True),
    Column("next_rotation_at", UtcDateTime, nullable=True),
    Column("expires_at", UtcDateTime, nullable=True),
    Column("exportable", Boolean, nullable=False),
    Column("policy_id", String(128), ForeignKey("policies.id"), nullable=True),
    Column("current_version", Integer, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    CheckConstraint(_in("type", KEY_TYPES), name="type"),
    CheckConstraint(_in("state", KEY_STATES), name="state"),
    CheckConstraint(
        "(state = 'pending_deletion') = (deletion_date IS NOT NULL)", name="deletion_date"
    ),
    CheckConstraint("rotation_period_s IS NULL OR rotation_period_s > 0", name="rotation"),
)

key_versions = Table(
    "key_versions",
    metadata,
    Column("key_id", String(128), nullable=False),
    Column("version", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("ciphertext", LargeBinary, nullable=True),
    Column("wrapped_key", LargeBinary, nullable=True),
    Column("kek_id", String(32), nullable=True),
    Column("nonce", LargeBinary, nullable=True),
    Column("aad", LargeBinary, nullable=True),
    Column("public_key", LargeBinary, nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    PrimaryKeyConstraint("key_id", "version"),
    ForeignKeyConstraint(["key_id"], ["keys.id"]),
    CheckConstraint(_in("state", KEY_VERSION_STATES), name="state"),
    CheckConstraint(
        "(state = 'destroyed') = (ciphertext IS NULL AND wrapped_key IS NULL)", name="material"
    ),
)

sessions = Table(
    "sessions",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("tee", String(16), nullable=False),
    Column("state", String(16), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False, index=True),  # the sweep
    Column("tee_pubkey", Text, nullable=True),
    Column("token", Text, nullable=True),
    CheckConstraint(_in("state", SESSION_STATES), name="state"),
)

nonces = Table(
    "nonces",
    metadata,
    Column("value", String(128), primary_key=True),
    # Indexed: the session read joins its nonce by it, and deleting a session cascades by it.
    Column(
        "session_id",
        String(64),
        ForeignKey("sessions.id", ondelete="CASCADE"),
        nullable=True,
        index=True,
    ),
    Column("created_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False, index=True),  # the sweep
    Column("consumed_at", UtcDateTime, nullable=True),
)

audit = Table(
    "audit",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("time", String(40), nullable=False),
    Column("actor", String(256), nullable=False),
    Column("action", String(128), nullable=False),
    Column("target", String(512), nullable=False),
    Column("outcome", String(32), nullable=False),
    Column("detail", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)

#: One row (id 1): the chain's head. Appenders lock it (FOR UPDATE) so the chain never forks.
audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
    CheckConstraint("id = 1", name="single_row"),
)

#: The service's own signing keyrings (one row per purpose, e.g. ``ear``): the serialised ring,
#: envelope-encrypted like every secret (AAD names the purpose and version). ``version`` goes up by
#: one per save: a writer saves only over the version it read (compare-and-swap).
signing_keyrings = Table(
    "signing_keyrings",
    metadata,
    Column("purpose", String(32), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("ciphertext", LargeBinary, nullable=False),
    Column("wrapped_key", LargeBinary, nullable=False),
    Column("kek_id", String(32), nullable=False),
    Column("nonce", LargeBinary, nullable=False),
    Column("aad", LargeBinary, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    CheckConstraint("version >= 1", name="version"),
)

#: Admin public keys (``kid``: RFC 7638 thumbprint of ``jwk``); a revoked key keeps its row.
admin_keys = Table(
    "admin_keys",
    metadata,
    Column("kid", String(64), primary_key=True),
    Column("name", String(64), nullable=False),
    Column("jwk", Text, nullable=False),
    Column("roles", Text, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("revoked_at", UtcDateTime, nullable=True),
)
