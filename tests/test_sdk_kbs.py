"""nacre.sdk.KbsClient: the KBS v0.4.0 handshake from the workload side.

Part 1 pins the wire shapes against a scripted Trustee-like broker (httpx.MockTransport): exact
request bodies, the report-data binding, cookie handling, error mapping and the retry rules.
Part 2 runs the client against nacre's real server app in-process.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from nacre.cli.demo_cmd import LocalServer, server_config
from nacre.errors import UsageError
from nacre.sdk import (
    KBS_PROTOCOL_VERSION,
    KbsClient,
    KbsDeniedError,
    KbsNotFoundError,
    KbsProtocolError,
    KbsSessionError,
    KbsUnavailableError,
    check_kbs_url,
    parse_resource_path,
)
from nacre.server import create_app, load_admin_key, sign_admin_token
from nacre.sim import Manifest, SimPlatform
from nacre.tee import Identity, SealPolicy, TeeKind
from nacre.tee.backend import quote_report_data
from nacre.tee.sim import SimBackend
from nacre.token import encrypt_for_tee_key, kbs_report_data

URL = "http://127.0.0.1:8080"
NONCE = base64.b64encode(b"\x07" * 32).decode()


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> SimPlatform:
    return SimPlatform.init(tmp_path_factory.mktemp("sim") / "platform")


@pytest.fixture(scope="module")
def backend(platform: SimPlatform) -> SimBackend:
    return SimBackend(platform, manifest=Manifest(name="t", entrypoint="app.py", isv_svn=1))


def _jwt(exp: int = 4_000_000_000) -> str:
    def seg(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{seg({'alg': 'ES256'})}.{seg({'exp': exp})}.c2ln"


class ScriptedKbs:
    """A Trustee-shaped broker: checks what a v0.4.0 client must send, answers what KBS answers."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.tee_pubkey: dict[str, Any] | None = None
        self.secret = b"model key \x00\xff"
        self.resource_status: list[int] = []  # statuses to answer before succeeding
        self.resource_problem: dict[str, Any] = {}
        self.sessions = 0
        self.tokens_issued = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        if path == "/kbs/v0/auth":
            body = json.loads(request.content)
            assert body == {
                "version": "0.4.0",
                "tee": "sgx",
                "extra-params": {"supported-hash-algorithms": ["sha256", "sha384", "sha512"]},
            }
            self.sessions += 1
            return httpx.Response(
                200,
                json={"nonce": NONCE, "extra-params": ""},
                headers={"Set-Cookie": f"kbs-session-id=s{self.sessions}; Path=/kbs/v0"},
            )
        if path == "/kbs/v0/attest":
            assert request.headers["cookie"] == f"kbs-session-id=s{self.sessions}"
            body = json.loads(request.content)
            assert set(body) == {"runtime-data", "tee-evidence"}
            rd = body["runtime-data"]
            assert rd["nonce"] == NONCE
            ev = body["tee-evidence"]
            assert ev["additional_evidence"] == ""
            quote = base64.b64decode(ev["primary_evidence"]["quote"], validate=True)
            assert quote_report_data(quote) == kbs_report_data(NONCE, rd["tee-pubkey"])
            self.tee_pubkey = rd["tee-pubkey"]
            self.tokens_issued += 1
            return httpx.Response(200, json={"token": _jwt()})
        if path.startswith("/kbs/v0/resource/"):
            assert request.headers["authorization"].startswith("Bearer ")
            assert "cookie" not in request.headers
            if self.resource_status:
                status = self.resource_status.pop(0)
                return httpx.Response(status, json=self.resource_problem or {"detail": "x"})
            assert self.tee_pubkey is not None
            return httpx.Response(200, json=encrypt_for_tee_key(self.secret, self.tee_pubkey))
        return httpx.Response(404, json={"detail": "no route"})


def _client(
    backend: SimBackend, kbs: Callable[[httpx.Request], httpx.Response], **kwargs: Any
) -> KbsClient:
    http = httpx.Client(transport=httpx.MockTransport(kbs))
    return KbsClient(URL, backend=backend, http=http, backoff=0, **kwargs)


def test_handshake_wire_shapes_and_binding(backend: SimBackend) -> None:
    kbs = ScriptedKbs()
    with _client(backend, kbs) as client:
        assert client.get_resource("models/llm/key") == kbs.secret
        assert client.get_resource("/models/llm/key/") == kbs.secret  # token reused
    assert [r.url.path for r in kbs.requests] == [
        "/kbs/v0/auth",
        "/kbs/v0/attest",
        "/kbs/v0/resource/models/llm/key",
        "/kbs/v0/resource/models/llm/key",
    ]
    assert kbs.tee_pubkey is not None
    assert kbs.tee_pubkey["kty"] == "EC"
    assert kbs.tee_pubkey["crv"] == "P-256"
    assert kbs.tee_pubkey["alg"] == "ECDH-ES+A256KW"
    assert KBS_PROTOCOL_VERSION == "0.4.0"


