"""Sealing: AES-256-GCM under a key derived from the platform's sealing root and an SGX identity.

Key derivation follows SGX's EGETKEY(SEAL_KEY) rules:

- ``mrenclave`` policy: the key binds the exact MRENCLAVE (and ISVPRODID and ISVSVN, as SGX does);
- ``mrsigner`` policy: the key binds MRSIGNER + ISVPRODID, so every version of one product by one
  signer shares it;
- SVN: the key is derived for the ISVSVN recorded in the blob, and derivation is refused when that
  SVN is above the current enclave's. A newer enclave unseals what an older one sealed; an older
  enclave never unseals what a newer one sealed (it may be the vulnerable version).

Blob layout (little-endian, 72-byte header, then ciphertext and the 16-byte GCM tag)::

    0x00  magic        4   b"NCSL"
    0x04  version      u8  1
    0x05  policy       u8  1 = mrenclave, 2 = mrsigner
    0x06  reserved     u16 0
    0x08  measurement  32  MRENCLAVE (policy 1) or MRSIGNER (policy 2) sealed to
    0x28  isv_prod_id  u16
    0x2A  isv_svn      u16 the SVN the key is derived for
    0x2C  key_id       16  random per blob: HKDF salt, so every blob has its own key
    0x3C  nonce        12  AES-GCM nonce
    0x48  ciphertext || tag

The whole header is authenticated (GCM associated data = header || caller's aad), so a changed
identity, SVN, key id or nonce fails exactly like a flipped ciphertext bit.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from nacre.errors import LimitExceededError, UsageError
from nacre.tee.backend import SealingError, SealPolicy, SgxIdentity

__all__ = [
    "HEADER_SIZE",
    "MAGIC",
    "MAX_SEALED_BYTES",
    "MIN_SEALING_ROOT_BYTES",
    "VERSION",
    "SealedHeader",
    "Sealer",
    "derive_seal_key",
    "parse_header",
]

MAGIC: Final = b"NCSL"
VERSION: Final = 1
#: Plaintext (and blob) size limit: sealing is for keys and small state, not bulk data.
MAX_SEALED_BYTES: Final = 64 * 1024 * 1024
#: A sealing root shorter than Gramine's 128-bit SGX seal keys is not a key.
MIN_SEALING_ROOT_BYTES: Final = 16

_TAG_SIZE: Final = 16
_KEY_ID_SIZE: Final = 16
_NONCE_SIZE: Final = 12
_HEADER: Final = struct.Struct("<4sBBH32sHH16s12s")
HEADER_SIZE: Final = _HEADER.size  # 72
_POLICY_CODES: Final[dict[SealPolicy, int]] = {"mrenclave": 1, "mrsigner": 2}
_POLICY_NAMES: Final[dict[int, SealPolicy]] = {v: k for k, v in _POLICY_CODES.items()}
_INFO_LABEL: Final = b"nacre/seal/v1"


@dataclass(frozen=True, slots=True)
class SealedHeader:
    """The clear header of a sealed blob."""

    version: int
    policy: SealPolicy
    measurement: bytes
    isv_prod_id: int
    isv_svn: int
    key_id: bytes
    nonce: bytes

    def to_bytes(self) -> bytes:
        return _HEADER.pack(
            MAGIC,
            self.version,
            _POLICY_CODES[self.policy],
            0,
            self.measurement,
            self.isv_prod_id,
            self.isv_svn,
            self.key_id,
            self.nonce,
        )


def _malformed(message: str, field: str, expected: object, actual: object) -> SealingError:
    return SealingError(
        message, code="SEALED_BLOB_MALFORMED", field=field, expected=expected, actual=actual
    )


def parse_header(blob: bytes) -> SealedHeader:
    """Check and decode a sealed blob's header (magic, version, policy, reserved bytes)."""
    if len(blob) < HEADER_SIZE + _TAG_SIZE:
        raise _malformed(
            "the sealed blob is shorter than a header and a tag",
            "sealed blob size",
            f">= {HEADER_SIZE + _TAG_SIZE} bytes",
            f"{len(blob)} bytes",
        )
    magic, version, policy, reserved, measurement, prod_id, svn, key_id, nonce = _HEADER.unpack(
        blob[:HEADER_SIZE]
    )
    if magic != MAGIC:
        raise _malformed(
            "this is not a nacre sealed blob", "magic", MAGIC.hex(), bytes(magic).hex()
        )
    if version != VERSION:
        raise SealingError(
            f"sealed blob version {version} is not supported by this nacre",
            code="SEALED_BLOB_VERSION",
            field="version",
            expected=VERSION,
            actual=version,
            hint="unseal it with the nacre version that sealed it, then seal it again",
        )
    if policy not in _POLICY_NAMES:
        raise _malformed(
            "the sealed blob names an unknown sealing policy",
            "policy",
            "1 (mrenclave) or 2 (mrsigner)",
            policy,
        )
    if reserved != 0:
        raise _malformed("the sealed blob's reserved bytes are not zero", "reserved", 0, reserved)
    return SealedHeader(
        version=version,
        policy=_POLICY_NAMES[policy],
        measurement=measurement,
        isv_prod_id=prod_id,
        isv_svn=svn,
        key_id=key_id,
        nonce=nonce,
    )


