"""The ES256 signing keyring: one current key signs, superseded keys stay published until their
last token has expired, and the whole ring persists only encrypted.

Life of a key (all times are arguments; nothing here reads the clock)::

    created ──── signs (current) ──── not_after / rotate(now) ──── retire_at ──── pruned
                 published in JWKS ─────────────────────────────────────────────┘

* ``not_after``: the last instant the key may sign (``created + key_lifetime``); :meth:`Keyring.rotate`
  ends it early. Past it, :meth:`Keyring.sign` refuses and the caller must rotate.
* ``retire_at``: ``end of signing + max_token_ttl + clock_skew``. Every token the key signed has an
  ``exp`` at most ``max_token_ttl`` after it was signed, so after ``retire_at`` no unexpired token
  needs the key and it leaves the JWKS (:meth:`Keyring.jwks`) and the ring (:meth:`Keyring.prune`).

Persistence: :meth:`Keyring.dump` serialises the ring (private keys as PKCS#8 DER) and hands the
bytes to a caller-supplied ``wrap`` function (the server wraps with its sealed KEK); only the
wrapped bytes reach a :class:`KeyringStore`. Key material is never logged and never in a ``repr``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Protocol, runtime_checkable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from nacre.token.errors import KeyringError

__all__ = [
    "DEFAULT_CLOCK_SKEW",
    "DEFAULT_KEY_LIFETIME",
    "DEFAULT_TOKEN_TTL",
    "MAX_KEYRING_BYTES",
    "MAX_KEYRING_KEYS",
    "FileKeyringStore",
    "Keyring",
    "KeyringStore",
    "MemoryKeyringStore",
    "SigningKey",
    "Unwrap",
    "Wrap",
    "aes_gcm_wrapping",
    "b64url_decode",
    "b64url_encode",
    "jwk_thumbprint",
]

#: Longest lifetime of a token the ring signs (Trustee's EAR default is 5 minutes).
DEFAULT_TOKEN_TTL: Final = timedelta(minutes=5)
#: How long one key signs before rotation is due.
DEFAULT_KEY_LIFETIME: Final = timedelta(days=30)
#: Allowance for verifier clocks running behind ours when retiring keys.
DEFAULT_CLOCK_SKEW: Final = timedelta(minutes=2)
#: Keys in one ring (current + published + not yet pruned); rotation beyond this is refused.
MAX_KEYRING_KEYS: Final = 64
#: Serialised (wrapped) ring read from a store.
MAX_KEYRING_BYTES: Final = 1024 * 1024

_FORMAT: Final = "nacre.token.keyring/v1"
_WRAP_AAD: Final = b"nacre.token.keyring/v1"

Wrap = Callable[[bytes], bytes]
Unwrap = Callable[[bytes], bytes]


def b64url_encode(data: bytes) -> str:
    """Base64url without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict base64url-without-padding decoding; raises ValueError on anything else."""
    if not isinstance(text, str) or not text.isascii() or "=" in text or len(text) % 4 == 1:
        raise ValueError("not base64url without padding")
    data = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    if b64url_encode(data) != text:  # non-canonical trailing bits
        raise ValueError("not canonical base64url")
    return data


_THUMBPRINT_MEMBERS: Final = {
    "EC": ("crv", "kty", "x", "y"),
    "RSA": ("e", "kty", "n"),
    "OKP": ("crv", "kty", "x"),
    "oct": ("k", "kty"),
}


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url): hash of the required members, sorted, compact."""
    kty = jwk.get("kty")
    members = _THUMBPRINT_MEMBERS.get(kty) if isinstance(kty, str) else None
    if members is None:
        raise KeyringError("JWK has no thumbprint form", field="kty", actual=kty)
    subset: dict[str, str] = {}
    for name in members:
        item = jwk.get(name)
        if not isinstance(item, str):
            raise KeyringError("JWK lacks a required member", field=name, actual=item)
        subset[name] = item
    text = json.dumps(subset, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    return b64url_encode(hashlib.sha256(text.encode("utf-8")).digest())


def _p256_public_jwk(public_key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    numbers = public_key.public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": b64url_encode(numbers.x.to_bytes(32, "big")),
        "y": b64url_encode(numbers.y.to_bytes(32, "big")),
    }


def _aware(moment: datetime, name: str) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise KeyringError("times must be timezone-aware", field=name, actual=moment.isoformat())
    return moment.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class SigningKey:
    """One ES256 key of the ring. ``kid`` is the RFC 7638 thumbprint of its public JWK."""

    kid: str
    created: datetime
    not_after: datetime
    retire_at: datetime
    private_key: ec.EllipticCurvePrivateKey = field(repr=False, compare=False)

    @property
    def public_jwk(self) -> dict[str, str]:
        """The JWKS entry: public coordinates only, ``use: sig``, ``alg: ES256``."""
        jwk = _p256_public_jwk(self.private_key.public_key())
        return {**jwk, "kid": self.kid, "use": "sig", "alg": "ES256"}

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self.private_key.public_key()

    def can_sign(self, now: datetime) -> bool:
        return self.created <= now < self.not_after

    def published(self, now: datetime) -> bool:
        return now < self.retire_at


@runtime_checkable
class KeyringStore(Protocol):
    """Where the wrapped (encrypted) ring lives. Implementations never see clear key material."""

    def load(self) -> bytes | None:
        """The last saved bytes, or None if nothing was saved yet."""
        ...

    def save(self, data: bytes) -> None:
        """Replace the saved bytes (atomically, where the medium allows)."""
        ...


class MemoryKeyringStore:
    """A :class:`KeyringStore` in process memory (tests, single-process simulation)."""

    __slots__ = ("_data",)

    def __init__(self) -> None:
        self._data: bytes | None = None

    def load(self) -> bytes | None:
        return self._data

    def save(self, data: bytes) -> None:
        self._data = bytes(data)

    def __repr__(self) -> str:
        return f"MemoryKeyringStore(saved={self._data is not None})"


class FileKeyringStore:
    """A :class:`KeyringStore` in one file, mode 0600, replaced atomically on save."""

    __slots__ = ("path",)

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def load(self) -> bytes | None:
        try:
            with self.path.open("rb") as handle:
                data = handle.read(MAX_KEYRING_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise KeyringError(
                "keyring file is unreadable", field="path", actual=f"{self.path}: {exc.strerror}"
            ) from None
        if len(data) > MAX_KEYRING_BYTES:
            raise KeyringError(
                "keyring file is over its size limit",
                field="path",
                expected=f"<= {MAX_KEYRING_BYTES} bytes",
                actual=str(self.path),
            )
        return data

    def save(self, data: bytes) -> None:
        directory = self.path.parent
        directory.mkdir(parents=True, exist_ok=True)
        # mkstemp creates the file 0600 (O_EXCL), so the bytes are never readable by others.
        fd, temp_name = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=directory)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(temp_name, 0o600)
            os.replace(temp_name, self.path)
        except BaseException:
            Path(temp_name).unlink(missing_ok=True)
            raise
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def __repr__(self) -> str:
        return f"FileKeyringStore({str(self.path)!r})"


def aes_gcm_wrapping(kek: bytes) -> tuple[Wrap, Unwrap]:
    """A ``(wrap, unwrap)`` pair sealing bytes under a 256-bit key-encryption key with AES-GCM."""
    if len(kek) != 32:
        raise KeyringError("the key-encryption key must be 32 bytes", field="kek", actual=len(kek))
    aead = AESGCM(kek)

    def wrap(data: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + aead.encrypt(nonce, data, _WRAP_AAD)

    def unwrap(data: bytes) -> bytes:
        if len(data) < 12 + 16:
            raise KeyringError("wrapped keyring is truncated", field="keyring")
        try:
            return aead.decrypt(data[:12], data[12:], _WRAP_AAD)
        except InvalidTag:
            raise KeyringError(
                "wrapped keyring does not open with this key-encryption key",
                field="keyring",
                hint="the KEK changed, or the file was modified",
            ) from None

    return wrap, unwrap


class Keyring:
    """ES256 signing keys with rotation. Not thread-safe: serialise mutations in the caller."""

    __slots__ = ("_current_kid", "_keys", "clock_skew", "key_lifetime", "max_token_ttl")

    def __init__(
        self,
        *,
        max_token_ttl: timedelta = DEFAULT_TOKEN_TTL,
        key_lifetime: timedelta = DEFAULT_KEY_LIFETIME,
        clock_skew: timedelta = DEFAULT_CLOCK_SKEW,
    ) -> None:
        if max_token_ttl <= timedelta(0) or key_lifetime <= timedelta(0):
            raise KeyringError(
                "token TTL and key lifetime must be positive",
                field="max_token_ttl/key_lifetime",
                actual=f"{max_token_ttl}/{key_lifetime}",
            )
        if clock_skew < timedelta(0):
            raise KeyringError("clock skew must not be negative", field="clock_skew")
        self.max_token_ttl = max_token_ttl
        self.key_lifetime = key_lifetime
        self.clock_skew = clock_skew
        self._keys: dict[str, SigningKey] = {}
        self._current_kid: str | None = None

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def generate(
        cls,
        now: datetime,
        *,
        max_token_ttl: timedelta = DEFAULT_TOKEN_TTL,
        key_lifetime: timedelta = DEFAULT_KEY_LIFETIME,
        clock_skew: timedelta = DEFAULT_CLOCK_SKEW,
    ) -> Keyring:
        """A new ring holding one fresh current key created at ``now``."""
        ring = cls(max_token_ttl=max_token_ttl, key_lifetime=key_lifetime, clock_skew=clock_skew)
        ring.rotate(now)
        return ring

    def _new_key(self, now: datetime) -> SigningKey:
        private_key = ec.generate_private_key(ec.SECP256R1())
        kid = jwk_thumbprint(_p256_public_jwk(private_key.public_key()))
        not_after = now + self.key_lifetime
        return SigningKey(
            kid=kid,
            created=now,
            not_after=not_after,
            retire_at=not_after + self.max_token_ttl + self.clock_skew,
            private_key=private_key,
        )

    # -- use ------------------------------------------------------------------------------------

    def current(self) -> SigningKey:
        """The key that signs now."""
        if self._current_kid is None:
            raise KeyringError("the keyring has no current key", hint="call rotate(now) first")
        return self._keys[self._current_kid]

    def signing_key(self, now: datetime) -> SigningKey:
        """The current key, checked to be inside its signing window at ``now``."""
        now = _aware(now, "now")
        key = self.current()
        if not key.can_sign(now):
            raise KeyringError(
                "the current signing key is outside its signing window",
                field="now",
                expected=f"[{key.created.isoformat()}, {key.not_after.isoformat()})",
                actual=now.isoformat(),
                hint="rotate the keyring (rotation_due(now) says when)",
            )
        return key

    def rotation_due(self, now: datetime) -> bool:
        """True when there is no current key or it may no longer sign at ``now``."""
        now = _aware(now, "now")
        return self._current_kid is None or not self.current().can_sign(now)

    def rotate(self, now: datetime) -> SigningKey:
        """Make a new current key; the old one stops signing at ``now`` and retires later."""
        now = _aware(now, "now")
        if self._current_kid is not None:
            old = self._keys[self._current_kid]
            if now < old.created:
                raise KeyringError(
                    "rotation time is before the current key was created",
                    field="now",
                    expected=f">= {old.created.isoformat()}",
                    actual=now.isoformat(),
                )
            end = min(now, old.not_after)
            self._keys[old.kid] = replace(
                old, not_after=end, retire_at=end + self.max_token_ttl + self.clock_skew
            )
        self.prune(now)
        if len(self._keys) >= MAX_KEYRING_KEYS:
            raise KeyringError(
                "too many published keys to rotate again",
                field="keys",
                expected=f"< {MAX_KEYRING_KEYS}",
                actual=len(self._keys),
                hint="rotation is far more frequent than the token TTL",
            )
        key = self._new_key(now)
        self._keys[key.kid] = key
        self._current_kid = key.kid
        return key

    def prune(self, now: datetime) -> tuple[str, ...]:
        """Drop keys past ``retire_at`` (never the current one); returns the dropped kids."""
        now = _aware(now, "now")
        dropped = tuple(
            kid
            for kid, key in self._keys.items()
            if kid != self._current_kid and not key.published(now)
        )
        for kid in dropped:
            del self._keys[kid]
        return dropped

    def signing_keys(self) -> tuple[SigningKey, ...]:
        """Every key in the ring, current and superseded, oldest first."""
        return tuple(self._keys.values())

    def get(self, kid: str, now: datetime) -> SigningKey | None:
        """The key ``kid`` if it is still published at ``now``."""
        now = _aware(now, "now")
        key = self._keys.get(kid)
        return key if key is not None and key.published(now) else None

    def jwks(self, now: datetime) -> dict[str, Any]:
        """The JWK Set to publish at ``now``: public parts of every key not yet retired."""
        now = _aware(now, "now")
        keys = sorted(
            (key for key in self._keys.values() if key.published(now) and key.created <= now),
            key=lambda key: key.created,
            reverse=True,
        )
        return {"keys": [key.public_jwk for key in keys]}

    # -- persistence ----------------------------------------------------------------------------

    def dump(self, wrap: Wrap) -> bytes:
        """The ring serialised and passed through ``wrap``; refuses a wrap that leaves it readable."""
        document = {
            "format": _FORMAT,
            "max_token_ttl": self.max_token_ttl.total_seconds(),
            "key_lifetime": self.key_lifetime.total_seconds(),
            "clock_skew": self.clock_skew.total_seconds(),
            "current": self._current_kid,
            "keys": [
                {
                    "kid": key.kid,
                    "created": key.created.isoformat(),
                    "not_after": key.not_after.isoformat(),
                    "retire_at": key.retire_at.isoformat(),
                    "pkcs8": b64url_encode(
                        key.private_key.private_bytes(
                            serialization.Encoding.DER,
                            serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption(),
                        )
                    ),
                }
                for key in self._keys.values()
            ],
        }
        clear = json.dumps(document, separators=(",", ":")).encode("utf-8")
        wrapped = wrap(clear)
        if not isinstance(wrapped, bytes) or clear in wrapped or b'"pkcs8":' in wrapped:
            raise KeyringError(
                "the wrapping function did not encrypt the keyring",
                field="wrap",
                hint="pass a real key-encryption function (e.g. aes_gcm_wrapping(kek)[0])",
            )
        return wrapped

    def save(self, store: KeyringStore, wrap: Wrap) -> None:
        store.save(self.dump(wrap))

    @classmethod
    def loads(cls, data: bytes, unwrap: Unwrap) -> Keyring:
        """Inverse of :meth:`dump`."""
        if len(data) > MAX_KEYRING_BYTES:
            raise KeyringError(
                "wrapped keyring is over its size limit",
                field="keyring",
                expected=f"<= {MAX_KEYRING_BYTES} bytes",
                actual=len(data),
            )
        clear = unwrap(data)
        try:
            document = json.loads(clear)
            if document.get("format") != _FORMAT:
                raise KeyringError(
                    "not a nacre keyring",
                    field="format",
                    expected=_FORMAT,
                    actual=document.get("format"),
                )
            ring = cls(
                max_token_ttl=timedelta(seconds=float(document["max_token_ttl"])),
                key_lifetime=timedelta(seconds=float(document["key_lifetime"])),
                clock_skew=timedelta(seconds=float(document["clock_skew"])),
            )
            for entry in document["keys"]:
                private_key = serialization.load_der_private_key(
                    b64url_decode(entry["pkcs8"]), password=None
                )
                if not isinstance(private_key, ec.EllipticCurvePrivateKey) or not isinstance(
                    private_key.curve, ec.SECP256R1
                ):
                    raise KeyringError("keyring holds a key that is not P-256", field="pkcs8")
                kid = jwk_thumbprint(_p256_public_jwk(private_key.public_key()))
                if kid != entry["kid"]:
                    raise KeyringError(
                        "stored kid does not match its key",
                        field="kid",
                        expected=kid,
                        actual=entry["kid"],
                    )
                ring._keys[kid] = SigningKey(
                    kid=kid,
                    created=_aware(datetime.fromisoformat(entry["created"]), "created"),
                    not_after=_aware(datetime.fromisoformat(entry["not_after"]), "not_after"),
                    retire_at=_aware(datetime.fromisoformat(entry["retire_at"]), "retire_at"),
                    private_key=private_key,
                )
            current = document["current"]
            if current is not None and current not in ring._keys:
                raise KeyringError("current kid is not in the keyring", field="current")
            ring._current_kid = current
        except KeyringError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise KeyringError(
                "keyring document is malformed", field="keyring", actual=type(exc).__name__
            ) from None
        return ring

    @classmethod
    def load(cls, store: KeyringStore, unwrap: Unwrap) -> Keyring | None:
        """The ring saved in ``store``, or None if the store is empty."""
        data = store.load()
        return None if data is None else cls.loads(data, unwrap)

    def __repr__(self) -> str:
        return f"Keyring(current={self._current_kid!r}, kids={list(self._keys)!r})"
