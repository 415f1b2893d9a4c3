"""EAR JWT issue and verify: ES256 only, known keys, times, profile, tampering."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from nacre.token.ear import (
    EAR_PROFILE,
    MAX_TOKEN_BYTES,
    EarInput,
    issue_ear,
    status_of_claim,
    verify_ear,
)
from nacre.token.errors import KeyringError, TokenError
from nacre.token.jwe import public_jwk
from nacre.token.keyring import Keyring

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
TTL = timedelta(minutes=5)
LEEWAY = timedelta(seconds=30)
TEE_KEY = public_jwk(ec.generate_private_key(ec.SECP256R1()))
NONCE = "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq8w="


def _input(**overrides: Any) -> EarInput:
    fields: dict[str, Any] = {
        "tee": "sgx",
        "status": "affirming",
        "trustworthiness_vector": {"instance-identity": 2, "hardware": 2, "executables": 3},
        "claims": {"mrenclave": "ab" * 32, "isv_svn": 3, "tcb_status": "UpToDate"},
        "policy_id": "default",
        "tee_pubkey": TEE_KEY,
        "runtime_data": {"nonce": NONCE},
        "nonce": NONCE,
        "sim": True,
    }
    fields.update(overrides)
    return EarInput(**fields)


@pytest.fixture
def ring() -> Keyring:
    return Keyring.generate(T0, max_token_ttl=TTL)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _parts(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes]:
    h, p, s = token.split(".")
    return json.loads(_unb64(h)), json.loads(_unb64(p)), _unb64(s)


def test_issue_and_verify_round_trip(ring: Keyring) -> None:
    token = issue_ear(_input(), ring, T0, TTL, issuer="nacre-test")
    claims = verify_ear(token, ring, T0 + timedelta(minutes=1), leeway=LEEWAY, issuer="nacre-test")
    assert claims.kid == ring.current().kid
    assert claims.profile == EAR_PROFILE
    assert claims.issued_at == T0
    assert claims.expires_at == T0 + TTL
    assert claims.nonce == NONCE
    appraisal = claims.appraisal()
    assert appraisal.status == "affirming"
    assert appraisal.policy_id == "default"
    assert appraisal.sim is True
    assert appraisal.annotated_evidence["sgx"]["mrenclave"] == "ab" * 32
    assert claims.tee_pubkey == TEE_KEY
    # Same answer through the published JWKS.
    again = verify_ear(token, ring.jwks(T0), T0, leeway=LEEWAY)
    assert again.raw == claims.raw


def test_wire_shape_matches_ear_and_trustee_paths(ring: Keyring) -> None:
    header, payload, signature = _parts(issue_ear(_input(), ring, T0, TTL))
    assert header == {"alg": "ES256", "kid": ring.current().kid, "typ": "JWT"}  # no "jwk"
    assert payload["eat_profile"] == "tag:github.com,2023:veraison/ear"
    assert payload["iat"] == int(T0.timestamp())
    assert payload["exp"] == int((T0 + TTL).timestamp())
    assert payload["eat_nonce"] == NONCE
    assert payload["ear.verifier-id"]["developer"] == "nacre"
    assert payload["ear.verifier-id"]["build"].startswith("nacre ")
    sub = payload["submods"]["cpu0"]
    assert sub["ear.status"] == "affirming"
    assert sub["ear.trustworthiness-vector"] == {
        "instance-identity": 2,
        "hardware": 2,
        "executables": 3,
    }
    assert sub["ear.appraisal-policy-id"] == "default"
    # Trustee KBS: /submods/cpu0/ear.veraison.annotated-evidence/runtime_data_claims/tee-pubkey
    evidence = sub["ear.veraison.annotated-evidence"]
    assert evidence["runtime_data_claims"]["tee-pubkey"] == TEE_KEY
    assert evidence["runtime_data_claims"]["nonce"] == NONCE
    assert sub["nacre.sim"] is True
    assert len(signature) == 64  # raw r || s (RFC 7518 §3.4)


def test_signature_verifies_independently_of_joserfc(ring: Keyring) -> None:
    token = issue_ear(_input(), ring, T0, TTL)
    signing_input, _, sig = token.rpartition(".")
    raw = _unb64(sig)
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    ring.current().public_key().verify(der, signing_input.encode(), ec.ECDSA(hashes.SHA256()))


def test_rotated_key_tokens_verify_until_retired(ring: Keyring) -> None:
    token = issue_ear(_input(), ring, T0, TTL)
    ring.rotate(T0 + timedelta(seconds=10))
    assert verify_ear(token, ring.jwks(T0 + timedelta(minutes=4)), T0 + timedelta(minutes=4))
    new_token = issue_ear(_input(), ring, T0 + timedelta(seconds=20), TTL)
    assert _parts(new_token)[0]["kid"] == ring.current().kid


def test_token_from_another_keyring_is_unknown_key(ring: Keyring) -> None:
    other = Keyring.generate(T0, max_token_ttl=TTL)
    token = issue_ear(_input(), other, T0, TTL)
    with pytest.raises(TokenError) as info:
        verify_ear(token, ring.jwks(T0), T0)
    assert info.value.code == "TOKEN_UNKNOWN_KEY"
    assert info.value.field == "kid"
    with pytest.raises(TokenError) as info:
        verify_ear(token, ring, T0)
    assert info.value.code == "TOKEN_UNKNOWN_KEY"


def test_known_kid_but_other_signer_is_invalid(ring: Keyring) -> None:
    other = Keyring.generate(T0, max_token_ttl=TTL)
    header, payload, _ = _parts(issue_ear(_input(), other, T0, TTL))
    header["kid"] = ring.current().kid
    forged_input = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(payload).encode())
    sig = other.current().private_key.sign(forged_input.encode(), ec.ECDSA(hashes.SHA256()))
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    r, s = decode_dss_signature(sig)
    forged = forged_input + "." + _b64(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
    with pytest.raises(TokenError) as info:
        verify_ear(forged, ring, T0)
    assert info.value.code == "TOKEN_INVALID"
    assert info.value.field == "signature"


def test_alg_none_refused(ring: Keyring) -> None:
    _, payload, _ = _parts(issue_ear(_input(), ring, T0, TTL))
    header = {"alg": "none", "kid": ring.current().kid, "typ": "JWT"}
    forged = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(payload).encode()) + "."
    with pytest.raises(TokenError) as info:
        verify_ear(forged, ring, T0)
    assert info.value.code == "TOKEN_ALG_REFUSED"
    assert info.value.field == "alg"
    assert info.value.expected == "ES256"


@pytest.mark.parametrize("encoding", ["pem", "jwk-json"])
def test_hs256_with_public_key_as_secret_refused(ring: Keyring, encoding: str) -> None:
    # The classic key-confusion forgery: HMAC keyed with the verifier's public key.
    public = ring.current().public_key()
    if encoding == "pem":
        secret = public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    else:
        secret = json.dumps(ring.jwks(T0)["keys"][0]).encode()
    _, payload, _ = _parts(issue_ear(_input(), ring, T0, TTL))
    header = {"alg": "HS256", "kid": ring.current().kid, "typ": "JWT"}
    signing_input = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(payload).encode())
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    forged = signing_input + "." + _b64(mac)
    with pytest.raises(TokenError) as info:
        verify_ear(forged, ring.jwks(T0), T0)
    assert info.value.code == "TOKEN_ALG_REFUSED"
    assert info.value.actual == "'HS256'"


@pytest.mark.parametrize("alg", ["RS256", "ES384", "EdDSA", "ES256K", "es256", None])
def test_other_algs_refused(ring: Keyring, alg: str | None) -> None:
    token = issue_ear(_input(), ring, T0, TTL)
    header, payload, sig = _parts(token)
    header["alg"] = alg
    forged = ".".join(
        [_b64(json.dumps(header).encode()), _b64(json.dumps(payload).encode()), _b64(sig)]
    )
    with pytest.raises(TokenError) as info:
        verify_ear(forged, ring, T0)
    assert info.value.code == "TOKEN_ALG_REFUSED"


def test_expired_token(ring: Keyring) -> None:
    token = issue_ear(_input(), ring, T0, TTL)
    # Inside the leeway: still accepted.
    verify_ear(token, ring, T0 + TTL + LEEWAY, leeway=LEEWAY)
    with pytest.raises(TokenError) as info:
        verify_ear(token, ring, T0 + TTL + LEEWAY + timedelta(seconds=1), leeway=LEEWAY)
    assert info.value.code == "TOKEN_EXPIRED"
    assert info.value.field == "exp"
    assert info.value.actual == (T0 + TTL).isoformat()


def test_token_from_the_future_refused(ring: Keyring) -> None:
    token = issue_ear(_input(), ring, T0, TTL)
    with pytest.raises(TokenError) as info:
        verify_ear(token, ring, T0 - timedelta(minutes=2), leeway=LEEWAY)
    assert info.value.code == "TOKEN_INVALID"
    assert info.value.field == "iat"


def test_tampered_payload_invalid(ring: Keyring) -> None:
    token = issue_ear(
        _input(status="contraindicated", trustworthiness_vector={"executables": 96}), ring, T0, TTL
    )
    h, p, s = token.split(".")
    payload = json.loads(_unb64(p))
    payload["submods"]["cpu0"]["ear.status"] = "affirming"
    tampered = h + "." + _b64(json.dumps(payload).encode()) + "." + s
    with pytest.raises(TokenError) as info:
        verify_ear(tampered, ring, T0)
    assert info.value.code == "TOKEN_INVALID"
    assert info.value.field == "signature"


@pytest.mark.parametrize("position", [0, 1, 2])
def test_flipped_byte_in_each_part_refused(ring: Keyring, position: int) -> None:
    token = issue_ear(_input(), ring, T0, TTL)
    parts = token.split(".")
    part = bytearray(_unb64(parts[position]))
    part[len(part) // 2] ^= 0x01
    parts[position] = _b64(bytes(part))
    with pytest.raises(TokenError) as info:
        verify_ear(".".join(parts), ring, T0)
    assert info.value.code in {"TOKEN_INVALID", "TOKEN_ALG_REFUSED", "TOKEN_UNKNOWN_KEY"}


@pytest.mark.parametrize(
    "token",
    ["", "a.b", "a.b.c.d", "!!!.e30.", "e30.e30.", "bnVsbA.e30.", "é.e30."],
)
def test_malformed_tokens_invalid(ring: Keyring, token: str) -> None:
    with pytest.raises(TokenError) as info:
        verify_ear(token, ring, T0)
    assert info.value.code in {"TOKEN_INVALID", "TOKEN_ALG_REFUSED"}


def test_oversized_token_refused(ring: Keyring) -> None:
    with pytest.raises(TokenError) as info:
        verify_ear("a" * (MAX_TOKEN_BYTES + 1), ring, T0)
    assert info.value.field == "token"
    with pytest.raises(TokenError) as info:
        issue_ear(_input(claims={"blob": "x" * MAX_TOKEN_BYTES}), ring, T0, TTL)
    assert info.value.field == "token"


def _resign(ring: Keyring, header: dict[str, Any], payload: dict[str, Any]) -> str:
    from joserfc import jws
    from joserfc.jwk import ECKey

    key = ring.current().private_key
    return jws.serialize_compact(
        header, json.dumps(payload).encode(), ECKey(key, key), algorithms=["ES256"]
    )


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"eat_profile": "tag:github.com,2024:confidential-containers/Trustee"}, "eat_profile"),
        ({"exp": None}, "exp"),
        ({"iat": "yesterday"}, "iat"),
        ({"nbf": 2**40}, "nbf"),
        ({"submods": {}}, "submods"),
        ({"ear.verifier-id": None}, "ear.verifier-id"),
    ],
)
def test_validly_signed_but_wrong_claims(ring: Keyring, change: dict[str, Any], field: str) -> None:
    header, payload, _ = _parts(issue_ear(_input(), ring, T0, TTL))
    payload.update(change)
    with pytest.raises(TokenError) as info:
        verify_ear(_resign(ring, header, payload), ring, T0)
    assert info.value.code == "TOKEN_INVALID"
    assert info.value.field == field


def test_validly_signed_bad_submod_status(ring: Keyring) -> None:
    header, payload, _ = _parts(issue_ear(_input(), ring, T0, TTL))
    payload["submods"]["cpu0"]["ear.status"] = "fine"
    with pytest.raises(TokenError) as info:
        verify_ear(_resign(ring, header, payload), ring, T0)
    assert info.value.field == "submods.cpu0.ear.status"


def test_naive_now_refused(ring: Keyring) -> None:
    token = issue_ear(_input(), ring, T0, TTL)
    with pytest.raises(TokenError) as info:
        verify_ear(token, ring, T0.replace(tzinfo=None))
    assert info.value.field == "now"


def test_wrong_nonce_and_issuer(ring: Keyring) -> None:
    token = issue_ear(_input(), ring, T0, TTL, issuer="a")
    with pytest.raises(TokenError) as info:
        verify_ear(token, ring, T0, issuer="b")
    assert info.value.field == "iss"
    with pytest.raises(TokenError) as info:
        verify_ear(token, ring, T0, nonce="another-nonce-value")
    assert info.value.field == "eat_nonce"


def test_ttl_longer_than_keyring_promise_refused(ring: Keyring) -> None:
    with pytest.raises(KeyringError) as info:
        issue_ear(_input(), ring, T0, TTL + timedelta(seconds=1))
    assert info.value.field == "ttl"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"status": "none"}, "ear.status"),
        ({"status": "great"}, "ear.status"),
        (
            {"trustworthiness_vector": {"hardware": 97}},
            "ear.status",
        ),  # affirming vs contraindicated
        ({"trustworthiness_vector": {"hardware": 300}}, "ear.trustworthiness-vector.hardware"),
        ({"trustworthiness_vector": {"vibes": 2}}, "ear.trustworthiness-vector.vibes"),
        ({"trustworthiness_vector": {"hardware": True}}, "ear.trustworthiness-vector.hardware"),
        ({"nonce": "short"}, "eat_nonce"),
        ({"policy_id": ""}, "ear.appraisal-policy-id"),
        ({"tee_pubkey": {**TEE_KEY, "d": "AA"}}, "tee-pubkey"),
        ({"claims": {"when": datetime(2026, 1, 1, tzinfo=UTC)}}, "claims"),
    ],
)
def test_ear_input_validation(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(TokenError) as info:
        _input(**overrides)
    assert info.value.field == field


def test_ear_input_is_frozen_and_detached() -> None:
    claims = {"mrenclave": "00"}
    result = _input(claims=claims)
    claims["mrenclave"] = "ff"
    assert result.claims["mrenclave"] == "00"
    with pytest.raises(AttributeError):
        result.status = "warning"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("value", "tier"),
    [
        (0, "none"),
        (1, "none"),
        (-1, "none"),
        (2, "affirming"),
        (31, "affirming"),
        (-32, "affirming"),
        (32, "warning"),
        (95, "warning"),
        (-33, "warning"),
        (-96, "warning"),
        (96, "contraindicated"),
        (127, "contraindicated"),
        (-97, "contraindicated"),
        (-128, "contraindicated"),
    ],
)
def test_ar4si_tiers(value: int, tier: str) -> None:
    assert status_of_claim(value) == tier
