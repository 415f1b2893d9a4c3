"""A KBS v0.4.0 client for workloads: attest with this process's TEE, fetch a secret, decrypt it.

    from nacre.sdk import KbsClient
    with KbsClient("https://kbs.example") as kbs:          # backend: nacre.tee.current()
        model_key = kbs.get_resource("models/llm/key")     # bytes, decrypted inside the TEE

One :meth:`KbsClient.get_resource` is the whole RCAR handshake (shared/DESIGN.md §3; Trustee's
``kbs/src/http/``):

1. ``POST /kbs/v0/auth`` ``{"version": "0.4.0", "tee": <backend.tee>, "extra-params": {...}}`` ->
   ``{"nonce", "extra-params"}`` and the ``kbs-session-id`` cookie. The version string must match
   exactly (Trustee checks ``=0.4.0``).
2. A fresh ephemeral TEE key (EC P-256 with ``alg: ECDH-ES+A256KW`` by default, RSA-3072 with
   ``RSA-OAEP-256`` as an option). ``report_data = pad64(SHA-384(JCS({"additional-evidence": "",
   "nonce", "tee-pubkey"})))`` (:func:`nacre.token.kbs_report_data`), and the backend quotes it.
3. ``POST /kbs/v0/attest`` with the cookie and ``{"runtime-data": {"nonce", "tee-pubkey"},
   "tee-evidence": {"primary_evidence": {"quote": <base64>}, "additional_evidence": ""}}`` ->
   ``{"token": <EAR JWT>}``.
4. ``GET /kbs/v0/resource/<repo>/<type>/<tag>`` with ``Authorization: Bearer <token>`` -> a
   flattened JWE, opened with the ephemeral private key (:func:`nacre.token.decrypt`).

The token and key are kept for further resources until the token expires. A 401 (expired or
unknown session or token) starts one fresh handshake and the request is tried once more; nothing
else is retried except a resource GET on a 5xx answer or a transport error, at most
:data:`GET_RETRIES` times with doubling backoff. RFC 7807 error bodies become typed
:class:`~nacre.sdk.errors.KbsError` subclasses with ``status``, ``check`` and ``detail``.

Only ``https://`` URLs are accepted, except ``http://`` to a loopback host. Nothing secret (keys,
tokens, session ids, resource bytes) is ever logged.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal

import httpx
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from nacre.errors import UsageError
from nacre.sdk.errors import (
    KbsDeniedError,
    KbsError,
    KbsNotFoundError,
    KbsProtocolError,
    KbsSessionError,
    KbsUnavailableError,
)
from nacre.tee import TeeBackend, current
from nacre.token import decrypt, kbs_report_data, public_jwk
from nacre.token.errors import JweError
from nacre.token.initdata import parse_init_data
from nacre.urls import check_service_url

__all__ = [
    "GET_RETRIES",
    "KBS_PROTOCOL_VERSION",
    "MAX_RESPONSE_BYTES",
    "SESSION_COOKIE",
    "KbsClient",
    "check_kbs_url",
    "parse_resource_path",
    "selected_report_hash",
]

_log = logging.getLogger("nacre.sdk.kbs")

#: The protocol version string Trustee's KBS requires byte for byte.
KBS_PROTOCOL_VERSION: Final = "0.4.0"
SESSION_COOKIE: Final = "kbs-session-id"
#: Retries of a resource GET after the first attempt, on 5xx answers and transport errors only.
GET_RETRIES: Final = 2
#: First backoff between GET attempts; doubles on each retry.
GET_BACKOFF_SECONDS: Final = 0.2
#: Largest answer accepted from the broker (a 2 MiB resource as JWE is about 2.7 MiB).
MAX_RESPONSE_BYTES: Final = 4 * 1024 * 1024
#: A token this close to its expiry is not reused; a fresh handshake is made instead.
TOKEN_EXPIRY_MARGIN_SECONDS: Final = 10
DEFAULT_TIMEOUT_SECONDS: Final = 30.0

_HASHES: Final = ("sha256", "sha384", "sha512")
_SEGMENT: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_USER_AGENT: Final = "nacre-sdk/0.1"

KeyType = Literal["EC", "RSA"]
HashName = Literal["sha256", "sha384", "sha512"]
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def selected_report_hash(extra: object) -> HashName:
    """The report-data hash a KBS selected in its challenge's ``extra-params`` (a JSON object, or
    a JSON string of one); SHA-384 when it names none (Trustee); one this client does not offer
    is a :class:`KbsProtocolError`."""
    if isinstance(extra, str) and extra.strip():
        try:
            extra = json.loads(extra)
        except ValueError:
            extra = None
    selected = extra.get("selected-hash-algorithm") if isinstance(extra, dict) else None
    if selected is None:
        return "sha384"
    name = str(selected).lower().replace("-", "")
    if name == "sha256":
        return "sha256"
    if name == "sha384":
        return "sha384"
    if name == "sha512":
        return "sha512"
    raise KbsProtocolError(
        "KBS selected a report-data hash this client does not offer",
        field="selected-hash-algorithm",
        expected=", ".join(_HASHES),
        actual=str(selected)[:40],
    )


def check_kbs_url(url: str) -> str:
    """``url`` without a trailing slash if it is https (or http to loopback), with a host and
    without credentials, query or fragment; else :class:`~nacre.errors.UsageError`."""
    checked = check_service_url(
        url,
        field="url",
        subject="the KBS URL",
        hint="for example https://kbs.example:8080 or http://127.0.0.1:8080",
        allow_query=False,
    )
    return checked.rstrip("/")


def parse_resource_path(path: str) -> tuple[str, str, str]:
    """``"repo/type/tag"`` -> its three segments (letters, digits, ``._-``; not ``.``/``..``)."""
    parts = path.strip("/").split("/")
    bad = len(parts) != 3 or any(not _SEGMENT.fullmatch(p) or p in (".", "..") for p in parts)
    if bad:
        raise UsageError(
            "a resource is named repository/type/tag",
            field="resource",
            expected="three segments of letters, digits and ._- (e.g. models/llm/key)",
            actual=path[:200],
        )
    return parts[0], parts[1], parts[2]


def _b64url_json(segment: str) -> Any:
    padded = segment + "=" * (-len(segment) % 4)
    return json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))


def _token_expiry(token: str) -> int | None:
    """The ``exp`` of a JWT, read without verifying it (the broker verifies; we only schedule)."""
    try:
        claims = _b64url_json(token.split(".")[1])
    except (IndexError, ValueError, UnicodeError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return exp if isinstance(exp, int) and not isinstance(exp, bool) else None


@dataclass(slots=True)
class _Session:
    """One attested handshake: the ephemeral key the broker wraps secrets to, and its token."""

    key: PrivateKey = field(repr=False)
    token: str = field(repr=False)
    expires_at: int | None

    def usable(self, now: float) -> bool:
        return self.expires_at is None or now < self.expires_at - TOKEN_EXPIRY_MARGIN_SECONDS


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _error_for(response: httpx.Response, body: bytes, what: str) -> KbsError:
    """A typed error from a non-2xx answer, reading its RFC 7807 body when there is one."""
    problem: dict[str, Any] = {}
    try:
        parsed = json.loads(body) if body else {}
    except ValueError:
        parsed = {}
    if isinstance(parsed, dict):
        problem = parsed
    status = response.status_code
    check = _text(problem.get("check")) or _text(problem.get("failed_check"))
    detail = _text(problem.get("detail"))
    title = _text(problem.get("title"))
    ptype = _text(problem.get("type"))
    named = _text(problem.get("field")) or check
    cls: type[KbsError]
    if status == 403 or (ptype or "").endswith("/PolicyDeny"):
        # Trustee answers 401 for a policy denial too; its type names it, and a new handshake
        # would not change the answer.
        cls = KbsDeniedError
    elif status == 401:
        cls = KbsSessionError
    elif status == 404:
        cls = KbsNotFoundError
    elif status >= 500:
        cls = KbsUnavailableError
    else:
        cls = KbsError
    reason = detail or title or (response.reason_phrase or "no reason given")
    message = f"{what} refused with HTTP {status}: {reason}"
    if check:
        message += f" (failed check: {check})"
    return cls(
        message,
        status=status,
        check=check,
        detail=detail,
        problem_type=ptype,
        title=title,
        problem=problem,
        field=named or "status",
        expected=problem.get("expected") if named else "2xx",
        actual=problem.get("actual") if named else str(status),
        server_code=_text(problem.get("code")),
    )


class KbsClient:
    """Fetch secrets from a KBS v0.4.0 key broker (nacre or Trustee) from inside a TEE.

    ``backend`` quotes the report data (default :func:`nacre.tee.current`). ``http`` is an
    ``httpx.Client`` to use instead of one made here (tests pass a Starlette ``TestClient``);
    ``ca_bundle`` (a PEM file) and ``ca_data`` (PEM text, e.g. from an environment variable) add CA
    certificates to the default trust store (TLS is always verified); neither can be combined with
    ``http``. ``key_type`` picks the ephemeral TEE key: ``"EC"`` (P-256,
    ECDH-ES+A256KW, default) or ``"RSA"`` (3072 bits, RSA-OAEP-256). ``init_data``: the Initdata
    TOML this TEE was launched with (its digest is in CONFIGID / MRCONFIGID / HOST_DATA); it is
    sent with the attestation, the broker checks it against the evidence, and release policies
    can then read it (``init_data.data[...]``).
    """

    def __init__(
        self,
        url: str,
        *,
        backend: TeeBackend | None = None,
        http: httpx.Client | None = None,
        ca_bundle: str | Path | None = None,
        ca_data: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        key_type: KeyType = "EC",
        get_retries: int = GET_RETRIES,
        backoff: float = GET_BACKOFF_SECONDS,
        init_data: str | None = None,
    ) -> None:
        self._url = check_kbs_url(url)
        if init_data is not None:
            parse_init_data({"format": "toml", "body": init_data})  # refuse it here, not remotely
        self._init_data = init_data
        if key_type not in ("EC", "RSA"):
            raise UsageError(
                "unknown TEE key type", field="key_type", expected="EC or RSA", actual=key_type
            )
        if http is not None and (ca_bundle is not None or ca_data is not None):
            raise UsageError(
                "ca_bundle / ca_data apply to a client made here; configure the httpx.Client "
                "you pass",
                field="ca_bundle",
                expected="ca_bundle / ca_data or http, not both",
                actual="both",
            )
        if get_retries < 0 or timeout <= 0 or backoff < 0:
            raise UsageError(
                "retries, timeout and backoff must be non-negative (timeout positive)",
                field="get_retries/timeout/backoff",
                actual=f"{get_retries}/{timeout}/{backoff}",
            )
        self._backend = backend if backend is not None else current()
        self._key_type: KeyType = key_type
        self._retries = get_retries
        self._backoff = backoff
        self._owns_http = http is None
        if http is None:
            verify: ssl.SSLContext | bool = True
            if ca_bundle is not None or ca_data is not None:
                verify = ssl.create_default_context()
                try:
                    if ca_bundle is not None:
                        verify.load_verify_locations(cafile=str(ca_bundle))
                    if ca_data is not None:
                        verify.load_verify_locations(cadata=ca_data)
                except (OSError, ssl.SSLError, ValueError) as exc:
                    which = str(ca_bundle) if ca_bundle is not None else "ca_data"
                    raise UsageError(
                        f"cannot load the CA certificates ({which}): {exc}",
                        field="ca_bundle" if ca_bundle is not None else "ca_data",
                        expected="PEM CA certificates",
                        actual=which,
                    ) from exc
            http = httpx.Client(
                timeout=httpx.Timeout(timeout),
                verify=verify,
                follow_redirects=False,
                headers={"User-Agent": _USER_AGENT},
            )
        self._http = http
        self._timeout = timeout
        self._session: _Session | None = None
        #: Handshakes this client has completed (observability; tests read it).
        self.handshakes = 0

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self._url

    @property
    def backend(self) -> TeeBackend:
        return self._backend

    def close(self) -> None:
        """Forget the session and close the HTTP client if this object made it."""
        self._session = None
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> KbsClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"KbsClient({self._url!r}, tee={self._backend.tee!r}, key_type={self._key_type!r})"

    # -- public API -----------------------------------------------------------------------------

    def attest(self) -> str:
        """Run a fresh handshake (auth, quote, attest) and return the attestation token (EAR JWT)."""
        return self._handshake().token

    @property
    def token(self) -> str | None:
        """The current attestation token, if a handshake has completed and it has not expired."""
        session = self._session
        if session is None or not session.usable(time.time()):
            return None
        return session.token

    def get_resource(self, path: str) -> bytes:
        """The secret at ``repo/type/tag``, decrypted with this handshake's TEE key."""
        repo, rtype, tag = parse_resource_path(path)
        url = f"{self._url}/kbs/v0/resource/{repo}/{rtype}/{tag}"
        fresh = False
        session = self._session
        if session is None or not session.usable(time.time()):
            session, fresh = self._handshake(), True
        try:
            body = self._get(url, session.token, f"resource {repo}/{rtype}/{tag}")
        except KbsSessionError:
            if fresh:
                raise
            _log.info("KBS token refused (expired or unknown); making a fresh handshake")
            session = self._handshake()
            body = self._get(url, session.token, f"resource {repo}/{rtype}/{tag}")
        jwe = self._json_object(body, f"resource {repo}/{rtype}/{tag}")
        try:
            secret = decrypt(jwe, session.key)
        except JweError as exc:
            raise KbsProtocolError(
                f"the resource {repo}/{rtype}/{tag} does not decrypt with this TEE key: {exc.message}",
                field=exc.field or "jwe",
                expected=exc.expected,
                actual=exc.actual,
            ) from exc
        _log.info("KBS released resource %s/%s/%s (%d bytes)", repo, rtype, tag, len(secret))
        return secret

    # -- the handshake --------------------------------------------------------------------------

    def _new_key(self) -> PrivateKey:
        if self._key_type == "RSA":
            return rsa.generate_private_key(public_exponent=65537, key_size=3072)
        return ec.generate_private_key(ec.SECP256R1())

    def _handshake(self) -> _Session:
        try:
            return self._handshake_once()
        except KbsSessionError:
            # The session expired between auth and attest (or another replica lost it): once more.
            _log.info("KBS session refused during the handshake; starting over once")
            return self._handshake_once()

    def _handshake_once(self) -> _Session:
        self._session = None
        tee = self._backend.tee
        # 1. Request -> Challenge.
        auth_body = {
            "version": KBS_PROTOCOL_VERSION,
            "tee": tee,
            "extra-params": {"supported-hash-algorithms": list(_HASHES)},
        }
        response, body = self._send("POST", f"{self._url}/kbs/v0/auth", json_body=auth_body)
        if response.status_code != 200:
            raise _error_for(response, body, "KBS auth")
        challenge = self._json_object(body, "KBS auth")
        nonce = challenge.get("nonce")
        if not isinstance(nonce, str) or not nonce:
            raise KbsProtocolError(
                "KBS auth answered without a nonce", field="nonce", expected="a string"
            )
        hash_name = selected_report_hash(challenge.get("extra-params"))
        session_id = response.cookies.get(SESSION_COOKIE)
        if not session_id:
            raise KbsProtocolError(
                f"KBS auth set no {SESSION_COOKIE} cookie",
                field=SESSION_COOKIE,
                expected="a Set-Cookie header",
                actual="none",
            )
        self._forget_cookie()

        # 2. Ephemeral key, report data, evidence.
        key = self._new_key()
        jwk = public_jwk(key)
        report_data = kbs_report_data(nonce, jwk, "", hash_algorithm=hash_name)
        quote = self._backend.quote(report_data)

        # 3. Attestation -> token.
        attest_body: dict[str, Any] = {
            "runtime-data": {"nonce": nonce, "tee-pubkey": jwk},
            "tee-evidence": {
                "primary_evidence": {"quote": base64.b64encode(quote).decode("ascii")},
                "additional_evidence": "",
            },
        }
        if self._init_data is not None:
            attest_body["init-data"] = {"format": "toml", "body": self._init_data}
        response, body = self._send(
            "POST",
            f"{self._url}/kbs/v0/attest",
            json_body=attest_body,
            headers={"Cookie": f"{SESSION_COOKIE}={session_id}"},
        )
        self._forget_cookie()
        if response.status_code != 200:
            raise _error_for(response, body, "KBS attest")
        answer = self._json_object(body, "KBS attest")
        token = answer.get("token")
        if not isinstance(token, str) or token.count(".") != 2:
            raise KbsProtocolError(
                "KBS attest answered without a token", field="token", expected="a JWT"
            )
        session = _Session(key=key, token=token, expires_at=_token_expiry(token))
        self._session = session
        self.handshakes += 1
        _log.info("KBS attestation accepted (tee %s)", tee)
        return session

    # -- HTTP -----------------------------------------------------------------------------------

    def _forget_cookie(self) -> None:
        # The cookie is sent explicitly; keep it out of a shared client's jar.
        self._http.cookies.delete(SESSION_COOKIE)

    def _get(self, url: str, token: str, what: str) -> bytes:
        attempt = 0
        while True:
            try:
                response, body = self._send(
                    "GET", url, headers={"Authorization": f"Bearer {token}"}
                )
            except KbsUnavailableError:
                if attempt >= self._retries:
                    raise
            else:
                if response.status_code == 200:
                    return body
                error = _error_for(response, body, what)
                if response.status_code < 500 or attempt >= self._retries:
                    raise error
            delay = self._backoff * (2**attempt)
            attempt += 1
            _log.info("KBS GET failed; retry %d of %d in %.1fs", attempt, self._retries, delay)
            time.sleep(delay)

    def _send(
        self,
        method: str,
        url: str,
        *,
        json_body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[httpx.Response, bytes]:
        req_headers = {"Accept": "application/json", **(headers or {})}
        content = None
        if json_body is not None:
            content = json.dumps(json_body, separators=(",", ":")).encode()
            req_headers["Content-Type"] = "application/json"
        try:
            with self._http.stream(method, url, content=content, headers=req_headers) as response:
                declared = response.headers.get("Content-Length")
                if (
                    declared is not None
                    and declared.isdigit()
                    and int(declared) > MAX_RESPONSE_BYTES
                ):
                    raise KbsProtocolError(
                        "KBS answer is too large",
                        status=response.status_code,
                        field="Content-Length",
                        expected=f"<= {MAX_RESPONSE_BYTES} bytes",
                        actual=declared,
                    )
                chunks: list[bytes] = []
                size = 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > MAX_RESPONSE_BYTES:
                        raise KbsProtocolError(
                            "KBS answer is too large",
                            status=response.status_code,
                            field="body",
                            expected=f"<= {MAX_RESPONSE_BYTES} bytes",
                            actual=f"> {MAX_RESPONSE_BYTES} bytes",
                        )
                    chunks.append(chunk)
        except httpx.TransportError as exc:
            raise KbsUnavailableError(
                f"cannot reach the KBS at {self._url}: {type(exc).__name__}: {exc}",
                field="url",
                actual=self._url,
                hint="check the URL, that the broker is running, and the TLS trust (ca_bundle)",
            ) from exc
        if 300 <= response.status_code < 400:
            raise KbsProtocolError(
                f"KBS answered a redirect ({response.status_code}); redirects are not followed",
                status=response.status_code,
                field="url",
                actual=response.headers.get("Location", "")[:200],
            )
        return response, b"".join(chunks)

    @staticmethod
    def _json_object(body: bytes, what: str) -> dict[str, Any]:
        try:
            value = json.loads(body)
        except ValueError:
            value = None
        if not isinstance(value, dict):
            raise KbsProtocolError(
                f"{what} did not answer a JSON object",
                field="body",
                expected="a JSON object",
                actual=body[:60].decode("utf-8", "replace"),
            )
        return value
