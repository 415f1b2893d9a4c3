"""Layer 5: attestation results as EAR JWTs, the ES256 signing keyring, and the KBS wire pieces.

keyring = Keyring.generate(now)                      # ES256, kid = RFC 7638 thumbprint
token = issue_ear(EarInput(...), keyring, now, ttl)  # EAR JWT
claims = verify_ear(token, keyring.jwks(now), now)   # or the keyring itself
report_data = kbs_report_data(nonce, tee_pubkey)     # pad64(SHA-384(JCS(runtime data)))
jwe = encrypt_for_tee_key(secret, tee_pubkey)        # KBS flattened JWE
"""

from __future__ import annotations

from nacre.token.canonical import canonicalize, canonicalize_text, kbs_report_data, kbs_runtime_data
from nacre.token.ear import (
    EAR_PROFILE,
    EarAppraisal,
    EarClaims,
    EarInput,
    issue_ear,
    verify_ear,
)
from nacre.token.errors import CanonicalizationError, JweError, KeyringError, TokenError
from nacre.token.jwe import check_tee_key, decrypt, encrypt_for_tee_key, public_jwk
from nacre.token.keyring import (
    FileKeyringStore,
    Keyring,
    KeyringStore,
    MemoryKeyringStore,
    SigningKey,
    aes_gcm_wrapping,
    jwk_thumbprint,
)

__all__ = [
    "EAR_PROFILE",
    "CanonicalizationError",
    "EarAppraisal",
    "EarClaims",
    "EarInput",
    "FileKeyringStore",
    "JweError",
    "Keyring",
    "KeyringError",
    "KeyringStore",
    "MemoryKeyringStore",
    "SigningKey",
    "TokenError",
    "aes_gcm_wrapping",
    "canonicalize",
    "canonicalize_text",
    "check_tee_key",
    "decrypt",
    "encrypt_for_tee_key",
    "issue_ear",
    "jwk_thumbprint",
    "kbs_report_data",
    "kbs_runtime_data",
    "public_jwk",
    "verify_ear",
]