def derive_seal_key(root: bytes, header: SealedHeader) -> bytes:
    """HKDF-SHA256(root; salt = key id; info = label, policy, measurement, ISVPRODID, ISVSVN)."""
    if len(root) < MIN_SEALING_ROOT_BYTES:
        raise UsageError(
            "the sealing root is too short to be a key",
            field="sealing root",
            expected=f">= {MIN_SEALING_ROOT_BYTES} bytes",
            actual=f"{len(root)} bytes",
        )
    info = (
        _INFO_LABEL
        + bytes([_POLICY_CODES[header.policy]])
        + header.measurement
        + struct.pack("<HH", header.isv_prod_id, header.isv_svn)
    )
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=header.key_id, info=info).derive(root)


def _check_size(name: str, data: bytes) -> None:
    if len(data) > MAX_SEALED_BYTES:
        raise LimitExceededError(
            f"{name} is larger than sealing allows",
            field=name,
            expected=f"<= {MAX_SEALED_BYTES} bytes",
            actual=f"{len(data)} bytes",
        )


@dataclass(frozen=True, slots=True)
class Sealer:
    """Seals to ``identity`` with keys derived from ``sealing_root(policy)``.

    ``sealing_root`` returns the platform secret for a policy: the simulator's one root for both,
    Gramine's ``_sgx_mrenclave`` or ``_sgx_mrsigner`` key.
    """

    identity: SgxIdentity
    sealing_root: Callable[[SealPolicy], bytes]

    def seal(self, data: bytes, *, policy: SealPolicy = "mrenclave", aad: bytes = b"") -> bytes:
        if policy not in _POLICY_CODES:
            raise UsageError(
                "unknown sealing policy",
                field="policy",
                expected="mrenclave or mrsigner",
                actual=policy,
            )
        _check_size("data", data)
        ident = self.identity
        header = SealedHeader(
            version=VERSION,
            policy=policy,
            measurement=ident.mrenclave if policy == "mrenclave" else ident.mrsigner,
            isv_prod_id=ident.isv_prod_id,
            isv_svn=ident.isv_svn,
            key_id=os.urandom(_KEY_ID_SIZE),
            nonce=os.urandom(_NONCE_SIZE),
        )
        head = header.to_bytes()
        key = derive_seal_key(self.sealing_root(policy), header)
        return head + AESGCM(key).encrypt(header.nonce, bytes(data), head + bytes(aad))

    def unseal(self, blob: bytes, *, aad: bytes = b"") -> bytes:
        _check_size("sealed blob", blob)
        # 1. The header is well formed and of a version we know.
        header = parse_header(blob)
        # 2. The blob was sealed to this identity (per its policy).
        self._check_identity(header)
        # 3. SGX's SVN rule: a key for a higher SVN than ours is never derived.
        self._check_svn(header)
        # 4. Derive the key for the recorded SVN; GCM authenticates header, aad and ciphertext.
        key = derive_seal_key(self.sealing_root(header.policy), header)
        head = blob[:HEADER_SIZE]
        try:
            return AESGCM(key).decrypt(header.nonce, blob[HEADER_SIZE:], head + bytes(aad))
        except InvalidTag:
            raise SealingError(
                "the sealed blob was modified or the associated data differs",
                code="SEALED_BLOB_AUTH_FAILED",
                field="sealed blob",
                expected="an AES-GCM tag that verifies",
                actual="authentication failure",
                hint="pass the same aad given to seal(); a blob changed in storage cannot be recovered",
            ) from None

    def _check_identity(self, header: SealedHeader) -> None:
        ident = self.identity
        if header.policy == "mrenclave":
            if header.measurement != ident.mrenclave:
                raise SealingError(
                    f"sealed to MRENCLAVE {header.measurement.hex()}, "
                    f"this enclave is {ident.mrenclave.hex()}",
                    code="SEAL_IDENTITY_MISMATCH",
                    field="mrenclave",
                    expected=header.measurement.hex(),
                    actual=ident.mrenclave.hex(),
                    hint="under the mrenclave policy only the very same enclave build can unseal; "
                    "seal with policy='mrsigner' to carry data across versions",
                )
        elif header.measurement != ident.mrsigner:
            raise SealingError(
                f"sealed to MRSIGNER {header.measurement.hex()}, "
                f"this enclave's signer is {ident.mrsigner.hex()}",
                code="SEAL_IDENTITY_MISMATCH",
                field="mrsigner",
                expected=header.measurement.hex(),
                actual=ident.mrsigner.hex(),
            )
        if header.isv_prod_id != ident.isv_prod_id:
            raise SealingError(
                f"sealed to ISVPRODID {header.isv_prod_id}, this enclave is ISVPRODID "
                f"{ident.isv_prod_id}",
                code="SEAL_IDENTITY_MISMATCH",
                field="isv_prod_id",
                expected=header.isv_prod_id,
                actual=ident.isv_prod_id,
            )

    def _check_svn(self, header: SealedHeader) -> None:
        if header.isv_svn > self.identity.isv_svn:
            raise SealingError(
                f"sealed at ISVSVN {header.isv_svn}, higher than this enclave's ISVSVN "
                f"{self.identity.isv_svn}: an older version never unseals a newer one's data",
                code="SEAL_SVN_TOO_HIGH",
                field="isv_svn",
                expected=f">= {header.isv_svn}",
                actual=self.identity.isv_svn,
                hint="run the newer enclave version to unseal this blob",
            )
