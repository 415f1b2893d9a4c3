"""The memo of verified EARs: a hit skips the signature check only; times and the key's
publication are checked at every use; byte-identical tokens only; bounded; thread-safe."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from nacre.token.ear import EarClaims, issue_ear_with_claims, verify_ear
from nacre.token.errors import TOKEN_EXPIRED, TOKEN_INVALID, TOKEN_UNKNOWN_KEY, TokenError
from nacre.token.keyring import Keyring
from nacre.token.verified_tokens import VerifiedTokens
from test_token_ear import T0, TTL, _input
from threads_support import run_threads


@pytest.fixture
def ring() -> Keyring:
    return Keyring.generate(T0, max_token_ttl=TTL)


def _published(ring: Keyring, now: datetime) -> Any:
    return lambda kid: ring.get(kid, now) is not None


def _issue(ring: Keyring, **overrides: Any) -> tuple[str, EarClaims]:
    return issue_ear_with_claims(_input(**overrides), ring, T0, TTL)


def _remember(memo: VerifiedTokens, ring: Keyring) -> tuple[str, EarClaims]:
    token, claims = _issue(ring)
    memo.remember(token, claims)
    return token, claims


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"tee_pubkey": None, "runtime_data": None, "nonce": None},
        {"claims": {"a": [1, 2.5, None, True], "b": {"c": "\u00e9\u2028"}, "n": 2**70}},
        {"status": "contraindicated", "sim": False, "trustworthiness_vector": {}},
    ],
)
def test_issued_claims_equal_verified_claims(ring: Keyring, overrides: dict[str, Any]) -> None:
    token, claims = issue_ear_with_claims(_input(**overrides), ring, T0, TTL, issuer="me")
    assert claims == verify_ear(token, ring, T0)
    assert dict(claims.raw) == dict(verify_ear(token, ring, T0).raw)


def test_remembered_token_hits_without_a_signature_check(ring: Keyring) -> None:
    memo = VerifiedTokens()
    token, remembered = _issue(ring)
    assert memo.lookup(token, T0, _published(ring, T0)) is None
    memo.remember(token, remembered)
    now = T0 + timedelta(minutes=1)
    # An empty ring: a full verification would refuse the key; the memo asks the caller instead.
    assert memo.lookup(token, now, lambda kid: kid == remembered.kid) == remembered
    assert len(memo) == 1


def test_a_changed_byte_is_not_a_hit(ring: Keyring) -> None:
    memo = VerifiedTokens()
    token, _ = _remember(memo, ring)
    header, payload, sig = token.split(".")
    flipped = sig[:-2] + ("A" if sig[-2] != "A" else "B") + sig[-1]
    forged = f"{header}.{payload}.{flipped}"
    assert memo.lookup(forged, T0, _published(ring, T0)) is None
    with pytest.raises(TokenError) as caught:
        verify_ear(forged, ring, T0)
    assert caught.value.code == TOKEN_INVALID


def test_times_are_checked_at_every_use(ring: Keyring) -> None:
    memo = VerifiedTokens()
    token, _ = _remember(memo, ring)
    late = T0 + TTL + timedelta(minutes=2)
    with pytest.raises(TokenError) as caught:
        memo.lookup(token, late, _published(ring, late))
    assert caught.value.code == TOKEN_EXPIRED
    assert caught.value.field == "exp"
    assert len(memo) == 0  # a refused token is forgotten
    memo.remember(token, verify_ear(token, ring, T0))
    early = T0 - timedelta(minutes=5)
    with pytest.raises(TokenError) as caught:
        memo.lookup(token, early, _published(ring, early))
    assert caught.value.field == "iat"


def test_a_key_no_longer_published_is_refused(ring: Keyring) -> None:
    memo = VerifiedTokens()
    token, _ = _remember(memo, ring)
    with pytest.raises(TokenError) as caught:
        memo.lookup(token, T0, lambda kid: False)
    assert caught.value.code == TOKEN_UNKNOWN_KEY
    assert caught.value.field == "kid"
    assert memo.lookup(token, T0, _published(ring, T0)) is None


def test_naive_now_is_refused(ring: Keyring) -> None:
    memo = VerifiedTokens()
    token, _ = _remember(memo, ring)
    with pytest.raises(TokenError):
        memo.lookup(token, T0.replace(tzinfo=None), _published(ring, T0))


def test_bounded_least_recently_used_first(ring: Keyring) -> None:
    memo = VerifiedTokens(capacity=2)
    (a, ca), (b, cb), (c, cc) = (_issue(ring) for _ in range(3))
    memo.remember(a, ca)
    memo.remember(b, cb)
    assert memo.lookup(a, T0, _published(ring, T0)) is not None  # a is now the most recent
    memo.remember(c, cc)
    assert len(memo) == 2
    assert memo.lookup(b, T0, _published(ring, T0)) is None
    assert memo.lookup(a, T0, _published(ring, T0)) is not None
    assert memo.lookup(c, T0, _published(ring, T0)) is not None
    with pytest.raises(ValueError, match="capacity"):
        VerifiedTokens(capacity=0)


def test_not_a_string_and_odd_text_miss(ring: Keyring) -> None:
    memo = VerifiedTokens()
    assert memo.lookup(b"bytes", T0, _published(ring, T0)) is None  # type: ignore[arg-type]
    assert memo.lookup("\ud800.x.y", T0, _published(ring, T0)) is None


def test_concurrent_use(ring: Keyring) -> None:
    memo = VerifiedTokens(capacity=8)
    issued = dict(_issue(ring) for _ in range(16))
    tokens = list(issued)

    def work(offset: int) -> None:
        for i in range(200):
            token = tokens[(i + offset) % len(tokens)]
            claims = memo.lookup(token, T0, _published(ring, T0))
            if claims is None:
                memo.remember(token, issued[token])
            else:
                assert claims == issued[token]

    assert run_threads(work, 4) == []
    assert len(memo) <= 8
