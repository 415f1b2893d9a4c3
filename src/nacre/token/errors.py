"""Typed errors of :mod:`nacre.token`, all :class:`nacre.errors.NacreError` subclasses.

NacreError
├── TokenError                 an attestation-result token is refused
│     codes: TOKEN_INVALID, TOKEN_EXPIRED, TOKEN_UNKNOWN_KEY, TOKEN_ALG_REFUSED
├── KeyringError               the signing keyring cannot do what was asked (KEYRING_INVALID)
├── JweError                   a JWE cannot be built or opened
│     codes: JWE_INVALID (malformed or undecryptable), JWE_KEY_REFUSED (key type/size/curve/alg)
└── CanonicalizationError      a value has no RFC 8785 canonical form (JCS_INVALID)
"""

from __future__ import annotations

from typing import Final

from nacre.errors import NacreError

__all__ = [
    "JWE_INVALID",
    "JWE_KEY_REFUSED",
    "TOKEN_ALG_REFUSED",
    "TOKEN_EXPIRED",
    "TOKEN_INVALID",
    "TOKEN_UNKNOWN_KEY",
    "CanonicalizationError",
    "JweError",
    "KeyringError",
    "TokenError",
]

TOKEN_INVALID: Final = "TOKEN_INVALID"  # noqa: S105 - an error code, not a secret
TOKEN_EXPIRED: Final = "TOKEN_EXPIRED"  # noqa: S105 - an error code, not a secret
TOKEN_UNKNOWN_KEY: Final = "TOKEN_UNKNOWN_KEY"  # noqa: S105 - an error code, not a secret
TOKEN_ALG_REFUSED: Final = "TOKEN_ALG_REFUSED"  # noqa: S105 - an error code, not a secret
JWE_INVALID: Final = "JWE_INVALID"
JWE_KEY_REFUSED: Final = "JWE_KEY_REFUSED"


class TokenError(NacreError):
    """An attestation-result token is refused: bad form, signature, key, algorithm or time."""

    default_code = TOKEN_INVALID


class KeyringError(NacreError):
    """The signing keyring is unusable: no current key, a key past its signing window, bad storage."""

    default_code = "KEYRING_INVALID"


class JweError(NacreError):
    """A JWE cannot be produced for this key, or a received JWE is malformed or does not decrypt."""

    default_code = JWE_INVALID


class CanonicalizationError(NacreError):
    """A value that RFC 8785 cannot canonicalize (NaN, Infinity, lone surrogates, non-string keys)."""

    default_code = "JCS_INVALID"