def test_rsa_tee_key(backend: SimBackend) -> None:
    kbs = ScriptedKbs()
    with _client(backend, kbs, key_type="RSA") as client:
        assert client.get_resource("a/b/c") == kbs.secret
    assert kbs.tee_pubkey is not None
    assert kbs.tee_pubkey["kty"] == "RSA"
    assert kbs.tee_pubkey["alg"] == "RSA-OAEP-256"
    n = base64.urlsafe_b64decode(kbs.tee_pubkey["n"] + "==")
    assert len(n) * 8 == 3072


def test_get_retries_5xx_bounded(backend: SimBackend) -> None:
    kbs = ScriptedKbs()
    kbs.resource_status = [503, 502]
    with _client(backend, kbs) as client:
        assert client.get_resource("a/b/c") == kbs.secret
    kbs = ScriptedKbs()
    kbs.resource_status = [500, 500, 500]
    with _client(backend, kbs, get_retries=2) as client, pytest.raises(KbsUnavailableError) as ei:
        client.get_resource("a/b/c")
    assert ei.value.status == 500
    assert sum(r.url.path.startswith("/kbs/v0/resource") for r in kbs.requests) == 3


def test_401_on_resource_makes_one_fresh_handshake(backend: SimBackend) -> None:
    kbs = ScriptedKbs()
    with _client(backend, kbs) as client:
        client.attest()
        kbs.resource_status = [401]
        assert client.get_resource("a/b/c") == kbs.secret
        assert client.handshakes == 2
        kbs.resource_status = [401, 401]
        with pytest.raises(KbsSessionError):
            client.get_resource("a/b/c")
    assert kbs.sessions == 3


def test_problem_bodies_become_typed_errors(backend: SimBackend) -> None:
    kbs = ScriptedKbs()
    kbs.resource_problem = {
        "type": "https://github.com/confidential-containers/kbs/errors/PolicyDeny",
        "title": "policy denied the release",
        "status": 403,
        "detail": "mrenclave is not the allowed one",
        "code": "POLICY_DENY",
        "check": "release.rule",
        "field": "claims.mrenclave",
        "expected": "ab",
        "actual": "cd",
    }
    kbs.resource_status = [403]
    with _client(backend, kbs) as client, pytest.raises(KbsDeniedError) as ei:
        client.get_resource("a/b/c")
    err = ei.value
    assert (err.status, err.check, err.detail) == (
        403,
        "release.rule",
        "mrenclave is not the allowed one",
    )
    assert err.server_code == "POLICY_DENY"
    assert err.problem_type is not None
    assert err.problem_type.endswith("/PolicyDeny")
    assert (err.field, err.expected, err.actual) == ("claims.mrenclave", "ab", "cd")
    assert "release.rule" in str(err)
    assert err.to_dict()["check"] == "release.rule"

    # Trustee answers a policy denial with 401 and type .../PolicyDeny: denied, not retried.
    kbs = ScriptedKbs()
    kbs.resource_problem = {
        "type": "https://github.com/confidential-containers/kbs/errors/PolicyDeny",
        "detail": "Resource policy denied",
    }
    kbs.resource_status = [401]
    with _client(backend, kbs) as client, pytest.raises(KbsDeniedError) as ei:
        client.get_resource("a/b/c")
    assert (ei.value.status, ei.value.check) == (401, None)
    assert kbs.sessions == 1

    kbs = ScriptedKbs()
    kbs.resource_status = [404]
    with _client(backend, kbs) as client, pytest.raises(KbsNotFoundError):
        client.get_resource("a/b/c")


