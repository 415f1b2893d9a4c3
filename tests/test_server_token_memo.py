"""The service verifies a token it signed without a second signature check, and nothing else
changes: tampered tokens, tokens of another replica and expired tokens get what they got before."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import nacre.server.keys as keys_module
from nacre.token import decrypt
from server_support import Env, Workload, make_env

NAME = "repo/key/model"
SECRET = b"model key"


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    with make_env("sqlite", tmp_path) as e:
        assert e.put_secret(NAME, SECRET).status_code == 200
        yield e


@pytest.fixture
def signature_checks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = keys_module.verify_ear  # type: ignore[attr-defined]

    def counting(token: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(token)
        return real(token, *args, **kwargs)

    monkeypatch.setattr(keys_module, "verify_ear", counting)
    return calls


def test_own_token_is_not_verified_twice(env: Env, signature_checks: list[str]) -> None:
    w = Workload(env)
    w.handshake()
    for r in (w.resource(NAME), w.resource(NAME, bearer=w.token)):
        assert r.status_code == 200, r.text
        assert decrypt(r.json(), w.key) == SECRET
    assert signature_checks == []


def test_tampered_token_is_verified_and_refused(env: Env, signature_checks: list[str]) -> None:
    w = Workload(env)
    w.handshake()
    header, payload, sig = w.token.split(".")
    forged = f"{header}.{payload}.{sig[:-2]}{'A' if sig[-2] != 'A' else 'B'}{sig[-1]}"
    r = w.resource(NAME, bearer=forged)
    assert r.status_code == 401, r.text
    assert r.json()["code"] == "TOKEN_INVALID"
    assert signature_checks == [forged]


def test_a_token_this_replica_did_not_sign_is_verified_once(
    env: Env, signature_checks: list[str]
) -> None:
    w = Workload(env)
    w.handshake()
    env.service.keyring._verified.clear()  # as on a replica that did not sign it
    for _ in range(2):
        r = w.resource(NAME, bearer=w.token)
        assert r.status_code == 200, r.text
    assert signature_checks == [w.token]


def test_an_expired_token_is_refused_though_remembered(env: Env) -> None:
    w = Workload(env)
    w.handshake()
    env.clock.offset += env.service.config.token_ttl * 3
    r = w.resource(NAME, bearer=w.token)
    assert r.status_code == 401, r.text
    assert r.json()["code"] == "TOKEN_EXPIRED"
