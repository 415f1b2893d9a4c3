"""A bounded memo of EARs whose signature this process has checked, or made.

A KBS handshake verifies the token it has just issued (the resource request presents it by
cookie or as a bearer): an ES256 verification and a JWS parse that repeat what the process
already knows. :class:`VerifiedTokens` remembers the parsed claims of tokens this process signed
(:func:`~nacre.token.ear.issue_ear_with_claims`) or verified, keyed by the SHA-256 of the whole token, so
only a byte-identical token hits.

What a hit skips is the signature check alone. At every use the caller's check still runs:
:meth:`VerifiedTokens.lookup` re-checks the times (``exp``, ``iat``, ``nbf`` against the given
``now``) and asks the caller whether the token's key is still published (a retired key's tokens
are refused at once, remembered or not). The memo is bounded (least recently used entries go
first) and thread-safe.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Final

from nacre.token.ear import DEFAULT_LEEWAY, EarClaims, check_ear_times
from nacre.token.errors import TOKEN_UNKNOWN_KEY, TokenError

__all__ = ["DEFAULT_CAPACITY", "VerifiedTokens"]

#: Tokens remembered at most. An entry holds the parsed claims (about 7 KiB for an SGX EAR,
#: the annotated evidence included), so about 7 MiB per process when full. A workload fetches
#: its resources right after it attests: the last thousand tokens are the ones used again.
DEFAULT_CAPACITY: Final = 1024


class VerifiedTokens:
    """Parsed claims of tokens whose signature is known good, by the SHA-256 of the token."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._capacity = capacity
        self._entries: OrderedDict[bytes, EarClaims] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def lookup(
        self,
        token: str,
        now: datetime,
        key_published: Callable[[str], bool],
        *,
        leeway: timedelta = DEFAULT_LEEWAY,
    ) -> EarClaims | None:
        """The remembered claims of ``token``, its times re-checked at ``now`` and its key
        (``key_published(kid)``) still published; ``None`` when it is not remembered.

        Raises :class:`TokenError` as :func:`~nacre.token.verify_ear` would: an expired token,
        a key no longer published. A refused token is forgotten."""
        if not isinstance(token, str):
            return None
        digest = _digest(token)
        with self._lock:
            claims = self._entries.get(digest)
            if claims is None:
                return None
            self._entries.move_to_end(digest)
        try:
            if not key_published(claims.kid):
                raise TokenError(
                    "token signed by a key this service does not publish",
                    code=TOKEN_UNKNOWN_KEY,
                    field="kid",
                    actual=claims.kid,
                    hint="a token from a key retired after its tokens expired",
                )
            check_ear_times(claims, now, leeway)
        except TokenError:
            self.forget(token)
            raise
        return claims

    def remember(self, token: str, claims: EarClaims) -> None:
        """Remember ``claims``: what verifying ``token`` gave, or what signing it did
        (:func:`~nacre.token.ear.issue_ear_with_claims`)."""
        digest = _digest(token)
        with self._lock:
            self._entries[digest] = claims
            self._entries.move_to_end(digest)
            while len(self._entries) > self._capacity:
                self._entries.popitem(last=False)

    def forget(self, token: str) -> None:
        with self._lock:
            self._entries.pop(_digest(token), None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
