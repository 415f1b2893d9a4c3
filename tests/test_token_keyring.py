"""The ES256 signing keyring: kids, rotation windows, JWKS, encrypted persistence."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from joserfc.jwk import ECKey

from nacre.token.errors import KeyringError
from nacre.token.keyring import (
    FileKeyringStore,
    Keyring,
    KeyringStore,
    MemoryKeyringStore,
    aes_gcm_wrapping,
    jwk_thumbprint,
)

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
TTL = timedelta(minutes=5)
SKEW = timedelta(minutes=2)


def test_rfc7638_thumbprint_example() -> None:
    # RFC 7638 §3.1: the RSA key of RFC 7517 Appendix A.1 has this thumbprint.
    jwk = {
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_kid_is_thumbprint_and_jwks_is_public_only() -> None:
    ring = Keyring.generate(T0, max_token_ttl=TTL)
    key = ring.current()
    entry = ring.jwks(T0)["keys"][0]
    assert set(entry) == {"kty", "crv", "x", "y", "kid", "use", "alg"}
    assert entry["use"] == "sig"
    assert entry["alg"] == "ES256"
    assert entry["kid"] == key.kid
    # joserfc computes RFC 7638 thumbprints independently.
    assert ECKey.import_key({k: entry[k] for k in ("kty", "crv", "x", "y")}).thumbprint() == key.kid
    assert "private_key" not in repr(key)
    assert "d" not in entry


def test_rotation_keeps_old_key_until_its_tokens_expire() -> None:
    ring = Keyring.generate(T0, max_token_ttl=TTL, clock_skew=SKEW)
    old = ring.current()
    t_rot = T0 + timedelta(hours=1)
    new = ring.rotate(t_rot)
    assert new.kid != old.kid
    assert ring.current().kid == new.kid
    # The old key may sign no more ...
    assert ring.get(old.kid, t_rot) is not None
    assert not ring.get(old.kid, t_rot).can_sign(t_rot)  # type: ignore[union-attr]
    # ... but stays published while a token it signed just before rotation can still be valid.
    last_valid = t_rot + TTL + SKEW - timedelta(seconds=1)
    assert {k["kid"] for k in ring.jwks(last_valid)["keys"]} == {old.kid, new.kid}
    # Then it drops out of the JWKS, and prune removes it from the ring.
    after = t_rot + TTL + SKEW
    assert [k["kid"] for k in ring.jwks(after)["keys"]] == [new.kid]
    assert ring.prune(after) == (old.kid,)
    assert [k.kid for k in ring.signing_keys()] == [new.kid]


def test_signing_window_and_rotation_due() -> None:
    ring = Keyring.generate(T0, max_token_ttl=TTL, key_lifetime=timedelta(days=1))
    assert not ring.rotation_due(T0)
    late = T0 + timedelta(days=1)
    assert ring.rotation_due(late)
    with pytest.raises(KeyringError) as info:
        ring.signing_key(late)
    assert info.value.field == "now"
    ring.rotate(late)
    assert ring.signing_key(late).created == late


def test_naive_times_and_empty_ring_refused() -> None:
    with pytest.raises(KeyringError):
        Keyring.generate(datetime(2026, 1, 1))  # a naive time: refused
    with pytest.raises(KeyringError):
        Keyring().current()


def test_persistence_round_trip_memory() -> None:
    wrap, unwrap = aes_gcm_wrapping(os.urandom(32))
    ring = Keyring.generate(T0, max_token_ttl=TTL)
    ring.rotate(T0 + timedelta(minutes=1))
    store = MemoryKeyringStore()
    assert isinstance(store, KeyringStore)
    assert Keyring.load(store, unwrap) is None
    ring.save(store, wrap)
    loaded = Keyring.load(store, unwrap)
    assert loaded is not None
    assert loaded.current().kid == ring.current().kid
    assert [k.kid for k in loaded.signing_keys()] == [k.kid for k in ring.signing_keys()]
    assert loaded.jwks(T0 + timedelta(minutes=2)) == ring.jwks(T0 + timedelta(minutes=2))
    assert loaded.max_token_ttl == TTL


def test_persisted_bytes_hold_no_clear_key_material() -> None:
    wrap, _ = aes_gcm_wrapping(os.urandom(32))
    ring = Keyring.generate(T0)
    blob = ring.dump(wrap)
    assert b"pkcs8" not in blob
    assert ring.current().kid.encode() not in blob


def test_identity_wrap_refused() -> None:
    ring = Keyring.generate(T0)
    with pytest.raises(KeyringError) as info:
        ring.dump(lambda data: data)
    assert info.value.field == "wrap"


def test_wrong_kek_refused() -> None:
    wrap, _ = aes_gcm_wrapping(os.urandom(32))
    _, other_unwrap = aes_gcm_wrapping(os.urandom(32))
    blob = Keyring.generate(T0).dump(wrap)
    with pytest.raises(KeyringError):
        Keyring.loads(blob, other_unwrap)


def test_file_store_is_0600_and_round_trips(tmp_path: Path) -> None:
    wrap, unwrap = aes_gcm_wrapping(os.urandom(32))
    path = tmp_path / "keys" / "token-keyring.bin"
    store = FileKeyringStore(path)
    assert store.load() is None
    ring = Keyring.generate(T0)
    ring.save(store, wrap)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    ring.rotate(T0 + timedelta(minutes=1))
    ring.save(store, wrap)  # replace, still 0600, no temp files left behind
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["token-keyring.bin"]
    loaded = Keyring.load(store, unwrap)
    assert loaded is not None
    assert loaded.current().kid == ring.current().kid


def test_tampered_store_refused(tmp_path: Path) -> None:
    wrap, unwrap = aes_gcm_wrapping(os.urandom(32))
    store = FileKeyringStore(tmp_path / "ring")
    Keyring.generate(T0).save(store, wrap)
    data = bytearray((tmp_path / "ring").read_bytes())
    data[20] ^= 1
    (tmp_path / "ring").write_bytes(bytes(data))
    with pytest.raises(KeyringError):
        Keyring.load(store, unwrap)
