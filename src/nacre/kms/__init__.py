"""Layer 6: HSM-like key management inside the service.

    kms = Kms(store)                                         # store opened with a sealer
    admin = Caller.principal("alice", {"admin"})
    kms.create_key(admin, "AES-256", name="db-key", policy_id="model-enclave")
    workload = Caller.workload(verify_ear(token, keyring, now))
    ct = kms.encrypt(workload, "db-key", b"secret", aad=b"ctx")
    kms.decrypt(workload, "db-key", ct.ciphertext, aad=b"ctx").plaintext

Key material is generated here, kept only envelope-encrypted in the store, used for one call at a
time, and leaves only as a JWE to an attested TEE key (:meth:`Kms.export_to_tee`). Import takes
material as a JWE to the service's import key (:meth:`Kms.import_wrapping_key`).
"""

from __future__ import annotations

from nacre.kms._crypto import CiphertextHeader, parse_ciphertext
from nacre.kms._service import (
    DEFAULT_USE_ROLES,
    IMPORT_KEY_ID,
    KEY_TYPES,
    MAX_AAD_BYTES,
    MAX_DATA_BYTES,
    RESERVED_PREFIX,
    Kms,
)
from nacre.kms.errors import (
    AccessDeniedError,
    CiphertextError,
    KeyImportError,
    KeyStateError,
    KeyUsageError,
    KmsError,
)
from nacre.kms.models import (
    Ciphertext,
    DataKey,
    ExportedKey,
    ImportWrappingKey,
    Plaintext,
    Signature,
    Verification,
    WrappedKey,
)
from nacre.kms.policy import (
    KEY_POLICY_VARIABLES,
    ROLES,
    Caller,
    KeyPolicy,
    KeyRule,
    parse_key_policy,
)

__all__ = [
    "DEFAULT_USE_ROLES",
    "IMPORT_KEY_ID",
    "KEY_POLICY_VARIABLES",
    "KEY_TYPES",
    "MAX_AAD_BYTES",
    "MAX_DATA_BYTES",
    "RESERVED_PREFIX",
    "ROLES",
    "AccessDeniedError",
    "Caller",
    "Ciphertext",
    "CiphertextError",
    "CiphertextHeader",
    "DataKey",
    "ExportedKey",
    "ImportWrappingKey",
    "KeyImportError",
    "KeyPolicy",
    "KeyRule",
    "KeyStateError",
    "KeyUsageError",
    "Kms",
    "KmsError",
    "Plaintext",
    "Signature",
    "Verification",
    "WrappedKey",
    "parse_ciphertext",
    "parse_key_policy",
]
