"""Envelope encryption for everything secret the store keeps.

Three levels, so the database alone never yields a secret:

1. **Data key** (DK): 32 random bytes per secret version and per key version. The plaintext is
   encrypted with AES-256-GCM under the DK, a random 96-bit nonce and associated data (AAD) that
   names the row: ``nacre/envelope/v1 | table | row id | version``. A ciphertext moved to another
   row (or another version of the same row) fails authentication.
2. **Key-encryption key** (KEK): 32 random bytes with a random 16-hex-digit id. Each DK is wrapped
   under the current KEK with AES key wrap (RFC 3394, ``cryptography``'s ``aes_key_wrap``); the row
   records the KEK id. The database holds ciphertext, wrapped DK, KEK id, nonce and AAD only.
3. **Sealing**: the KEKs exist outside memory only *sealed* by a :class:`KekSealer` (the service's
   own TEE: :class:`nacre.tee.sealing.Sealer`, :class:`nacre.tee.sim.SimBackend` or any
   ``nacre.tee`` backend satisfies the protocol; on a laptop the simulated platform's sealing root),
   in ``<data dir>/kek.json`` (mode 0600, written atomically)::

       {"format": "nacre-kek/v1", "current": "<id>", "keks": {"<id>": "<base64 sealed blob>"}}

   Each blob is sealed with AAD ``nacre/store/kek/v1 | id`` so blobs cannot be swapped between ids,
   and with the ``mrsigner`` policy by default: a patched service build from the same signer (same
   or higher ISVSVN) can still open its database, an older (possibly vulnerable) one cannot.

KEK rotation (:meth:`KekRing.rotate`) adds a new KEK and makes it current: new writes use it at
once, rows under older KEKs stay readable (old KEKs are kept), and ``Store.rewrap_all()`` rewraps
every DK under the current KEK (only the small wrapped DK changes, never the ciphertext). After
that, :meth:`KekRing.retire` drops a KEK that no row uses any more.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import (
    InvalidUnwrap,
    aes_key_unwrap,
    aes_key_wrap,
)

from nacre.errors import UsageError
from nacre.store.errors import EnvelopeError

__all__ = [
    "AAD_LABEL",
    "DATA_KEY_BYTES",
    "KEK_FILE",
    "KEK_FORMAT",
    "Envelope",
    "KekRing",
    "KekSealer",
    "SealPolicyName",
    "envelope_aad",
    "open_envelope",
    "rewrap",
    "seal_envelope",
]

DATA_KEY_BYTES: Final = 32
KEK_BYTES: Final = 32
NONCE_BYTES: Final = 12
KEK_FILE: Final = "kek.json"
KEK_FORMAT: Final = "nacre-kek/v1"
AAD_LABEL: Final = b"nacre/envelope/v1"
_KEK_AAD_LABEL: Final = b"nacre/store/kek/v1\x00"

SealPolicyName = Literal["mrenclave", "mrsigner"]


class KekSealer(Protocol):
    """What the store needs from a TEE to keep its KEKs: seal and unseal with associated data.

    :class:`nacre.tee.sealing.Sealer` and every ``nacre.tee`` backend that can seal fit as they are
    (the store sits below ``nacre.tee`` in the layers, so it takes the sealer as an argument).
    """

    def seal(self, data: bytes, *, policy: SealPolicyName = ..., aad: bytes = ...) -> bytes: ...

    def unseal(self, blob: bytes, *, aad: bytes = ...) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Envelope:
    """One encrypted value as stored: every field is safe to keep in the database."""

    ciphertext: bytes
    wrapped_key: bytes
    kek_id: str
    nonce: bytes
    aad: bytes


def envelope_aad(table: str, row: str, version: int) -> bytes:
    """The associated data binding a ciphertext to its row: label, table, row id, version."""
    parts = [AAD_LABEL, table.encode(), row.encode(), str(version).encode()]
    return b"\x00".join(len(p).to_bytes(4, "big") + p for p in parts)


def _kek_aad(kek_id: str) -> bytes:
    return _KEK_AAD_LABEL + kek_id.encode()


class KekRing:
    """The unsealed KEKs of one data directory, the current one first in line for new writes."""

    def __init__(
        self,
        path: Path,
        sealer: KekSealer,
        *,
        keks: dict[str, bytes],
        sealed: dict[str, str],
        current: str,
        policy: SealPolicyName,
    ) -> None:
        self._path = path
        self._sealer = sealer
        self._keks = keks
        self._sealed = sealed
        self._current = current
        self._policy: SealPolicyName = policy

    @classmethod
    def load_or_create(
        cls, data_dir: str | Path, sealer: KekSealer, *, policy: SealPolicyName = "mrsigner"
    ) -> KekRing:
        """Unseal ``<data_dir>/kek.json``; create it (with a first KEK) when it does not exist."""
        directory = Path(data_dir)
        path = directory / KEK_FILE
        if not path.exists():
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            ring = cls(path, sealer, keks={}, sealed={}, current="", policy=policy)
            ring.rotate()
            return ring
        return cls._load(path, sealer, policy)

    @classmethod
    def _load(cls, path: Path, sealer: KekSealer, policy: SealPolicyName) -> KekRing:
        try:
            doc = json.loads(path.read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise UsageError(
                f"cannot read the KEK file {path}: {exc}",
                field=KEK_FILE,
                expected=f"a {KEK_FORMAT} JSON document",
                actual=type(exc).__name__,
            ) from exc
        if not isinstance(doc, dict) or doc.get("format") != KEK_FORMAT:
            raise UsageError(
                "the KEK file has an unknown format",
                field="format",
                expected=KEK_FORMAT,
                actual=doc.get("format") if isinstance(doc, dict) else type(doc).__name__,
            )
        sealed_raw = doc.get("keks")
        current = doc.get("current")
        if not isinstance(sealed_raw, dict) or not isinstance(current, str):
            raise UsageError(
                "the KEK file lacks its keys or current id",
                field="keks",
                expected="an object of id -> sealed blob and a current id",
                actual=sorted(doc),
            )
        if current not in sealed_raw:
            raise UsageError(
                "the KEK file's current id names no key in it",
                field="current",
                expected=f"one of {sorted(sealed_raw)}",
                actual=current,
            )
        keks: dict[str, bytes] = {}
        sealed: dict[str, str] = {}
        for kek_id, blob_b64 in sealed_raw.items():
            if not isinstance(kek_id, str) or not isinstance(blob_b64, str):
                raise UsageError(
                    "the KEK file holds a malformed entry",
                    field="keks",
                    expected="string id -> base64 string",
                    actual=repr(kek_id),
                )
            kek = sealer.unseal(base64.b64decode(blob_b64, validate=True), aad=_kek_aad(kek_id))
            if len(kek) != KEK_BYTES:
                raise EnvelopeError(
                    "an unsealed KEK has the wrong size",
                    field=f"kek {kek_id}",
                    expected=f"{KEK_BYTES} bytes",
                    actual=f"{len(kek)} bytes",
                )
            keks[kek_id] = kek
            sealed[kek_id] = blob_b64
        return cls(path, sealer, keks=keks, sealed=sealed, current=current, policy=policy)

    @property
    def path(self) -> Path:
        return self._path

    @property
    def current_id(self) -> str:
        return self._current

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(sorted(self._keks))

    def key(self, kek_id: str) -> bytes:
        try:
            return self._keks[kek_id]
        except KeyError:
            raise EnvelopeError(
                "the row is wrapped under a KEK this service does not hold",
                field="kek_id",
                expected=f"one of {list(self.ids)}",
                actual=kek_id,
                hint="restore the kek.json that belongs to this database",
            ) from None

    def rotate(self) -> str:
        """Make a new KEK current (persisted before it is used); returns its id."""
        kek_id = secrets.token_hex(8)
        kek = secrets.token_bytes(KEK_BYTES)
        blob = self._sealer.seal(kek, policy=self._policy, aad=_kek_aad(kek_id))
        sealed = {**self._sealed, kek_id: base64.b64encode(blob).decode("ascii")}
        self._write(sealed, kek_id)
        self._sealed = sealed
        self._keks = {**self._keks, kek_id: kek}
        self._current = kek_id
        return kek_id

    def retire(self, kek_id: str) -> None:
        """Forget a KEK (the caller checked that no row uses it). The current KEK stays."""
        if kek_id == self._current:
            raise UsageError(
                "the current KEK cannot be retired",
                field="kek_id",
                expected="a KEK that is not current",
                actual=kek_id,
            )
        self.key(kek_id)
        sealed = {k: v for k, v in self._sealed.items() if k != kek_id}
        self._write(sealed, self._current)
        self._sealed = sealed
        self._keks = {k: v for k, v in self._keks.items() if k != kek_id}

    def _write(self, sealed: dict[str, str], current: str) -> None:
        doc = {"format": KEK_FORMAT, "current": current, "keks": sealed}
        tmp = self._path.with_name(self._path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, json.dumps(doc, indent=2, sort_keys=True).encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o600)
        os.replace(tmp, self._path)
        dir_fd = os.open(self._path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def seal_envelope(ring: KekRing, plaintext: bytes, aad: bytes) -> Envelope:
    """Encrypt ``plaintext`` under a fresh data key wrapped by the current KEK."""
    data_key = secrets.token_bytes(DATA_KEY_BYTES)
    nonce = secrets.token_bytes(NONCE_BYTES)
    ciphertext = AESGCM(data_key).encrypt(nonce, plaintext, aad)
    kek_id = ring.current_id
    wrapped = aes_key_wrap(ring.key(kek_id), data_key)
    return Envelope(ciphertext=ciphertext, wrapped_key=wrapped, kek_id=kek_id, nonce=nonce, aad=aad)


def _unwrap(ring: KekRing, envelope: Envelope) -> bytes:
    try:
        return aes_key_unwrap(ring.key(envelope.kek_id), envelope.wrapped_key)
    except InvalidUnwrap:
        raise EnvelopeError(
            "the wrapped data key does not unwrap under its KEK",
            field="wrapped_key",
            expected=f"a key wrapped under KEK {envelope.kek_id}",
            actual="RFC 3394 integrity check failed",
        ) from None


def open_envelope(ring: KekRing, envelope: Envelope, expected_aad: bytes) -> bytes:
    """Decrypt ``envelope``, which must belong to the row that ``expected_aad`` names."""
    if envelope.aad != expected_aad:
        raise EnvelopeError(
            "the stored ciphertext belongs to another row",
            field="aad",
            expected=expected_aad.hex(),
            actual=envelope.aad.hex(),
        )
    data_key = _unwrap(ring, envelope)
    try:
        return AESGCM(data_key).decrypt(envelope.nonce, envelope.ciphertext, expected_aad)
    except InvalidTag:
        raise EnvelopeError(
            "the stored ciphertext does not authenticate for this row",
            field="ciphertext",
            expected="an AES-GCM tag that verifies with the row's AAD",
            actual="authentication failure",
        ) from None


def rewrap(ring: KekRing, envelope: Envelope) -> Envelope:
    """The same envelope with its data key wrapped under the current KEK (ciphertext unchanged)."""
    if envelope.kek_id == ring.current_id:
        return envelope
    data_key = _unwrap(ring, envelope)
    current = ring.current_id
    return Envelope(
        ciphertext=envelope.ciphertext,
        wrapped_key=aes_key_wrap(ring.key(current), data_key),
        kek_id=current,
        nonce=envelope.nonce,
        aad=envelope.aad,
    )
