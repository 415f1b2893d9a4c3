"""KBS flattened JWE: round trips, interop with an independent JOSE implementation, refusals."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc import jwe as jose_jwe
from joserfc.jwk import ECKey, RSAKey

from nacre.token.errors import JweError
from nacre.token.jwe import JWE_MEMBERS, decrypt, encrypt_for_tee_key, public_jwk

SECRET = b"model key \x00\xff" * 7

P256 = ec.generate_private_key(ec.SECP256R1())
P384 = ec.generate_private_key(ec.SECP384R1())
P521 = ec.generate_private_key(ec.SECP521R1())
RSA3072 = rsa.generate_private_key(public_exponent=65537, key_size=3072)
KEYS: dict[str, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey] = {
    "P-256": P256,
    "P-384": P384,
    "P-521": P521,
    "RSA-3072": RSA3072,
}


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.mark.parametrize("name", list(KEYS))
def test_round_trip(name: str) -> None:
    key = KEYS[name]
    jwe = encrypt_for_tee_key(SECRET, public_jwk(key))
    assert tuple(jwe) == JWE_MEMBERS  # exactly KBS's members, in kbs-types order; no "aad"
    header = json.loads(_unb64(jwe["protected"]))
    assert header["enc"] == "A256GCM"
    assert len(_unb64(jwe["iv"])) == 12
    assert len(_unb64(jwe["tag"])) == 16
    if name.startswith("P-"):
        assert header["alg"] == "ECDH-ES+A256KW"
        assert header["epk"]["crv"] == name
        assert header["epk"]["kty"] == "EC"
        assert len(_unb64(jwe["encrypted_key"])) == 40
    else:
        assert header == {"alg": "RSA-OAEP-256", "enc": "A256GCM"}
    assert decrypt(jwe, key) == SECRET


def test_empty_plaintext_round_trip() -> None:
    assert decrypt(encrypt_for_tee_key(b"", public_jwk(P256)), P256) == b""


@pytest.mark.parametrize("name", list(KEYS))
def test_protected_header_survives_guest_components_reserialisation(name: str) -> None:
    # guest-components recomputes the AAD by re-serialising the parsed header: alg, enc, then the
    # other members sorted (serde_json Map), compact. That must give back the exact same bytes.
    protected = encrypt_for_tee_key(SECRET, public_jwk(KEYS[name]))["protected"]
    header = json.loads(_unb64(protected))
    others = {k: header[k] for k in sorted(header) if k not in ("alg", "enc")}
    if "epk" in others:
        others["epk"] = dict(sorted(others["epk"].items()))
    rebuilt = json.dumps(
        {"alg": header["alg"], "enc": header["enc"], **others}, separators=(",", ":")
    )
    assert _b64(rebuilt.encode()) == protected


@pytest.mark.parametrize("name", list(KEYS))
def test_independent_jose_implementation_decrypts_ours(name: str) -> None:
    key = KEYS[name]
    jwe = encrypt_for_tee_key(SECRET, public_jwk(key))
    jose_key = ECKey(key, key) if isinstance(key, ec.EllipticCurvePrivateKey) else RSAKey(key, key)
    alg = json.loads(_unb64(jwe["protected"]))["alg"]
    opened = jose_jwe.decrypt_json(dict(jwe), jose_key, algorithms=[alg, "A256GCM"])  # type: ignore[arg-type]
    assert opened.plaintext == SECRET


@pytest.mark.parametrize("name", list(KEYS))
def test_we_decrypt_an_independent_implementation(name: str) -> None:
    key = KEYS[name]
    alg = "RSA-OAEP-256" if name.startswith("RSA") else "ECDH-ES+A256KW"
    public: ECKey | RSAKey
    if isinstance(key, ec.EllipticCurvePrivateKey):
        public = ECKey(key.public_key(), key.public_key())
    else:
        public = RSAKey(key.public_key(), key.public_key())
    compact = jose_jwe.encrypt_compact(
        {"alg": alg, "enc": "A256GCM"}, SECRET, public, algorithms=[alg, "A256GCM"]
    )
    protected, encrypted_key, iv, ciphertext, tag = compact.split(".")
    flattened = {
        "protected": protected,
        "encrypted_key": encrypted_key,
        "iv": iv,
        "ciphertext": ciphertext,
        "tag": tag,
    }
    assert decrypt(flattened, key) == SECRET


@pytest.mark.parametrize(
    ("name", "other"),
    [
        ("P-256", ec.generate_private_key(ec.SECP256R1())),
        ("RSA-3072", rsa.generate_private_key(65537, 3072)),
    ],
)
def test_wrong_key_fails(name: str, other: Any) -> None:
    jwe = encrypt_for_tee_key(SECRET, public_jwk(KEYS[name]))
    with pytest.raises(JweError) as info:
        decrypt(jwe, other)
    assert info.value.code == "JWE_INVALID"


def test_key_of_other_type_or_curve_fails() -> None:
    jwe = encrypt_for_tee_key(SECRET, public_jwk(P256))
    with pytest.raises(JweError):
        decrypt(jwe, RSA3072)
    with pytest.raises(JweError) as info:
        decrypt(jwe, P384)
    assert info.value.field == "epk.crv"


def _mutate(jwe: dict[str, str], member: str, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = dict(jwe)
    if value is None:
        del out[member]
    else:
        out[member] = value
    return out


def _flip(text: str) -> str:
    raw = bytearray(_unb64(text))
    raw[len(raw) // 2] ^= 1
    return _b64(bytes(raw))


@pytest.mark.parametrize("member", JWE_MEMBERS)
def test_flipped_bit_in_each_member_fails(member: str) -> None:
    jwe = encrypt_for_tee_key(SECRET, public_jwk(P256))
    with pytest.raises(JweError):
        decrypt(_mutate(jwe, member, _flip(jwe[member])), P256)


@pytest.mark.parametrize(
    ("member", "value", "field"),
    [
        ("protected", None, "protected"),
        ("protected", "!!", "protected"),
        ("protected", _b64(b"[1]"), "protected"),
        ("iv", None, "iv"),
        ("iv", _b64(b"\x00" * 16), "iv"),
        ("iv", "a+b/", "iv"),
        ("tag", _b64(b"\x00" * 8), "tag"),
        ("tag", 12, "tag"),
        ("ciphertext", None, "ciphertext"),
        ("encrypted_key", _b64(b"\x00" * 24), "encrypted_key"),
        ("aad", "ZmFrZWFhZA", "aad"),
        ("header", {"kid": "x"}, "header"),
    ],
)
def test_malformed_members(member: str, value: Any, field: str) -> None:
    jwe = encrypt_for_tee_key(SECRET, public_jwk(P256))
    with pytest.raises(JweError) as info:
        decrypt(_mutate(jwe, member, value), P256)
    assert info.value.field == field


@pytest.mark.parametrize(
    ("header", "field"),
    [
        ({"alg": "ECDH-ES+A256KW", "enc": "A128GCM"}, "enc"),
        ({"alg": "RSA1_5", "enc": "A256GCM"}, "alg"),
        ({"alg": "dir", "enc": "A256GCM"}, "alg"),
        ({"alg": "ECDH-ES+A256KW", "enc": "A256GCM"}, "epk"),
        (
            {
                "alg": "ECDH-ES+A256KW",
                "enc": "A256GCM",
                "epk": {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"},
            },
            "epk.x",
        ),
    ],
)
def test_refused_headers(header: dict[str, Any], field: str) -> None:
    jwe = encrypt_for_tee_key(SECRET, public_jwk(P256))
    jwe["protected"] = _b64(json.dumps(header).encode())
    with pytest.raises(JweError) as info:
        decrypt(jwe, P256)
    assert info.value.field == field


def test_not_a_mapping() -> None:
    with pytest.raises(JweError):
        decrypt("a.b.c.d.e", P256)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("jwk", "field"),
    [
        ({"kty": "OKP", "crv": "X25519", "x": "AA"}, "tee-pubkey.kty"),
        ({"kty": "EC", "crv": "secp256k1", "x": "AA", "y": "AA"}, "tee-pubkey.crv"),
        ({**public_jwk(P256), "alg": "ECDH-ES"}, "tee-pubkey.alg"),
        ({**public_jwk(P256), "x": public_jwk(P384)["x"]}, "tee-pubkey.x"),
        ({**public_jwk(P256), "y": public_jwk(P256)["x"]}, "tee-pubkey"),  # off the curve
        ({**public_jwk(RSA3072), "alg": "RSA1_5"}, "tee-pubkey.alg"),
        ({**public_jwk(RSA3072), "alg": "RSA-OAEP"}, "tee-pubkey.alg"),
        ({**public_jwk(P256), "d": "AA"}, "tee-pubkey"),
        ({"kty": "RSA", "n": "!!", "e": "AQAB"}, "tee-pubkey.n"),
    ],
)
def test_refused_tee_keys(jwk: dict[str, Any], field: str) -> None:
    with pytest.raises(JweError) as info:
        encrypt_for_tee_key(SECRET, jwk)
    assert info.value.code == "JWE_KEY_REFUSED"
    assert info.value.field == field


def test_small_rsa_key_refused() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(JweError) as info:
        encrypt_for_tee_key(SECRET, public_jwk(small))
    assert info.value.field == "tee-pubkey.n"
    assert info.value.actual == "1024 bits"


def test_jwk_without_alg_gets_the_default() -> None:
    jwk = {k: v for k, v in public_jwk(P256).items() if k != "alg"}
    assert decrypt(encrypt_for_tee_key(SECRET, jwk), P256) == SECRET


def test_oversized_plaintext_refused() -> None:
    from nacre.token.jwe import MAX_JWE_PLAINTEXT_BYTES

    with pytest.raises(JweError) as info:
        encrypt_for_tee_key(b"\x00" * (MAX_JWE_PLAINTEXT_BYTES + 1), public_jwk(P256))
    assert info.value.field == "plaintext"
