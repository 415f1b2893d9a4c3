"""Key material and the cryptographic operations per key type, all with ``cryptography``.

Material as the store keeps it (envelope-encrypted, never in clear at rest):

    AES-256                 the 32 raw key bytes
    EC-P256 | EC-P384 |
    secp256k1 | Ed25519 |
    RSA-3072                PKCS#8 DER of the private key, unencrypted (the envelope encrypts it)

Public keys are kept beside each version as SubjectPublicKeyInfo DER (public parts are not secret).

Service ciphertexts (encrypt, generate_data_key, wrap) carry the key id and version, so decrypt and
unwrap pick the right version after a rotation::

    "NKM1" | kind (1 byte) | len(key id) (1 byte) | key id (ASCII) | version (4 bytes, big-endian) | body

    kind 1  AES-256-GCM      body = nonce (12) | ciphertext | tag (16); GCM AAD = header | caller's AAD
    kind 2  RSA-OAEP-256     body = OAEP ciphertext; OAEP label = header | caller's AAD
    kind 3  AES-KWP          body = RFC 5649 key wrap with padding (no AAD: KW has none; a header
                             edited to another key or version makes the unwrap fail its check)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Final, Literal

from cryptography.exceptions import InvalidSignature, InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import (
    InvalidUnwrap,
    aes_key_unwrap_with_padding,
    aes_key_wrap_with_padding,
)

from nacre.kms.errors import CiphertextError, KeyImportError, KeyUsageError
from nacre.store.models import KeyType

__all__ = [
    "ASYMMETRIC_TYPES",
    "CIPHERTEXT_MAGIC",
    "KIND_AES_GCM",
    "KIND_AES_KWP",
    "KIND_NAMES",
    "KIND_RSA_OAEP",
    "SIGNING_ALGORITHMS",
    "CiphertextHeader",
    "SignatureFormat",
    "aes_decrypt",
    "aes_encrypt",
    "aes_unwrap",
    "aes_wrap",
    "check_material",
    "generate_material",
    "low_s",
    "parse_ciphertext",
    "public_der",
    "public_pem",
    "rsa_decrypt",
    "rsa_encrypt",
    "sign",
    "verify",
]

CIPHERTEXT_MAGIC: Final = b"NKM1"
KIND_AES_GCM: Final = 1
KIND_RSA_OAEP: Final = 2
KIND_AES_KWP: Final = 3
KIND_NAMES: Final = {
    KIND_AES_GCM: "AES-256-GCM",
    KIND_RSA_OAEP: "RSA-OAEP-256",
    KIND_AES_KWP: "AES-KWP",
}
_NONCE_BYTES: Final = 12
_TAG_BYTES: Final = 16
_AES_BYTES: Final = 32
_RSA_BITS: Final = 3072
_RSA_EXPONENT: Final = 65537

ASYMMETRIC_TYPES: Final[frozenset[str]] = frozenset(
    {"EC-P256", "EC-P384", "Ed25519", "secp256k1", "RSA-3072"}
)
#: The signature algorithm of each signing key type.
SIGNING_ALGORITHMS: Final[dict[str, str]] = {
    "EC-P256": "ECDSA_SHA_256",
    "EC-P384": "ECDSA_SHA_384",
    "secp256k1": "ECDSA_SHA_256",
    "Ed25519": "Ed25519",
    "RSA-3072": "RSA_PSS_SHA_256",
}
_CURVES: Final[dict[str, type[ec.EllipticCurve]]] = {
    "EC-P256": ec.SECP256R1,
    "EC-P384": ec.SECP384R1,
    "secp256k1": ec.SECP256K1,
}
_HASHES: Final[dict[str, type[hashes.HashAlgorithm]]] = {
    "EC-P256": hashes.SHA256,
    "EC-P384": hashes.SHA384,
    "secp256k1": hashes.SHA256,
    "RSA-3072": hashes.SHA256,
}
#: Group orders, for low-S normalization.
_ORDERS: Final[dict[str, int]] = {
    "EC-P256": 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    "EC-P384": int(
        "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973",
        16,
    ),
    "secp256k1": 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141,
}
_SIZES: Final[dict[str, int]] = {"EC-P256": 32, "EC-P384": 48, "secp256k1": 32}

SignatureFormat = Literal["der", "raw"]
_PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
_PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey


def _pss() -> padding.PSS:
    # PS256 as JOSE defines it: MGF1-SHA-256, salt as long as the digest.
    return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)


def _oaep(label: bytes) -> padding.OAEP:
    return padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=label)


# -- material ------------------------------------------------------------------------------------


def _pkcs8(key: _PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def generate_material(key_type: KeyType) -> tuple[bytes, bytes | None]:
    """Fresh material for ``key_type`` and its public key (SPKI DER; None for AES)."""
    if key_type == "AES-256":
        return AESGCM.generate_key(bit_length=256), None
    key: _PrivateKey
    if key_type in _CURVES:
        key = ec.generate_private_key(_CURVES[key_type]())
    elif key_type == "Ed25519":
        key = ed25519.Ed25519PrivateKey.generate()
    elif key_type == "RSA-3072":
        key = rsa.generate_private_key(public_exponent=_RSA_EXPONENT, key_size=_RSA_BITS)
    else:
        raise KeyUsageError(
            "unknown key type",
            field="type",
            expected=", ".join(SIGNING_ALGORITHMS),
            actual=key_type,
        )
    return _pkcs8(key), public_der(key.public_key())


def _matches(key_type: KeyType, key: object) -> bool:
    if key_type in _CURVES:
        return isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == (
            _CURVES[key_type]().name
        )
    if key_type == "Ed25519":
        return isinstance(key, ed25519.Ed25519PrivateKey)
    if key_type == "RSA-3072":
        return isinstance(key, rsa.RSAPrivateKey) and key.key_size == _RSA_BITS
    return False


def check_material(key_type: KeyType, material: bytes) -> tuple[bytes, bytes | None]:
    """Validate imported material of ``key_type``: AES raw 32 bytes; others a PKCS#8 (or
    traditional) DER private key of exactly that type. Returns it normalised as stored."""
    if key_type == "AES-256":
        if len(material) != _AES_BYTES:
            raise KeyImportError(
                "AES-256 material is 32 raw bytes",
                field="material",
                expected=f"{_AES_BYTES} bytes",
                actual=f"{len(material)} bytes",
            )
        return bytes(material), None
    try:
        key = serialization.load_der_private_key(bytes(material), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyImportError(
            "import material is not a DER private key",
            field="material",
            expected="PKCS#8 DER",
            actual=f"{len(material)} bytes",
        ) from None
    if not _matches(key_type, key):
        raise KeyImportError(
            "import material is a key of another type",
            field="material",
            expected=key_type,
            actual=type(key).__name__,
        )
    assert isinstance(
        key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
    )
    return _pkcs8(key), public_der(key.public_key())


def _private(key_type: KeyType, material: bytes) -> _PrivateKey:
    key = serialization.load_der_private_key(material, password=None)
    if not _matches(key_type, key):
        raise KeyUsageError("stored material does not match its key type", field="type")
    assert isinstance(
        key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
    )
    return key


def public_der(key: _PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _public(der: bytes) -> _PublicKey:
    key = serialization.load_der_public_key(der)
    assert isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey)
    return key


def public_pem(der: bytes) -> str:
    return (
        _public(der)
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii")
    )


# -- ciphertext framing --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CiphertextHeader:
    """What a service ciphertext says about itself (readable without any key)."""

    key_id: str
    version: int
    kind: int
    algorithm: str
    header: bytes
    body: bytes


def _header(kind: int, key_id: str, version: int) -> bytes:
    raw_id = key_id.encode("ascii")
    return CIPHERTEXT_MAGIC + bytes([kind, len(raw_id)]) + raw_id + version.to_bytes(4, "big")


def parse_ciphertext(blob: bytes) -> CiphertextHeader:
    """Split a service ciphertext into its header fields and body; checks every length."""
    if not isinstance(blob, bytes | bytearray):
        raise CiphertextError(
            "a ciphertext is bytes", field="ciphertext", actual=type(blob).__name__
        )
    data = bytes(blob)
    if len(data) < 6 or not data.startswith(CIPHERTEXT_MAGIC):
        raise CiphertextError(
            "not a nacre KMS ciphertext",
            field="ciphertext",
            expected=f"starts with {CIPHERTEXT_MAGIC!r}",
            actual=repr(data[:4]),
        )
    kind, id_len = data[4], data[5]
    if kind not in KIND_NAMES:
        raise CiphertextError(
            "unknown ciphertext kind",
            field="ciphertext.kind",
            expected=str(KIND_NAMES),
            actual=kind,
        )
    end = 6 + id_len + 4
    if id_len == 0 or len(data) < end:
        raise CiphertextError("truncated ciphertext header", field="ciphertext", actual=len(data))
    try:
        key_id = data[6 : 6 + id_len].decode("ascii")
    except UnicodeDecodeError:
        raise CiphertextError(
            "key id in ciphertext is not ASCII", field="ciphertext.key_id"
        ) from None
    version = int.from_bytes(data[6 + id_len : end], "big")
    if version < 1:
        raise CiphertextError(
            "key version in ciphertext < 1", field="ciphertext.version", actual=version
        )
    return CiphertextHeader(key_id, version, kind, KIND_NAMES[kind], data[:end], data[end:])


def aes_encrypt(key: bytes, key_id: str, version: int, plaintext: bytes, aad: bytes) -> bytes:
    header = _header(KIND_AES_GCM, key_id, version)
    nonce = os.urandom(_NONCE_BYTES)
    return header + nonce + AESGCM(key).encrypt(nonce, plaintext, header + aad)


def aes_decrypt(key: bytes, parsed: CiphertextHeader, aad: bytes) -> bytes:
    body = parsed.body
    if len(body) < _NONCE_BYTES + _TAG_BYTES:
        raise CiphertextError("truncated AES-GCM ciphertext", field="ciphertext", actual=len(body))
    try:
        return AESGCM(key).decrypt(body[:_NONCE_BYTES], body[_NONCE_BYTES:], parsed.header + aad)
    except InvalidTag:
        raise CiphertextError(
            "the ciphertext does not authenticate",
            field="ciphertext.tag",
            hint="tampered, or decrypted with another AAD than it was encrypted with",
        ) from None


def aes_wrap(key: bytes, key_id: str, version: int, secret: bytes) -> bytes:
    return _header(KIND_AES_KWP, key_id, version) + aes_key_wrap_with_padding(key, secret)


def aes_unwrap(key: bytes, parsed: CiphertextHeader) -> bytes:
    try:
        return aes_key_unwrap_with_padding(key, parsed.body)
    except (InvalidUnwrap, ValueError):
        raise CiphertextError(
            "the wrapped key does not unwrap",
            field="wrapped.integrity",
            hint="tampered or truncated",
        ) from None


def rsa_encrypt(
    public_key_der: bytes, key_id: str, version: int, plaintext: bytes, aad: bytes
) -> bytes:
    key = _public(public_key_der)
    assert isinstance(key, rsa.RSAPublicKey)
    limit = key.key_size // 8 - 2 * hashes.SHA256.digest_size - 2
    if len(plaintext) > limit:
        raise KeyUsageError(
            "plaintext too long for RSA-OAEP-256 with this key",
            field="plaintext",
            expected=f"<= {limit} bytes",
            actual=f"{len(plaintext)} bytes",
            hint="encrypt a data key (generate_data_key) and the data under it",
        )
    header = _header(KIND_RSA_OAEP, key_id, version)
    return header + key.encrypt(plaintext, _oaep(header + aad))


def rsa_decrypt(material: bytes, parsed: CiphertextHeader, aad: bytes) -> bytes:
    key = _private("RSA-3072", material)
    assert isinstance(key, rsa.RSAPrivateKey)
    try:
        return key.decrypt(parsed.body, _oaep(parsed.header + aad))
    except ValueError:
        raise CiphertextError(
            "the ciphertext does not decrypt",
            field="ciphertext",
            hint="tampered, or decrypted with another AAD than it was encrypted with",
        ) from None


# -- signatures ----------------------------------------------------------------------------------


def low_s(key_type: KeyType, s: int) -> int:
    """``s`` or ``n - s``, whichever is at most n/2 (BIP-62/EIP-2 malleability rule)."""
    n = _ORDERS[key_type]
    return n - s if s > n // 2 else s


def _ecdsa_hash(key_type: KeyType, prehashed: bool) -> ec.ECDSA:
    algorithm = _HASHES[key_type]()
    return ec.ECDSA(utils.Prehashed(algorithm) if prehashed else algorithm)


def _check_prehash(key_type: KeyType, message: bytes, prehashed: bool) -> None:
    if not prehashed:
        return
    if key_type == "Ed25519":
        raise KeyUsageError(
            "Ed25519 signs the message itself, not a digest",
            field="prehashed",
            expected="False for Ed25519",
            actual=True,
        )
    size = _HASHES[key_type]().digest_size
    if len(message) != size:
        raise KeyUsageError(
            "a prehashed message is one digest",
            field="message",
            expected=f"{size} bytes",
            actual=f"{len(message)} bytes",
        )


def sign(
    key_type: KeyType,
    material: bytes,
    message: bytes,
    *,
    prehashed: bool,
    normalize_s: bool,
    deterministic: bool,
) -> tuple[bytes, bytes | None]:
    """The signature (DER for ECDSA) and, for ECDSA, the raw ``r || s`` form."""
    _check_prehash(key_type, message, prehashed)
    key = _private(key_type, material)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(message), None
    if isinstance(key, rsa.RSAPrivateKey):
        algorithm = hashes.SHA256()
        return key.sign(
            message, _pss(), utils.Prehashed(algorithm) if prehashed else algorithm
        ), None
    chosen = _HASHES[key_type]()
    ecdsa = ec.ECDSA(
        utils.Prehashed(chosen) if prehashed else chosen, deterministic_signing=deterministic
    )
    der = key.sign(message, ecdsa)
    r, s = utils.decode_dss_signature(der)
    if normalize_s:
        s = low_s(key_type, s)
        der = utils.encode_dss_signature(r, s)
    size = _SIZES[key_type]
    return der, r.to_bytes(size, "big") + s.to_bytes(size, "big")


def verify(
    key_type: KeyType,
    public_key_der: bytes,
    message: bytes,
    signature: bytes,
    *,
    prehashed: bool,
    signature_format: SignatureFormat,
    require_low_s: bool,
) -> bool:
    """True when ``signature`` is valid over ``message`` (False, never an exception, otherwise;
    a malformed raw signature is a :class:`CiphertextError`)."""
    _check_prehash(key_type, message, prehashed)
    key = _public(public_key_der)
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, message)
            return True
        if isinstance(key, rsa.RSAPublicKey):
            algorithm = hashes.SHA256()
            key.verify(
                signature, message, _pss(), utils.Prehashed(algorithm) if prehashed else algorithm
            )
            return True
        size = _SIZES[key_type]
        if signature_format == "raw":
            if len(signature) != 2 * size:
                raise CiphertextError(
                    "a raw ECDSA signature is r || s",
                    field="signature",
                    expected=f"{2 * size} bytes",
                    actual=f"{len(signature)} bytes",
                )
            r = int.from_bytes(signature[:size], "big")
            s = int.from_bytes(signature[size:], "big")
            der = utils.encode_dss_signature(r, s)
        else:
            der = signature
            try:
                r, s = utils.decode_dss_signature(der)
            except ValueError:
                return False
        if require_low_s and s > _ORDERS[key_type] // 2:
            return False
        key.verify(der, message, _ecdsa_hash(key_type, prehashed))
        return True
    except InvalidSignature:
        return False
