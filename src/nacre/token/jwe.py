"""Flattened JWE JSON serialization (RFC 7516 §7.2.2) of KBS resource responses.

What Trustee's KBS v0.4.0 sends and guest-components' ``kbs_protocol`` decrypts (``kbs-types``
``Response``; Trustee ``kbs/src/jwe/mod.rs``; guest-components ``kbs_protocol/src/keypair.rs``)::

    {"protected": b64url(header JSON), "encrypted_key": b64url, "iv": b64url,
     "ciphertext": b64url, "tag": b64url}                       # no "aad", no "header"

* ``enc`` is always ``A256GCM`` (96-bit IV, 128-bit tag); the GCM AAD is the ASCII of the
  ``protected`` member (RFC 7516 §5.1 step 14).
* ``alg`` follows the TEE key: ``ECDH-ES+A256KW`` for EC keys (ephemeral ECDH on the key's curve,
  Concat KDF with SHA-256, AlgorithmID "ECDH-ES+A256KW", empty PartyUInfo/PartyVInfo, 256-bit
  output; AES-256 key wrap of a random 256-bit CEK; ``epk`` in the protected header), or
  ``RSA-OAEP-256`` (OAEP, SHA-256, MGF1-SHA-256) for RSA keys of at least 2048 bits.
* The protected header is written byte for byte as ``{"alg":…,"enc":"A256GCM","epk":{"crv":…,
  "kty":"EC","x":…,"y":…}}``: guest-components does not use the received ``protected`` string as
  AAD but re-serialises the parsed header (``ProtectedHeader::generate_aad``: ``alg``, ``enc``, then
  the other members in sorted order, compact). Any other member order or spacing would make every
  tag check fail on the client. This is why the JWE is assembled here from ``cryptography``
  primitives instead of a JOSE library's own header serialisation.

Curves: P-256, P-384 and P-521 (RFC 7518 §6.2.1.1). Trustee's KBS accepts P-256 and P-521 TEE
keys; guest-components generates P-256 (default) or P-521.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.concatkdf import ConcatKDFHash
from cryptography.hazmat.primitives.keywrap import (
    InvalidUnwrap,
    aes_key_unwrap,
    aes_key_wrap,
)

from nacre.token.errors import JWE_INVALID, JWE_KEY_REFUSED, JweError
from nacre.token.keyring import b64url_decode, b64url_encode

__all__ = [
    "ALG_ECDH_ES_A256KW",
    "ALG_RSA_OAEP_256",
    "ENC_A256GCM",
    "JWE_MEMBERS",
    "MAX_JWE_PLAINTEXT_BYTES",
    "MIN_RSA_BITS",
    "check_tee_key",
    "decrypt",
    "encrypt_for_tee_key",
    "public_jwk",
]

ALG_ECDH_ES_A256KW: Final = "ECDH-ES+A256KW"
ALG_RSA_OAEP_256: Final = "RSA-OAEP-256"
ENC_A256GCM: Final = "A256GCM"
#: Members of a KBS resource response, in the order kbs-types serialises them.
JWE_MEMBERS: Final = ("protected", "encrypted_key", "iv", "ciphertext", "tag")
#: One resource; Trustee's KBS limits request payloads to 2 MB, resources are usually tiny.
MAX_JWE_PLAINTEXT_BYTES: Final = 2 * 1024 * 1024
#: Smallest RSA modulus a secret is wrapped to.
MIN_RSA_BITS: Final = 2048
#: Largest RSA modulus accepted (bounds the work a client-chosen key can cost us).
MAX_RSA_BITS: Final = 8192
#: Largest protected header accepted on decryption.
_MAX_PROTECTED_CHARS: Final = 4096

_CURVES: Final[dict[str, tuple[type[ec.EllipticCurve], int]]] = {
    "P-256": (ec.SECP256R1, 32),
    "P-384": (ec.SECP384R1, 48),
    "P-521": (ec.SECP521R1, 66),
}
_CURVE_NAMES: Final = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
_CEK_BYTES: Final = 32
_IV_BYTES: Final = 12
_TAG_BYTES: Final = 16


def _refuse(message: str, **kwargs: Any) -> JweError:
    return JweError(message, code=JWE_KEY_REFUSED, **kwargs)


def _malformed(message: str, **kwargs: Any) -> JweError:
    return JweError(message, code=JWE_INVALID, **kwargs)


def _b64_member(jwk: Mapping[str, Any], name: str, where: str) -> bytes:
    value = jwk.get(name)
    try:
        return b64url_decode(value)  # type: ignore[arg-type]
    except (ValueError, TypeError):
        raise _refuse(
            "key member is not base64url", field=f"{where}.{name}", actual=repr(value)[:80]
        ) from None


def _ec_public_key(jwk: Mapping[str, Any], where: str) -> tuple[ec.EllipticCurvePublicKey, str]:
    crv = jwk.get("crv")
    if crv not in _CURVES:
        raise _refuse(
            "EC curve refused",
            field=f"{where}.crv",
            expected="P-256 | P-384 | P-521",
            actual=repr(crv),
        )
    curve_type, size = _CURVES[crv]
    coordinates = []
    for name in ("x", "y"):
        raw = _b64_member(jwk, name, where)
        if len(raw) != size:
            raise _refuse(
                "EC coordinate has the wrong length",
                field=f"{where}.{name}",
                expected=f"{size} bytes",
                actual=f"{len(raw)} bytes",
            )
        coordinates.append(int.from_bytes(raw, "big"))
    try:
        key = ec.EllipticCurvePublicNumbers(
            coordinates[0], coordinates[1], curve_type()
        ).public_key()
    except ValueError:
        raise _refuse("EC point is not on the curve", field=where, actual=crv) from None
    return key, crv


def _rsa_public_key(jwk: Mapping[str, Any], where: str) -> rsa.RSAPublicKey:
    n = int.from_bytes(_b64_member(jwk, "n", where), "big")
    e = int.from_bytes(_b64_member(jwk, "e", where), "big")
    bits = n.bit_length()
    if not MIN_RSA_BITS <= bits <= MAX_RSA_BITS:
        raise _refuse(
            "RSA key size refused",
            field=f"{where}.n",
            expected=f"{MIN_RSA_BITS}..{MAX_RSA_BITS} bits",
            actual=f"{bits} bits",
        )
    if e < 3 or e % 2 == 0:
        raise _refuse(
            "RSA public exponent refused", field=f"{where}.e", expected="odd, >= 3", actual=e
        )
    try:
        return rsa.RSAPublicNumbers(e, n).public_key()
    except ValueError:
        raise _refuse("RSA key is malformed", field=where) from None


def public_jwk(
    key: ec.EllipticCurvePublicKey
    | ec.EllipticCurvePrivateKey
    | rsa.RSAPublicKey
    | rsa.RSAPrivateKey,
) -> dict[str, str]:
    """The public JWK of a TEE key, with the ``alg`` KBS expects (what a client sends as tee-pubkey)."""
    if isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        key = key.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        crv = _CURVE_NAMES.get(key.curve.name)
        if crv is None:
            raise _refuse(
                "EC curve refused",
                field="crv",
                expected="P-256 | P-384 | P-521",
                actual=key.curve.name,
            )
        size = _CURVES[crv][1]
        numbers = key.public_numbers()
        return {
            "kty": "EC",
            "crv": crv,
            "alg": ALG_ECDH_ES_A256KW,
            "x": b64url_encode(numbers.x.to_bytes(size, "big")),
            "y": b64url_encode(numbers.y.to_bytes(size, "big")),
        }
    numbers_rsa = key.public_numbers()
    return {
        "kty": "RSA",
        "alg": ALG_RSA_OAEP_256,
        "n": b64url_encode(numbers_rsa.n.to_bytes((numbers_rsa.n.bit_length() + 7) // 8, "big")),
        "e": b64url_encode(numbers_rsa.e.to_bytes((numbers_rsa.e.bit_length() + 7) // 8, "big")),
    }


def _concat_kdf(shared_secret: bytes) -> bytes:
    # RFC 7518 §4.6.2: otherinfo = AlgorithmID || PartyUInfo || PartyVInfo || SuppPubInfo, each
    # datum length-prefixed (32-bit big-endian); apu/apv absent, so empty; keydatalen = 256.
    algorithm_id = ALG_ECDH_ES_A256KW.encode("ascii")
    otherinfo = (
        len(algorithm_id).to_bytes(4, "big")
        + algorithm_id
        + (0).to_bytes(4, "big")
        + (0).to_bytes(4, "big")
        + (_CEK_BYTES * 8).to_bytes(4, "big")
    )
    return ConcatKDFHash(hashes.SHA256(), _CEK_BYTES, otherinfo).derive(shared_secret)


def _protected_header(alg: str, epk: Mapping[str, str] | None) -> str:
    header: dict[str, Any] = {"alg": alg, "enc": ENC_A256GCM}
    if epk is not None:
        header["epk"] = {name: epk[name] for name in ("crv", "kty", "x", "y")}
    return b64url_encode(json.dumps(header, separators=(",", ":")).encode("ascii"))


def _recipient(
    tee_pubkey_jwk: Mapping[str, Any],
) -> tuple[str, ec.EllipticCurvePublicKey | rsa.RSAPublicKey, str | None]:
    """The key-management algorithm, the public key and (EC) the curve of a TEE public JWK;
    every refusal of :func:`encrypt_for_tee_key` about the key is raised here."""
    where = "tee-pubkey"
    if not isinstance(tee_pubkey_jwk, Mapping):
        raise _refuse("TEE public key is not a JWK object", field=where)
    if any(name in tee_pubkey_jwk for name in ("d", "p", "q", "dp", "dq", "qi", "k")):
        raise _refuse("TEE public key JWK carries private key members", field=where)
    kty = tee_pubkey_jwk.get("kty")
    if kty == "EC":
        alg = ALG_ECDH_ES_A256KW
    elif kty == "RSA":
        alg = ALG_RSA_OAEP_256
    else:
        raise _refuse(
            "key type refused", field=f"{where}.kty", expected="EC | RSA", actual=repr(kty)
        )
    requested = tee_pubkey_jwk.get("alg", alg)
    if requested != alg:
        raise _refuse(
            "key algorithm refused", field=f"{where}.alg", expected=alg, actual=repr(requested)
        )
    if kty == "EC":
        key, crv = _ec_public_key(tee_pubkey_jwk, where)
        return alg, key, crv
    return alg, _rsa_public_key(tee_pubkey_jwk, where), None


def check_tee_key(tee_pubkey_jwk: Mapping[str, Any]) -> None:
    """Refuse (:class:`JweError`) a TEE public JWK :func:`encrypt_for_tee_key` would refuse, with
    the same error, without encrypting anything (no ephemeral key, no ECDH)."""
    _recipient(tee_pubkey_jwk)


def encrypt_for_tee_key(plaintext: bytes, tee_pubkey_jwk: Mapping[str, Any]) -> dict[str, str]:
    """Wrap ``plaintext`` to the TEE's public JWK as a KBS flattened JWE.

    EC keys get ``ECDH-ES+A256KW``, RSA keys ``RSA-OAEP-256``; if the JWK names an ``alg`` it must
    be that one (``RSA1_5`` and anything else is refused). A JWK carrying private members is refused.
    """
    if not isinstance(plaintext, bytes | bytearray):
        raise _malformed(
            "plaintext must be bytes", field="plaintext", actual=type(plaintext).__name__
        )
    if len(plaintext) > MAX_JWE_PLAINTEXT_BYTES:
        raise _malformed(
            "resource too large to wrap",
            field="plaintext",
            expected=f"<= {MAX_JWE_PLAINTEXT_BYTES} bytes",
            actual=len(plaintext),
        )
    alg, recipient, crv = _recipient(tee_pubkey_jwk)
    cek = os.urandom(_CEK_BYTES)
    if isinstance(recipient, ec.EllipticCurvePublicKey):
        assert crv is not None
        ephemeral = ec.generate_private_key(_CURVES[crv][0]())
        kek = _concat_kdf(ephemeral.exchange(ec.ECDH(), recipient))
        encrypted_key = aes_key_wrap(kek, cek)
        epk = public_jwk(ephemeral.public_key())
        protected = _protected_header(alg, epk)
    else:
        encrypted_key = recipient.encrypt(
            cek,
            padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None),
        )
        protected = _protected_header(alg, None)
    iv = os.urandom(_IV_BYTES)
    sealed = AESGCM(cek).encrypt(iv, bytes(plaintext), protected.encode("ascii"))
    return {
        "protected": protected,
        "encrypted_key": b64url_encode(encrypted_key),
        "iv": b64url_encode(iv),
        "ciphertext": b64url_encode(sealed[:-_TAG_BYTES]),
        "tag": b64url_encode(sealed[-_TAG_BYTES:]),
    }


def _member(jwe: Mapping[str, Any], name: str) -> bytes:
    value = jwe.get(name)
    if not isinstance(value, str):
        raise _malformed(
            "JWE member missing or not a string", field=name, actual=type(value).__name__
        )
    try:
        return b64url_decode(value)
    except ValueError:
        raise _malformed("JWE member is not base64url", field=name, actual=value[:40]) from None


def decrypt(
    jwe: Mapping[str, Any],
    private_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
) -> bytes:
    """Open a KBS flattened JWE with the TEE's private key (the workload side)."""
    # 1. Shape: exactly the five members KBS sends.
    if not isinstance(jwe, Mapping):
        raise _malformed("JWE is not a JSON object", field="jwe")
    unexpected = sorted(set(jwe) - set(JWE_MEMBERS))
    if unexpected:
        raise _malformed(
            "JWE has members this profile does not use",
            field=unexpected[0],
            expected=", ".join(JWE_MEMBERS),
            actual=", ".join(unexpected),
        )
    protected_text = jwe.get("protected")
    if not isinstance(protected_text, str) or len(protected_text) > _MAX_PROTECTED_CHARS:
        raise _malformed("protected header missing or too large", field="protected")
    try:
        header = json.loads(b64url_decode(protected_text))
    except ValueError:
        raise _malformed("protected header is not base64url JSON", field="protected") from None
    if not isinstance(header, dict):
        raise _malformed("protected header is not an object", field="protected")
    encrypted_key = _member(jwe, "encrypted_key")
    iv = _member(jwe, "iv")
    ciphertext = _member(jwe, "ciphertext")
    tag = _member(jwe, "tag")
    if len(ciphertext) > MAX_JWE_PLAINTEXT_BYTES:
        raise _malformed(
            "ciphertext too large",
            field="ciphertext",
            expected=f"<= {MAX_JWE_PLAINTEXT_BYTES} bytes",
        )
    if len(iv) != _IV_BYTES:
        raise _malformed(
            "IV has the wrong length",
            field="iv",
            expected=f"{_IV_BYTES} bytes",
            actual=f"{len(iv)} bytes",
        )
    if len(tag) != _TAG_BYTES:
        raise _malformed(
            "tag has the wrong length",
            field="tag",
            expected=f"{_TAG_BYTES} bytes",
            actual=f"{len(tag)} bytes",
        )

    # 2. Algorithms.
    enc = header.get("enc")
    if enc != ENC_A256GCM:
        raise _refuse(
            "content encryption refused", field="enc", expected=ENC_A256GCM, actual=repr(enc)
        )
    if "crit" in header or "zip" in header:
        raise _malformed("protected header uses unsupported features", field="crit/zip")
    alg = header.get("alg")

    # 3. Recover the CEK.
    try:
        if alg == ALG_ECDH_ES_A256KW:
            if not isinstance(private_key, ec.EllipticCurvePrivateKey):
                raise _refuse("ECDH-ES needs an EC private key", field="alg", actual=alg)
            epk = header.get("epk")
            if not isinstance(epk, Mapping) or epk.get("kty") != "EC":
                raise _malformed("ECDH-ES header lacks an EC epk", field="epk")
            if "apu" in header or "apv" in header:
                raise _malformed("PartyUInfo/PartyVInfo are not used by KBS", field="apu/apv")
            ephemeral, crv = _ec_public_key(epk, "epk")
            own_crv = _CURVE_NAMES.get(private_key.curve.name)
            if crv != own_crv:
                raise _malformed(
                    "epk curve differs from the key's",
                    field="epk.crv",
                    expected=own_crv,
                    actual=crv,
                )
            if len(encrypted_key) != _CEK_BYTES + 8:
                raise _malformed(
                    "wrapped key has the wrong length",
                    field="encrypted_key",
                    expected=f"{_CEK_BYTES + 8} bytes",
                    actual=f"{len(encrypted_key)} bytes",
                )
            kek = _concat_kdf(private_key.exchange(ec.ECDH(), ephemeral))
            cek = aes_key_unwrap(kek, encrypted_key)
        elif alg == ALG_RSA_OAEP_256:
            if not isinstance(private_key, rsa.RSAPrivateKey):
                raise _refuse("RSA-OAEP-256 needs an RSA private key", field="alg", actual=alg)
            if private_key.key_size < MIN_RSA_BITS:
                raise _refuse(
                    "RSA key size refused",
                    field="key",
                    expected=f">= {MIN_RSA_BITS} bits",
                    actual=private_key.key_size,
                )
            cek = private_key.decrypt(
                encrypted_key,
                padding.OAEP(
                    mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None
                ),
            )
        else:
            raise _refuse(
                "key management algorithm refused",
                field="alg",
                expected=f"{ALG_ECDH_ES_A256KW} | {ALG_RSA_OAEP_256}",
                actual=repr(alg),
            )
    except (InvalidUnwrap, ValueError):
        raise _malformed(
            "the content key does not unwrap with this private key",
            field="encrypted_key",
            hint="the JWE was made for another TEE key",
        ) from None
    if len(cek) != _CEK_BYTES:
        raise _malformed("content key has the wrong length", field="encrypted_key")

    # 4. Authenticated decryption; AAD = ASCII(protected).
    try:
        return AESGCM(cek).decrypt(iv, ciphertext + tag, protected_text.encode("ascii"))
    except InvalidTag:
        raise _malformed("JWE authentication tag does not verify", field="tag") from None
