"""The EAR signing keyring of the service: persisted sealed, shared by replicas, rotated when due.

The ring lives in ``<data_dir>/ear_keyring.bin`` (a :class:`nacre.token.FileKeyringStore`, 0600),
its bytes sealed with the service's KEK sealer (the TEE's sealing; the simulator's on a laptop).
Replicas sharing the data directory share the ring: creation and rotation happen under an
exclusive file lock, and a replica that meets a ``kid`` it does not know reloads the file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final

from nacre.store import KekSealer
from nacre.token import EarClaims, FileKeyringStore, Keyring, TokenError, verify_ear
from nacre.token.errors import TOKEN_UNKNOWN_KEY

__all__ = ["KEYRING_FILE", "ServiceKeyring"]

KEYRING_FILE: Final = "ear_keyring.bin"
_AAD: Final = b"nacre.server.ear-keyring/v1"


class ServiceKeyring:
    """The service's :class:`Keyring`, loaded once and reloaded only when the file changes."""

    def __init__(
        self,
        data_dir: Path,
        sealer: KekSealer,
        *,
        max_token_ttl: timedelta,
        key_lifetime: timedelta,
    ) -> None:
        self._path = data_dir / KEYRING_FILE
        self._store = FileKeyringStore(self._path)
        self._sealer = sealer
        self._max_token_ttl = max_token_ttl
        self._key_lifetime = key_lifetime
        self._lock = threading.Lock()
        self._ring: Keyring | None = None
        self._stamp: tuple[int, int] | None = None

    def _wrap(self, data: bytes) -> bytes:
        return self._sealer.seal(data, policy="mrsigner", aad=_AAD)

    def _unwrap(self, data: bytes) -> bytes:
        return self._sealer.unseal(data, aad=_AAD)

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        self._path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self._path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = self._path.stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def _reload_locked(self) -> Keyring | None:
        ring = Keyring.load(self._store, self._unwrap)
        self._stamp = self._file_stamp()
        if ring is not None:
            self._ring = ring
        return ring

    def _ensure(self, now: datetime) -> Keyring:
        """The ring, loaded or created, rotated when its current key may no longer sign."""
        with self._lock:
            ring = self._ring
            if ring is None or self._file_stamp() != self._stamp:
                with self._file_lock():
                    ring = self._reload_locked()
                    if ring is None:
                        ring = Keyring.generate(
                            now, max_token_ttl=self._max_token_ttl, key_lifetime=self._key_lifetime
                        )
                        ring.save(self._store, self._wrap)
                        self._ring, self._stamp = ring, self._file_stamp()
            if ring.rotation_due(now):
                with self._file_lock():
                    ring = self._reload_locked() or ring
                    if ring.rotation_due(now):
                        ring.rotate(now)
                        ring.save(self._store, self._wrap)
                        self._ring, self._stamp = ring, self._file_stamp()
            return ring

    def signing_ring(self, now: datetime) -> Keyring:
        """The ring to sign with at ``now`` (rotated first if due)."""
        return self._ensure(now)

    def jwks(self, now: datetime) -> dict[str, Any]:
        return self._ensure(now).jwks(now)

    def verify(self, token: str, now: datetime) -> EarClaims:
        """Verify an EAR this service (any replica) issued; a foreign key stays refused."""
        ring = self._ensure(now)
        try:
            return verify_ear(token, ring, now)
        except TokenError as exc:
            if exc.code != TOKEN_UNKNOWN_KEY:
                raise
            with self._lock:
                if self._file_stamp() == self._stamp:
                    raise
                with self._file_lock():
                    ring = self._reload_locked() or ring
            return verify_ear(token, ring, now)
