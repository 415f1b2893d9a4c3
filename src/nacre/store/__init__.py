"""Storage of the attestation service: one SQLAlchemy schema on SQLite (WAL) or PostgreSQL.

- :func:`open_store` connects, runs the Alembic migrations (``upgrade head``) and unseals the KEKs.
- :class:`Store` holds resources (versioned, envelope-encrypted), policies, KMS keys and their
  versions under the key lifecycle, KBS sessions with single-use nonces, the server's signing
  keyrings (envelope-encrypted, compare-and-swap on their version) and admin public keys, and the
  audit log: everything replicas share.
- :mod:`nacre.store.envelope`: data key per secret/key version, wrapped by a KEK sealed to the TEE.
- :mod:`nacre.store.audit`: the hash chain and :func:`verify_chain`.
"""

from __future__ import annotations

from nacre.store._store import (
    DELETION_WAIT_MAX_DAYS,
    DELETION_WAIT_MIN_DAYS,
    MAX_KEY_MATERIAL_BYTES,
    MAX_POLICY_BYTES,
    MAX_RESOURCE_BYTES,
    ResourceRelease,
    Store,
    SweepResult,
    default_url,
    open_store,
)
from nacre.store.audit import AuditEntry, ChainReport, verify_chain
from nacre.store.envelope import KekRing, KekSealer
from nacre.store.errors import (
    ConflictError,
    EnvelopeError,
    LifecycleError,
    NonceError,
    NotFoundError,
    StoreError,
)
from nacre.store.models import (
    AdminKeyRecord,
    KeyInfo,
    KeyState,
    KeyType,
    KeyVersionInfo,
    Policy,
    PolicyKind,
    Resource,
    ResourceInfo,
    ResourceName,
    Session,
)

__all__ = [
    "DELETION_WAIT_MAX_DAYS",
    "DELETION_WAIT_MIN_DAYS",
    "MAX_KEY_MATERIAL_BYTES",
    "MAX_POLICY_BYTES",
    "MAX_RESOURCE_BYTES",
    "AdminKeyRecord",
    "AuditEntry",
    "ChainReport",
    "ConflictError",
    "EnvelopeError",
    "KekRing",
    "KekSealer",
    "KeyInfo",
    "KeyState",
    "KeyType",
    "KeyVersionInfo",
    "LifecycleError",
    "NonceError",
    "NotFoundError",
    "Policy",
    "PolicyKind",
    "Resource",
    "ResourceInfo",
    "ResourceName",
    "ResourceRelease",
    "Session",
    "Store",
    "StoreError",
    "SweepResult",
    "default_url",
    "open_store",
    "verify_chain",
]
