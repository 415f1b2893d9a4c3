"""An on-disk cache of fetched collateral, re-verified every time it is read.

One file per request URL, named by the SHA-256 of the URL, holding a small JSON envelope::

    {"format": "nacre-collateral-cache", "version": 1, "url": ..., "kind": "tcb_info",
     "fetched_at": "2025-02-28T03:00:00+00:00", "body": "<base64>", "issuer_chain": "<base64>"|null,
     "sha256": "<hex digest over all of the above>"}

Reading an entry:

1. a file that is not a well-formed envelope for this URL is a miss (and is removed);
2. the stored SHA-256 is recomputed: a corrupted entry is removed, never returned;
3. ``validate(item, now)`` runs (signatures, ``nextUpdate``, age: see
   :func:`nacre.collateral.recheck.collateral_validator`); an item that no longer verifies is
   removed and the caller refetches it.

The digest guards against corruption, not against an attacker who can write the directory: the
``validate`` step is what makes the cache safe to read, and the verifier checks everything again.
Fresh items are validated before they are stored; one that does not verify is not stored and its
error is raised. Writes are atomic (temp file + ``os.replace``, mode 0600, directory 0700); the
cache is bounded in entries and bytes (oldest written first out) and safe to share between threads.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import os
import re
import stat
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import platformdirs

from nacre.collateral._http import Fetched
from nacre.errors import NacreError, UsageError
from nacre.limits import (
    DISK_CACHE_MAX_BYTES,
    DISK_CACHE_MAX_ENTRIES,
    MAX_FETCH_BYTES,
    MAX_PEM_CHAIN_BYTES,
)

__all__ = ["CachedItem", "DiskCache", "Validator", "default_cache_dir"]

_FORMAT: Final = "nacre-collateral-cache"
_VERSION: Final = 1
_ENTRY_RE: Final = re.compile(r"^[0-9a-f]{64}\.json$")
_TMP_PREFIX: Final = ".tmp-"
#: Largest envelope file read: base64 of a maximal body and chain, plus the JSON around them.
_MAX_ENVELOPE_BYTES: Final = (MAX_FETCH_BYTES + MAX_PEM_CHAIN_BYTES) * 4 // 3 + 64 * 1024
#: Temp files older than this are leftovers of a crashed writer.
_STALE_TMP_SECONDS: Final = 600


def default_cache_dir() -> Path:
    """``<user cache dir>/nacre/collateral`` (platformdirs)."""
    return Path(platformdirs.user_cache_dir("nacre")) / "collateral"


def _content_digest(
    url: str, kind: str, fetched_at: datetime, body: bytes, issuer_chain: bytes | None
) -> str:
    h = hashlib.sha256(b"nacre-collateral-cache/1\n")
    chain = b"\x00" if issuer_chain is None else b"\x01" + issuer_chain
    for part in (url.encode(), kind.encode(), fetched_at.isoformat().encode(), body, chain):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class CachedItem:
    """One cached collateral item: the body and issuer chain exactly as fetched."""

    url: str
    kind: str
    body: bytes
    issuer_chain: bytes | None
    fetched_at: datetime
    sha256: str

    @classmethod
    def create(
        cls,
        *,
        url: str,
        kind: str,
        body: bytes,
        issuer_chain: bytes | None,
        fetched_at: datetime,
    ) -> CachedItem:
        _require_aware(fetched_at, "fetched_at")
        digest = _content_digest(url, kind, fetched_at, body, issuer_chain)
        return cls(url, kind, body, issuer_chain, fetched_at, digest)

    def intact(self) -> bool:
        """Whether ``sha256`` matches the content."""
        return self.sha256 == _content_digest(
            self.url, self.kind, self.fetched_at, self.body, self.issuer_chain
        )

    def to_json(self) -> bytes:
        chain = None if self.issuer_chain is None else base64.b64encode(self.issuer_chain).decode()
        return json.dumps(
            {
                "format": _FORMAT,
                "version": _VERSION,
                "url": self.url,
                "kind": self.kind,
                "fetched_at": self.fetched_at.isoformat(),
                "body": base64.b64encode(self.body).decode(),
                "issuer_chain": chain,
                "sha256": self.sha256,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> CachedItem:
        """Parse an envelope; ValueError for anything that is not one (the cache treats it as a miss)."""
        obj: Any = json.loads(data)
        if not isinstance(obj, dict) or obj.get("format") != _FORMAT:
            raise ValueError("not a nacre cache envelope")
        if obj.get("version") != _VERSION:
            raise ValueError(f"unknown envelope version {obj.get('version')!r}")
        strings: dict[str, str] = {}
        for name in ("url", "kind", "fetched_at", "body", "sha256"):
            value = obj.get(name)
            if not isinstance(value, str):
                raise ValueError(f"envelope field {name} missing or not a string")
            strings[name] = value
        url, kind, fetched, body, digest = (
            strings[k] for k in ("url", "kind", "fetched_at", "body", "sha256")
        )
        chain = obj.get("issuer_chain")
        if chain is not None and not isinstance(chain, str):
            raise ValueError("issuer_chain is neither null nor a string")
        try:
            fetched_at = datetime.fromisoformat(fetched)
            raw_body = base64.b64decode(body, validate=True)
            raw_chain = None if chain is None else base64.b64decode(chain, validate=True)
        except binascii.Error as exc:
            raise ValueError(f"bad base64: {exc}") from exc
        if fetched_at.tzinfo is None:
            raise ValueError("fetched_at has no time zone")
        return cls(url, kind, raw_body, raw_chain, fetched_at, digest)


Validator = Callable[[CachedItem, datetime], None]
"""Raises a :class:`~nacre.errors.NacreError` when ``item`` no longer verifies at ``now``."""


def _require_aware(t: datetime, name: str) -> None:
    if t.tzinfo is None:
        raise UsageError(
            f"{name} must carry a time zone",
            field=name,
            expected="an aware datetime, e.g. datetime.now(UTC)",
            actual=t.isoformat(),
        )


class DiskCache:
    """Collateral cache under ``directory`` (default :func:`default_cache_dir`).

    ``on_drop(url, reason)`` is told about every entry removed on read (corrupt, tampered,
    no longer valid), so a CLI can say why it refetches.
    """

    def __init__(
        self,
        directory: str | Path | None = None,
        *,
        validate: Validator,
        max_entries: int = DISK_CACHE_MAX_ENTRIES,
        max_bytes: int = DISK_CACHE_MAX_BYTES,
        on_drop: Callable[[str, str], None] | None = None,
    ) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise UsageError(
                "the cache must hold at least one entry",
                field="max_entries/max_bytes",
                expected=">= 1",
                actual=f"{max_entries}/{max_bytes}",
            )
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._validate = validate
        self._on_drop = on_drop
        self._lock = threading.RLock()

    # -- keys and files ----------------------------------------------------------------------

    @staticmethod
    def key(url: str) -> str:
        return hashlib.sha256(url.encode()).hexdigest()

    def path_for(self, url: str) -> Path:
        return self.directory / f"{self.key(url)}.json"

    def _ensure_dir(self) -> None:
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(
                f"cannot create cache directory {self.directory}: {exc.strerror}",
                field="--cache-dir",
                expected="a writable directory",
                actual=str(self.directory),
                hint="pass another --cache-dir, or --no-cache",
            ) from exc

    # -- reading -----------------------------------------------------------------------------

    def _drop(self, url: str, path: Path, reason: str) -> None:
        with self._lock, contextlib.suppress(OSError):  # gone already, or not a file: still a miss
            if path.is_dir() and not path.is_symlink():
                path.rmdir()
            else:
                path.unlink()
        if self._on_drop is not None:
            self._on_drop(url, reason)

    def _load(self, url: str, path: Path) -> CachedItem | None:
        with self._lock:
            try:
                if path.stat().st_size > _MAX_ENVELOPE_BYTES:
                    raise ValueError("entry file is larger than any envelope")
                data = path.read_bytes()
            except FileNotFoundError:
                return None
            except (OSError, ValueError) as exc:
                self._drop(url, path, f"unreadable cache entry ({exc})")
                return None
        try:
            item = CachedItem.from_json(data)
        except (ValueError, RecursionError) as exc:
            self._drop(url, path, f"corrupt cache entry ({type(exc).__name__}: {exc})")
            return None
        if item.url != url:
            self._drop(url, path, "cache entry is for another URL")
            return None
        if not item.intact():
            self._drop(url, path, "cache entry does not match its SHA-256 (tampered or damaged)")
            return None
        return item

    def get(self, url: str, *, now: datetime) -> CachedItem | None:
        """The cached item for ``url`` if it is intact and still validates at ``now``."""
        _require_aware(now, "now")
        path = self.path_for(url)
        item = self._load(url, path)
        if item is None:
            return None
        try:
            self._validate(item, now)
        except NacreError as exc:
            self._drop(url, path, f"cached {item.kind} no longer verifies: {exc}")
            return None
        return item

    # -- writing -----------------------------------------------------------------------------

    def put(self, item: CachedItem) -> None:
        """Store ``item`` (atomically) and evict the oldest entries beyond the bounds."""
        if not item.intact():
            raise UsageError(
                "refusing to cache an item whose SHA-256 does not match its content",
                field="sha256",
                expected="the digest of the item's content",
                actual=item.sha256,
            )
        data = item.to_json()
        path = self.path_for(item.url)
        with self._lock:
            self._ensure_dir()
            try:
                fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=".json", dir=self.directory)
                try:
                    with os.fdopen(fd, "wb") as f:
                        os.fchmod(f.fileno(), 0o600)
                        f.write(data)
                        f.flush()
                        os.fsync(f.fileno())
                    os.replace(tmp, path)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp)
                    raise
            except OSError as exc:
                raise UsageError(
                    f"cannot write to cache directory {self.directory}: {exc.strerror}",
                    field="--cache-dir",
                    expected="a writable directory",
                    actual=str(path),
                    hint="pass another --cache-dir, or --no-cache",
                ) from exc
            self._evict()

    def store_fresh(self, url: str, kind: str, fetched: Fetched, *, now: datetime) -> CachedItem:
        """Validate a just-fetched item at ``now`` (raising if it does not verify), then store it."""
        item = CachedItem.create(
            url=url,
            kind=kind,
            body=fetched.body,
            issuer_chain=fetched.issuer_chain,
            fetched_at=now,
        )
        self._validate(item, now)
        self.put(item)
        return item

    def get_or_fetch(
        self, url: str, kind: str, fetch: Callable[[], Fetched], *, now: datetime
    ) -> CachedItem:
        """A valid cached item, or a fresh one (validated, stored)."""
        item = self.get(url, now=now)
        if item is not None:
            return item
        return self.store_fresh(url, kind, fetch(), now=now)

    def drop(self, url: str) -> None:
        with self._lock, contextlib.suppress(OSError):
            self.path_for(url).unlink()

    def clear(self) -> None:
        with self._lock:
            for path, _ in self._entries():
                with contextlib.suppress(OSError):
                    path.unlink()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries())

    def _entries(self) -> list[tuple[Path, os.stat_result]]:
        out: list[tuple[Path, os.stat_result]] = []
        try:
            names = os.listdir(self.directory)
        except OSError:
            return out
        now = time.time()
        for name in names:
            path = self.directory / name
            try:
                st = path.stat()
            except OSError:
                continue
            if _ENTRY_RE.match(name) and stat.S_ISREG(st.st_mode):
                out.append((path, st))
            elif name.startswith(_TMP_PREFIX) and now - st.st_mtime > _STALE_TMP_SECONDS:
                with contextlib.suppress(OSError):
                    path.unlink()
        return out

    def _evict(self) -> None:
        entries = sorted(self._entries(), key=lambda e: (e[1].st_mtime_ns, e[0].name))
        total = sum(st.st_size for _, st in entries)
        while entries and (len(entries) > self.max_entries or total > self.max_bytes):
            path, st = entries.pop(0)
            with contextlib.suppress(OSError):
                path.unlink()
            total -= st.st_size
