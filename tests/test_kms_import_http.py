"""Key import over HTTP (``/kms/v1/import``) and ``nacre key import``: material arrives only as a
JWE to the service's import key, is checked against its type, and then behaves like a generated
key (used inside the service, never returned in clear)."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from nacre.cli import app as cli_app
from nacre.token import encrypt_for_tee_key, public_jwk
from server_support import Env, b64, make_env, served
from test_store_support import BACKENDS

WRAPPING = "/kms/v1/import/wrapping-key"
IMPORT = "/kms/v1/import"


@pytest.fixture(params=BACKENDS)
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    with make_env(request.param, tmp_path) as e:
        yield e


def _problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = r.json()
    return body


def _wrapping_jwk(env: Env) -> dict[str, Any]:
    r = env.client.get(WRAPPING, headers=env.admin_headers())
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    assert body["alg"] == "ECDH-ES+A256KW"
    assert body["enc"] == "A256GCM"
    assert body["jwk"]["crv"] == "P-384"
    assert "d" not in body["jwk"]
    jwk: dict[str, Any] = body["jwk"]
    return jwk


def test_imported_keys_work_inside_the_service(env: Env) -> None:
    admin = env.admin_headers()
    jwk = _wrapping_jwk(env)
    assert _wrapping_jwk(env) == jwk  # one import key, made on first use
    # AES-256: data encrypted outside with the same key decrypts inside, and back.
    aes = os.urandom(32)
    r = env.client.post(
        IMPORT,
        json={"type": "AES-256", "name": "legacy", "wrapped": encrypt_for_tee_key(aes, jwk)},
        headers=admin,
    )
    assert r.status_code == 200, r.text
    assert r.json()["id"] == "legacy"
    assert r.json()["current_version"] == 1
    r = env.client.post(
        "/kms/v1/keys/legacy/encrypt", json={"plaintext": b64(b"hello")}, headers=admin
    )
    assert r.status_code == 200, r.text
    # EC-P256 from PKCS#8: the service signs, the original public key verifies.
    private = ec.generate_private_key(ec.SECP256R1())
    der = private.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    r = env.client.post(
        IMPORT,
        json={
            "type": "EC-P256",
            "name": "signer",
            "wrapped": encrypt_for_tee_key(der, jwk),
            "rotation_days": 30,
        },
        headers=admin,
    )
    assert r.status_code == 200, r.text
    r = env.client.post("/kms/v1/keys/signer/sign", json={"message": b64(b"m")}, headers=admin)
    assert r.status_code == 200, r.text
    private.public_key().verify(
        base64.b64decode(r.json()["signature"]), b"m", ec.ECDSA(hashes.SHA256())
    )
    # The reserved import key is not a key anyone lists or uses.
    listed = env.client.get("/kms/v1/keys", headers=admin).json()["keys"]
    assert {k["id"] for k in listed} == {"legacy", "signer"}
    actions = [e.action for e in env.store.audit_entries(limit=100)]
    assert actions.count("kms.import") == 2


def test_import_refusals(env: Env) -> None:
    admin = env.admin_headers()
    user = env.admin_headers(env.register_key("app", ["key-user"]))
    # Only admins see the wrapping key or import.
    assert _problem(env.client.get(WRAPPING, headers=user), 403)["check"] == "role"
    jwk = _wrapping_jwk(env)
    good = encrypt_for_tee_key(os.urandom(32), jwk)
    r = env.client.post(
        IMPORT, json={"type": "AES-256", "name": "k", "wrapped": good}, headers=user
    )
    assert _problem(r, 403)["check"] == "role"
    # Wrapped to another key: 400, and nothing is created.
    stranger = public_jwk(ec.generate_private_key(ec.SECP384R1()).public_key())
    r = env.client.post(
        IMPORT,
        json={
            "type": "AES-256",
            "name": "k",
            "wrapped": encrypt_for_tee_key(os.urandom(32), stranger),
        },
        headers=admin,
    )
    assert _problem(r, 400)["code"] == "KEY_IMPORT_INVALID"
    # Material that is not the declared type.
    r = env.client.post(
        IMPORT,
        json={
            "type": "EC-P256",
            "name": "k",
            "wrapped": encrypt_for_tee_key(os.urandom(32), jwk),
        },
        headers=admin,
    )
    assert _problem(r, 400)["status"] == 400
    # Clear material is not a JWE.
    r = env.client.post(
        IMPORT,
        json={"type": "AES-256", "name": "k", "wrapped": {"key": b64(os.urandom(32))}},
        headers=admin,
    )
    assert _problem(r, 400)["status"] == 400
    # No time zone on expires_at; unknown members.
    r = env.client.post(
        IMPORT,
        json={
            "type": "AES-256",
            "name": "k",
            "wrapped": good,
            "expires_at": "2030-01-01T00:00:00",
        },
        headers=admin,
    )
    assert _problem(r, 400)["field"] == "expires_at"
    r = env.client.post(
        IMPORT,
        json={"type": "AES-256", "name": "k", "wrapped": good, "material": "x"},
        headers=admin,
    )
    assert r.status_code in (400, 422)
    assert env.client.get("/kms/v1/keys/k", headers=admin).status_code == 404
    # A name in use is a conflict.
    ok = env.client.post(
        IMPORT, json={"type": "AES-256", "name": "k", "wrapped": good}, headers=admin
    )
    assert ok.status_code == 200, ok.text
    again = env.client.post(
        IMPORT,
        json={"type": "AES-256", "name": "k", "wrapped": encrypt_for_tee_key(os.urandom(32), jwk)},
        headers=admin,
    )
    assert _problem(again, 409)["status"] == 409


def test_key_import_cli(tmp_path: Path) -> None:
    with make_env("sqlite", tmp_path) as env, served(env.app) as url:
        common = ["--server", url, "--admin-key", str(env.data_dir / "admin.key")]
        runner = CliRunner()

        def run(*args: str) -> Any:
            return runner.invoke(cli_app, [*args, *common])

        # AES-256 as hex: what the service encrypts, the same key decrypts outside.
        aes = os.urandom(32)
        hex_file = tmp_path / "aes.hex"
        hex_file.write_text(aes.hex() + "\n")
        r = run("key", "import", "old-aes", "--file", str(hex_file), "--json")
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["type"] == "AES-256"
        plain = tmp_path / "plain.bin"
        plain.write_bytes(b"payload")
        enc = tmp_path / "enc.bin"
        r = run("key", "encrypt", "old-aes", "--in", str(plain), "--out", str(enc))
        assert r.exit_code == 0, r.output
        assert env.client.get("/kms/v1/keys/old-aes", headers=env.admin_headers()).json()
        # EC P-256 from a PEM file (traditional form converts to PKCS#8 on the way).
        private = ec.generate_private_key(ec.SECP256R1())
        pem_file = tmp_path / "ec.pem"
        pem_file.write_bytes(
            private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
        r = run("key", "import", "old-ec", "--type", "EC-P256", "--file", str(pem_file))
        assert r.exit_code == 0, r.output
        assert "imported old-ec" in r.stdout
        r = run("key", "sign", "old-ec", "--file", str(plain))
        assert r.exit_code == 0, r.output
        private.public_key().verify(
            base64.b64decode(r.stdout.strip()), b"payload", ec.ECDSA(hashes.SHA256())
        )
        # Usage errors never reach the service: bad length, not a key, unknown type.
        short = tmp_path / "short.bin"
        short.write_bytes(b"x" * 31)
        assert run("key", "import", "a", "--file", str(short)).exit_code == 2
        assert run("key", "import", "b", "--type", "EC-P256", "--file", str(short)).exit_code == 2
        assert run("key", "import", "c", "--type", "DES", "--file", str(hex_file)).exit_code == 2
        # The service refuses material of another type: exit 1 with its problem.
        r = run("key", "import", "d", "--type", "EC-P384", "--file", str(pem_file), "--json")
        assert r.exit_code == 1
        assert json.loads(r.stdout)["error"]["status"] == 400
        # The key material is nowhere in the database file.
        assert env.url.startswith("sqlite")
        db = b"".join(p.read_bytes() for p in tmp_path.rglob("*.db*") if p.is_file())
        assert len(db) > 4096
        assert aes not in db
        assert aes.hex().encode() not in db
        scalar = private.private_numbers().private_value.to_bytes(32, "big")
        assert scalar not in db


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=6)
    ),
    max_leaves=12,
)
_JWE_MEMBERS = st.fixed_dictionaries(
    {},
    optional={
        k: st.text(alphabet="ABCDEFabcdef0123456789-_", max_size=60) | _JSON
        for k in ("protected", "encrypted_key", "iv", "ciphertext", "tag", "aad", "header")
    },
)


@pytest.fixture
def lite(tmp_path: Path) -> Iterator[Env]:
    with make_env("sqlite", tmp_path) as e:
        yield e


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(wrapped=st.one_of(_JSON, _JWE_MEMBERS))
def test_any_wrapped_value_is_a_4xx_never_a_crash(lite: Env, wrapped: object) -> None:
    r = lite.client.post(
        IMPORT,
        json={"type": "AES-256", "name": "fuzzed", "wrapped": wrapped},
        headers=lite.admin_headers(),
    )
    assert 400 <= r.status_code < 500, r.text
    assert lite.client.get("/kms/v1/keys/fuzzed", headers=lite.admin_headers()).status_code == 404