def test_broken_answers_are_protocol_errors(backend: SimBackend) -> None:
    def no_cookie(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"nonce": NONCE, "extra-params": ""})

    with _client(backend, no_cookie) as client, pytest.raises(KbsProtocolError, match="cookie"):
        client.attest()

    def redirect(request: httpx.Request) -> httpx.Response:
        return httpx.Response(302, headers={"Location": "https://elsewhere/"})

    with _client(backend, redirect) as client, pytest.raises(KbsProtocolError, match="redirect"):
        client.attest()

    def not_json(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"<html>")

    with _client(backend, not_json) as client, pytest.raises(KbsProtocolError, match="JSON"):
        client.attest()

    def unreachable(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with _client(backend, unreachable) as client, pytest.raises(KbsUnavailableError):
        client.attest()


def test_session_cookie_stays_out_of_a_shared_jar(backend: SimBackend) -> None:
    kbs = ScriptedKbs()
    http = httpx.Client(transport=httpx.MockTransport(kbs))
    client = KbsClient(URL, backend=backend, http=http)
    client.attest()
    assert "kbs-session-id" not in http.cookies
    client.close()
    assert not http.is_closed  # a client passed in is the caller's to close
    http.close()


@pytest.mark.parametrize(
    "url",
    [
        "http://kbs.example",
        "ftp://127.0.0.1",
        "https://user:pw@kbs.example",
        "https://kbs.example/?x=1",
        "kbs.example",
    ],
)
def test_url_rule(url: str) -> None:
    with pytest.raises(UsageError):
        check_kbs_url(url)


def test_url_rule_accepts() -> None:
    assert check_kbs_url("https://kbs.example:8080/") == "https://kbs.example:8080"
    assert check_kbs_url("http://localhost:1") == "http://localhost:1"
    assert check_kbs_url("http://[::1]:1") == "http://[::1]:1"


@pytest.mark.parametrize("path", ["a/b", "a/b/c/d", "a/../c", "a/b/c d", "", "a//c"])
def test_resource_path_rule(path: str) -> None:
    with pytest.raises(UsageError):
        parse_resource_path(path)


def test_constructor_rules(backend: SimBackend, tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        KbsClient(URL, backend=backend, http=httpx.Client(), ca_bundle=tmp_path / "ca.pem")
    with pytest.raises(UsageError):
        KbsClient(URL, backend=backend, ca_bundle=tmp_path / "missing.pem")
    with pytest.raises(UsageError):
        KbsClient(URL, backend=backend, key_type="DSA")  # type: ignore[arg-type]


# -- Part 2: against nacre's server, served by uvicorn on loopback ------------------------------


class Clock:
    """The server's clock; tests move it forward to expire sessions and tokens."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


@dataclass
class Stack:
    url: str
    platform: SimPlatform
    clock: Clock
    manifest: Manifest
    mrenclave: str


def _release_policy(mrenclave: str) -> str:
    return (
        "version: 1\n"
        "rules:\n"
        "  - name: mrenclave\n"
        f"    expr: claims.mrenclave == '{mrenclave}'\n"
        "    message: only the measured model server\n"
        "  - name: isv_svn\n"
        "    expr: claims.isv_svn >= 1\n"
    )


@pytest.fixture(scope="module")
def stack(platform: SimPlatform, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("server")
    clock = Clock()
    config = dataclasses.replace(server_config(data_dir, platform), clock=clock)
    manifest = Manifest(name="model-server", entrypoint="serve.py", isv_prod_id=1, isv_svn=1)
    mrenclave = platform.measure(manifest).mr_enclave.hex()
    with LocalServer(create_app(config)) as server, httpx.Client() as http:
        admin = load_admin_key(data_dir / "admin.key")
        for name, data, policy in (
            ("models/llm/key", SECRET, _release_policy(mrenclave)),
            ("open/any/thing", b"released to any affirming token", None),
        ):
            body: dict[str, Any] = {"data": base64.b64encode(data).decode()}
            if policy is not None:
                body["policy"] = policy
            token = sign_admin_token(admin, now=datetime.now(UTC))
            answer = http.put(
                f"{server.url}/admin/v1/resources/{name}",
                json=body,
                headers={"Authorization": f"Bearer {token}"},
            )
            assert answer.status_code == 200, answer.text
        yield Stack(server.url, platform, clock, manifest, mrenclave)


SECRET = b"\x01model key bytes\x00\xff" * 2


def test_server_releases_and_client_decrypts(stack: Stack) -> None:
    backend = SimBackend(stack.platform, manifest=stack.manifest)
    with KbsClient(stack.url, backend=backend) as client:
        assert client.get_resource("models/llm/key") == SECRET
        assert client.get_resource("open/any/thing") == b"released to any affirming token"
        assert client.handshakes == 1
        assert client.token is not None
    with KbsClient(stack.url, backend=backend, key_type="RSA") as client:
        assert client.get_resource("models/llm/key") == SECRET


def test_server_refuses_modified_workload_naming_the_check(stack: Stack) -> None:
    modified = dataclasses.replace(stack.manifest, entrypoint="serve2.py")
    assert stack.platform.measure(modified).mr_enclave.hex() != stack.mrenclave
    backend = SimBackend(stack.platform, manifest=modified)
    with KbsClient(stack.url, backend=backend) as client:
        with pytest.raises(KbsDeniedError) as ei:
            client.get_resource("models/llm/key")
        # The attestation itself passed; only the release policy refused, and said which rule.
        assert client.handshakes == 1
        assert client.get_resource("open/any/thing")
    err = ei.value
    assert err.status == 403
    assert err.check == "rules.mrenclave"
    assert err.detail == "only the measured model server"
    assert err.server_code == "POLICY_DENY"
    assert err.expected is not None
    assert stack.mrenclave in err.expected


def test_server_old_svn_refused_by_the_svn_rule(stack: Stack) -> None:
    # Same files, ISVSVN 0: MRENCLAVE matches, the svn rule fails.
    old = dataclasses.replace(stack.manifest, isv_svn=0)
    assert stack.platform.measure(old).mr_enclave.hex() == stack.mrenclave
    backend = SimBackend(stack.platform, manifest=old)
    with KbsClient(stack.url, backend=backend) as client, pytest.raises(KbsDeniedError) as ei:
        client.get_resource("models/llm/key")
    assert ei.value.check == "rules.isv_svn"


def test_server_missing_resource_is_404(stack: Stack) -> None:
    backend = SimBackend(stack.platform, manifest=stack.manifest)
    with KbsClient(stack.url, backend=backend) as client, pytest.raises(KbsNotFoundError) as ei:
        client.get_resource("models/llm/nope")
    assert ei.value.status == 404


def test_expired_token_is_retried_once_with_a_fresh_handshake(stack: Stack) -> None:
    backend = SimBackend(stack.platform, manifest=stack.manifest)
    with KbsClient(stack.url, backend=backend) as client:
        assert client.get_resource("models/llm/key") == SECRET
        stale = client.token
        stack.clock.offset += timedelta(minutes=20)  # past the token's lifetime on the server
        try:
            assert client.get_resource("models/llm/key") == SECRET
        finally:
            stack.clock.offset = timedelta(0)
        assert client.handshakes == 2
        assert client.token != stale


class _SlowQuoter:
    """A backend whose first quote takes 'six minutes' of server time: the session expires."""

    def __init__(self, inner: SimBackend, clock: Clock) -> None:
        self._inner = inner
        self._clock = clock
        self.quotes = 0

    @property
    def name(self) -> str:
        return self._inner.name

    @property
    def tee(self) -> TeeKind:
        return self._inner.tee

    def quote(self, report_data: bytes) -> bytes:
        self.quotes += 1
        if self.quotes == 1:
            self._clock.offset += timedelta(minutes=6)
        return self._inner.quote(report_data)

    def identity(self) -> Identity:
        return self._inner.identity()

    def seal(self, data: bytes, *, policy: SealPolicy = "mrenclave", aad: bytes = b"") -> bytes:
        return self._inner.seal(data, policy=policy, aad=aad)

    def unseal(self, blob: bytes, *, aad: bytes = b"") -> bytes:
        return self._inner.unseal(blob, aad=aad)


def test_expired_session_is_retried_once_with_a_fresh_handshake(stack: Stack) -> None:
    slow = _SlowQuoter(SimBackend(stack.platform, manifest=stack.manifest), stack.clock)
    try:
        with KbsClient(stack.url, backend=slow) as client:
            assert client.get_resource("models/llm/key") == SECRET
            assert slow.quotes == 2
            assert client.handshakes == 1
    finally:
        stack.clock.offset = timedelta(0)


def test_server_rejects_wrong_protocol_version_and_tee(stack: Stack) -> None:
    with httpx.Client() as http:
        r = http.post(f"{stack.url}/kbs/v0/auth", json={"version": "0.1.1", "tee": "sgx"})
        assert r.status_code == 400
        assert r.json()["field"] == "version"


def test_nothing_secret_is_logged(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    backend = SimBackend(stack.platform, manifest=stack.manifest)
    # nacre's own loggers at DEBUG and httpx's request log (httpcore's DEBUG wire trace prints
    # raw response headers by design and is not meant to be on in production).
    caplog.set_level(logging.DEBUG, logger="nacre")
    caplog.set_level(logging.INFO, logger="httpx")
    with KbsClient(stack.url, backend=backend) as client:
        assert client.get_resource("models/llm/key") == SECRET
        token = client.token
        assert token is not None
        text = caplog.text + repr(client) + repr(client._session)
    assert "released resource models/llm/key" in caplog.text
    assert token not in text
    assert token.split(".")[2] not in text
    assert SECRET.hex() not in text
    assert repr(SECRET) not in text
    assert "kbs-session-id=" not in text
