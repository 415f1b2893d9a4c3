"""Errors of the storage layer: every one a :class:`nacre.errors.NacreError` with field/expected/actual."""

from __future__ import annotations

from nacre.errors import NacreError

__all__ = [
    "ConflictError",
    "EnvelopeError",
    "LifecycleError",
    "NonceError",
    "NotFoundError",
    "StoreError",
]


class StoreError(NacreError):
    """The store refused an operation or found its data damaged."""

    default_code = "STORE_ERROR"


class NotFoundError(StoreError):
    """No such resource, policy, key, version or session."""

    default_code = "NOT_FOUND"


class ConflictError(StoreError):
    """The row exists already, or another writer changed it first."""

    default_code = "CONFLICT"


class LifecycleError(StoreError):
    """A key state transition (or use) that the key lifecycle forbids."""

    default_code = "KEY_STATE"


class NonceError(StoreError):
    """A nonce that is unknown, expired or already consumed (a replay)."""

    default_code = "NONCE_INVALID"


class EnvelopeError(StoreError):
    """Encrypted material does not decrypt: tampered, swapped between rows, or a missing KEK."""

    default_code = "ENVELOPE_INVALID"
