"""The EAR signing keyring of the service: kept in the database, shared by replicas, rotated when due.

The ring is one row of ``signing_keyrings`` (purpose ``ear``), serialised by
:meth:`nacre.token.Keyring.dump` and envelope-encrypted by the store under its KEK, like every
secret (the AAD binds the ciphertext to the purpose and version). Replicas that share the database
(and the sealed KEK) share the ring:

- Each replica caches the ring and checks the stored version at most every
  :data:`REFRESH_INTERVAL` (one indexed read); it reloads at once when a token names a ``kid`` it
  does not know, so a key another replica just rotated in verifies here at once.
- Creation and rotation are compare-and-swap on the row's version: of replicas rotating together
  exactly one wins; the others reload and use the winner's key.

Upgrade path: a ``<data_dir>/ear_keyring.bin`` written by an earlier nacre (sealed with the KEK
sealer) is imported on first start when the database has no ring yet, then renamed
``ear_keyring.bin.migrated`` (kept for forensics, never read again). When the database already has
a ring, the database wins and the file is renamed all the same.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final

from nacre.store import ConflictError, KekSealer, Store
from nacre.token import EarClaims, FileKeyringStore, Keyring, SigningKey, TokenError, verify_ear
from nacre.token.errors import TOKEN_UNKNOWN_KEY
from nacre.token.verified_tokens import VerifiedTokens

__all__ = [
    "KEYRING_FILE",
    "KEYRING_PURPOSE",
    "MIGRATED_SUFFIX",
    "REFRESH_INTERVAL",
    "ServiceKeyring",
]

#: The pre-database keyring file, imported once and renamed with :data:`MIGRATED_SUFFIX`.
KEYRING_FILE: Final = "ear_keyring.bin"
MIGRATED_SUFFIX: Final = ".migrated"
KEYRING_PURPOSE: Final = "ear"
#: Longest time a replica signs with its cached ring before checking the stored version.
REFRESH_INTERVAL: Final = timedelta(seconds=5)
#: Compare-and-swap attempts before a rotation gives up (each loss means another replica rotated).
_CAS_ATTEMPTS: Final = 8
_LEGACY_AAD: Final = b"nacre.server.ear-keyring/v1"


class ServiceKeyring:
    """The service's :class:`Keyring`, cached per replica and kept in step with the database."""

    def __init__(
        self,
        store: Store,
        *,
        max_token_ttl: timedelta,
        key_lifetime: timedelta,
        refresh_interval: timedelta = REFRESH_INTERVAL,
        purpose: str = KEYRING_PURPOSE,
    ) -> None:
        self._store = store
        self._purpose = purpose
        self._max_token_ttl = max_token_ttl
        self._key_lifetime = key_lifetime
        self.refresh_interval = refresh_interval
        self._lock = threading.Lock()
        self._ring: Keyring | None = None
        self._version = 0
        self._checked = 0.0  # time.monotonic() of the last version check
        # Tokens this replica signed or verified: a hit skips the signature check only (times
        # and the key's publication are checked at every use).
        self._verified = VerifiedTokens()

    @property
    def version(self) -> int:
        """The stored version this replica's cached ring came from (0: none loaded)."""
        return self._version

    # -- loading -------------------------------------------------------------------------------

    def _load_locked(self) -> Keyring | None:
        loaded = self._store.load_keyring(self._purpose, Keyring.loads)
        self._checked = time.monotonic()
        if loaded is None:
            return None
        self._ring, self._version = loaded
        return self._ring

    def _fresh_locked(self) -> bool:
        """True when the cache is known current (checked within the refresh interval, or the
        stored version has not moved); reloads otherwise."""
        if self._ring is None:
            return self._load_locked() is not None
        if time.monotonic() - self._checked < self.refresh_interval.total_seconds():
            return True
        stored = self._store.keyring_version(self._purpose)
        self._checked = time.monotonic()
        if stored != self._version:
            self._load_locked()
        return True

    def _save_locked(
        self, ring: Keyring, expected: int, *, event: str, actor: str, now: datetime
    ) -> None:
        """CAS-save ``ring`` over version ``expected``; raises ConflictError when another won."""
        version = self._store.save_keyring(
            self._purpose,
            ring.dump,
            expected_version=expected,
            event=event,
            actor=actor,
            detail={"current_kid": ring.current().kid, "kids": len(ring.signing_keys())},
            now=now,
        )
        self._ring, self._version, self._checked = ring, version, time.monotonic()

    def _copy_locked(self) -> tuple[Keyring, int]:
        """A private copy of the stored ring to mutate, with its version (the cache stays intact
        when the compare-and-swap fails)."""
        loaded = self._store.load_keyring(self._purpose, Keyring.loads)
        if loaded is None:
            raise ConflictError("the signing keyring vanished", code="KEYRING_CONFLICT")
        return loaded

    def _ensure(self, now: datetime) -> Keyring:
        """The ring, loaded or created, rotated (compare-and-swap) when its key may not sign."""
        with self._lock:
            for _ in range(_CAS_ATTEMPTS):
                self._fresh_locked()
                ring = self._ring
                try:
                    if ring is None:
                        ring = Keyring.generate(
                            now, max_token_ttl=self._max_token_ttl, key_lifetime=self._key_lifetime
                        )
                        self._save_locked(ring, 0, event="create", actor="system", now=now)
                        return ring
                    if not ring.rotation_due(now):
                        return ring
                    ring, version = self._copy_locked()
                    if not ring.rotation_due(now):
                        self._ring, self._version, self._checked = ring, version, time.monotonic()
                        return ring
                    ring.rotate(now)
                    self._save_locked(ring, version, event="rotate", actor="system", now=now)
                    return ring
                except ConflictError as exc:
                    if exc.code != "KEYRING_CONFLICT":
                        raise
                    self._load_locked()  # another replica won: use its ring
            raise ConflictError(
                "the signing keyring kept changing under this replica",
                code="KEYRING_CONFLICT",
                field="version",
                hint="retry",
            )

    # -- use -------------------------------------------------------------------------------------

    def signing_ring(self, now: datetime) -> Keyring:
        """The ring to sign with at ``now`` (rotated first if due)."""
        return self._ensure(now)

    def jwks(self, now: datetime) -> dict[str, Any]:
        """The JWK Set, from the stored ring as it is now: the version is read on every call
        (relying parties fetch it rarely), so a key another replica rotated in is published here
        at once."""
        with self._lock:
            self._checked = float("-inf")
        return self._ensure(now).jwks(now)

    def verify(self, token: str, now: datetime) -> EarClaims:
        """Verify an EAR this service (any replica) issued; a foreign key stays refused.

        A token this replica signed or already verified skips the signature check (the memo,
        nacre.token.verified_tokens); its times and its key's publication are checked again."""
        ring = self._ensure(now)
        try:
            claims = self._verified.lookup(token, now, lambda kid: ring.get(kid, now) is not None)
            if claims is None:
                claims = verify_ear(token, ring, now)
                self._verified.remember(token, claims)
            return claims
        except TokenError as exc:
            if exc.code != TOKEN_UNKNOWN_KEY:
                raise
            with self._lock:
                if self._store.keyring_version(self._purpose) == self._version:
                    raise
                ring = self._load_locked() or ring
            claims = verify_ear(token, ring, now)
            self._verified.remember(token, claims)
            return claims

    def remember_issued(self, token: str, claims: EarClaims) -> None:
        """Note a token this replica has just signed, so that verifying it here skips the
        signature check (:meth:`verify`)."""
        self._verified.remember(token, claims)

    def rotate(self, now: datetime, *, actor: str) -> tuple[SigningKey, bool]:
        """Rotate now: a new current key (the old one stays published until its tokens expire).

        Returns the current key and whether this call rotated it: when another replica saved a
        rotation first (compare-and-swap lost), its key is returned with False.
        """
        self._ensure(now)
        with self._lock:
            ring, version = self._copy_locked()
            ring.rotate(now)
            try:
                self._save_locked(ring, version, event="rotate", actor=actor, now=now)
            except ConflictError as exc:
                if exc.code != "KEYRING_CONFLICT":
                    raise
                reloaded = self._load_locked()
                assert reloaded is not None
                return reloaded.current(), False
            return ring.current(), True

    # -- upgrade from the file of earlier versions -----------------------------------------------

    def migrate_file(self, data_dir: Path, sealer: KekSealer, now: datetime) -> bool:
        """Import ``<data_dir>/ear_keyring.bin`` when the database has no ring yet; the file is
        then renamed ``.migrated`` either way. Returns True when this call imported it."""
        path = data_dir / KEYRING_FILE
        if not path.exists():
            return False
        legacy = Keyring.load(
            FileKeyringStore(path), lambda blob: sealer.unseal(blob, aad=_LEGACY_AAD)
        )
        imported = False
        with self._lock:
            if legacy is not None and self._load_locked() is None:
                try:
                    self._save_locked(legacy, 0, event="migrate", actor="system", now=now)
                    imported = True
                except ConflictError as exc:
                    if exc.code != "KEYRING_CONFLICT":
                        raise
                    self._load_locked()
        path.replace(path.with_name(path.name + MIGRATED_SUFFIX))
        path.with_suffix(".lock").unlink(missing_ok=True)
        return imported
