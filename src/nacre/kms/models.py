"""Results of KMS operations: frozen, slotted; reprs never show secret bytes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from nacre.store.models import KeyType

__all__ = [
    "Ciphertext",
    "DataKey",
    "ExportedKey",
    "ImportWrappingKey",
    "Plaintext",
    "Signature",
    "Verification",
    "WrappedKey",
]


@dataclass(frozen=True, slots=True)
class Ciphertext:
    """A service ciphertext; ``ciphertext`` carries the key id and version in its header."""

    key_id: str
    version: int
    algorithm: str
    ciphertext: bytes


@dataclass(frozen=True, slots=True)
class Plaintext:
    """Decrypted (or unwrapped) data, kept in memory by the caller only."""

    key_id: str
    version: int
    plaintext: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class DataKey:
    """A fresh AES-256 data key: ``plaintext`` to use now and forget, ``ciphertext`` to keep
    (decrypt it with :meth:`nacre.kms.Kms.decrypt` later)."""

    key_id: str
    version: int
    plaintext: bytes = field(repr=False)
    ciphertext: bytes


@dataclass(frozen=True, slots=True)
class WrappedKey:
    key_id: str
    version: int
    algorithm: str
    wrapped: bytes


@dataclass(frozen=True, slots=True)
class Signature:
    """``signature`` is DER for ECDSA (``raw_rs`` beside it is ``r || s``, fixed width), the
    64 bytes for Ed25519, the PSS signature for RSA."""

    key_id: str
    version: int
    algorithm: str
    signature: bytes
    raw_rs: bytes | None = None
    low_s: bool = False


@dataclass(frozen=True, slots=True)
class Verification:
    key_id: str
    version: int
    algorithm: str
    valid: bool


@dataclass(frozen=True, slots=True)
class ExportedKey:
    """Key material as a flattened JWE (KBS format) to the caller's attested TEE key.

    The JWE plaintext is the raw 32 bytes (``format`` "raw") for AES-256, the PKCS#8 DER private
    key (``format`` "pkcs8-der") otherwise."""

    key_id: str
    version: int
    type: KeyType
    format: str
    jwe: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class ImportWrappingKey:
    """The service's import key: wrap material to ``jwk`` with
    :func:`nacre.token.encrypt_for_tee_key` (ECDH-ES+A256KW, A256GCM) and pass the JWE to
    :meth:`nacre.kms.Kms.import_key`."""

    key_id: str
    version: int
    jwk: Mapping[str, str]
