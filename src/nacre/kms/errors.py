"""Errors of the key management service: every one a :class:`nacre.errors.NacreError`.

``field`` names the check that failed (``role``, ``ear.status``, ``policy.rule``, ``exportable``,
``state``, ``expires_at``, ``ciphertext.key_id`` ...), with ``expected`` and ``actual`` beside it.

    KmsError
    ├── AccessDeniedError     the caller may not do this with this key (the failed check named)
    ├── KeyStateError         the key is disabled, pending deletion, destroyed or expired
    │                         (also a nacre.store.LifecycleError)
    ├── KeyUsageError         the operation does not fit the key type or its arguments are wrong
    ├── CiphertextError       a ciphertext or wrapped key is malformed, for another key, or tampered
    └── KeyImportError        wrapped import material does not unwrap or is not a key of the type
"""

from __future__ import annotations

from nacre.errors import NacreError
from nacre.store.errors import LifecycleError

__all__ = [
    "AccessDeniedError",
    "CiphertextError",
    "KeyImportError",
    "KeyStateError",
    "KeyUsageError",
    "KmsError",
]


class KmsError(NacreError):
    """The key management service refused an operation."""

    default_code = "KMS_ERROR"


class AccessDeniedError(KmsError):
    """Authorization failed; ``field`` is the failed check (HTTP 403 at the edge)."""

    default_code = "KMS_ACCESS_DENIED"


class KeyStateError(KmsError, LifecycleError):
    """The key's lifecycle state (or expiry) forbids the operation (HTTP 409 at the edge)."""

    default_code = "KEY_STATE"


class KeyUsageError(KmsError):
    """The operation does not apply to this key type, or an argument is out of range (HTTP 400)."""

    default_code = "KEY_USAGE"


class CiphertextError(KmsError):
    """A ciphertext, signature format or wrapped key that cannot be opened (HTTP 400)."""

    default_code = "CIPHERTEXT_INVALID"


class KeyImportError(KmsError):
    """Import material that does not unwrap, or is not a key of the declared type (HTTP 400)."""

    default_code = "KEY_IMPORT_INVALID"
