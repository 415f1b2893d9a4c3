"""A lean KBS v0.4.0 load generator: hand-written HTTP/1.1 over asyncio streams, full handshakes.

``benchmarks/kbs.py --client wire`` runs N :class:`KbsWireClient` coroutines on one event loop.
Why not the SDK (:class:`nacre.sdk.KbsClient` over httpx, one thread per client): on a small
machine its ~3-4 ms of client CPU per handshake, and 64 threads contending for the GIL, share the
cores with the server, so the figure measures the load generator as much as the server. This
client keeps only what the protocol needs, like wrk does for plain HTTP, and still does every
handshake completely and checks it, byte for byte as the SDK does on the wire
(``KbsClient._handshake_once`` and ``get_resource``):

1. ``POST /kbs/v0/auth`` ``{"version": "0.4.0", "tee": "sgx", "extra-params":
   {"supported-hash-algorithms": ["sha256", "sha384", "sha512"]}}`` -> the nonce, the selected
   report-data hash (SHA-384 when the broker names none) and the ``kbs-session-id`` cookie.
2. A fresh EC P-256 key, its JWK (:func:`nacre.token.public_jwk`), the report data
   (:func:`nacre.token.kbs_report_data`) and a simulated quote of it (:class:`SimBackend`).
3. ``POST /kbs/v0/attest`` with the cookie and ``{"runtime-data": {"nonce", "tee-pubkey"},
   "tee-evidence": {"primary_evidence": {"quote"}, "additional_evidence": ""}}`` -> the EAR token.
4. ``GET /kbs/v0/resource/<repo>/<type>/<tag>`` with ``Authorization: Bearer <token>`` (the SDK
   sends the token, not the cookie, on this request) -> a flattened JWE, opened with the key
   (:func:`nacre.token.decrypt`) and compared with the expected secret.

Each handshake is fresh: a new session, nonce, key and quote; a token is never reused. Anything
but a 200 with the expected bytes raises :class:`WireError` with a short description (the step,
the HTTP status and the problem body's title and code).

The HTTP client is deliberately small: ``http://`` only (the benchmark talks to loopback), one
keep-alive connection per client, reopened when the server has closed it; responses must carry a
``Content-Length`` body (chunked and other transfer codings are refused, with a clear error);
each request (connect, write, read) is bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import orjson
from cryptography.hazmat.primitives.asymmetric import ec

from nacre.sdk.errors import KbsProtocolError
from nacre.sdk.kbs import parse_resource_path, selected_report_hash
from nacre.tee.sim import SimBackend
from nacre.token import decrypt, kbs_report_data, public_jwk
from nacre.token.errors import JweError

__all__ = [
    "HttpConnection",
    "KbsWireClient",
    "Response",
    "WireError",
]

KBS_PROTOCOL_VERSION: Final = "0.4.0"
SESSION_COOKIE: Final = "kbs-session-id"
#: What the SDK offers in ``extra-params`` (``nacre.sdk.kbs._HASHES``), in its order.
SUPPORTED_HASHES: Final = ("sha256", "sha384", "sha512")
#: Largest response body accepted (the SDK's ``MAX_RESPONSE_BYTES``).
MAX_BODY_BYTES: Final = 4 * 1024 * 1024
#: Largest status line + header block accepted (the asyncio stream's read limit).
MAX_HEADER_BYTES: Final = 64 * 1024
DEFAULT_TIMEOUT_SECONDS: Final = 30.0
#: Statuses that never carry a body (RFC 9110 §6.4.1), so need no Content-Length.
_NO_BODY: Final = frozenset({204, 304})

HashName = Literal["sha256", "sha384", "sha512"]


class WireError(Exception):
    """A request or handshake that failed; the message is a short description of why."""


# --------------------------------------------------------------------------- HTTP/1.1


@dataclass(frozen=True, slots=True)
class Response:
    """A parsed answer: status, headers (names lower-cased, in order, repeats kept), body."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (lower case), if any."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def header_values(self, name: str) -> list[str]:
        """Every value of header ``name`` (lower case): Set-Cookie may repeat."""
        return [value for key, value in self.headers if key == name]


def _parse_head(head: bytes) -> tuple[int, tuple[tuple[str, str], ...], bool]:
    """Status, headers and whether the connection stays open, from the status line + headers.

    Only HTTP/1.x is accepted; a ``Transfer-Encoding`` (chunked) answer is refused, because the
    body is read by ``Content-Length`` alone."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise WireError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    status = int(parts[1])
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise WireError(f"malformed response header line: {line[:80]!r}")
        headers.append((name.lower(), value.strip()))
    if any(name == "transfer-encoding" for name, _ in headers):
        raise WireError(
            f"HTTP {status} answer uses Transfer-Encoding (e.g. chunked), which this client does "
            "not support: it reads Content-Length bodies only"
        )
    connection = ",".join(v for k, v in headers if k == "connection").lower()
    # HTTP/1.1 keeps the connection unless told to close; HTTP/1.0 closes unless told to keep it.
    keep_alive = "keep-alive" in connection if parts[0] == "HTTP/1.0" else "close" not in connection
    return status, tuple(headers), keep_alive


def _content_length(status: int, headers: tuple[tuple[str, str], ...]) -> int:
    """The body length the headers declare; refuses a missing, repeated-different or huge one."""
    values = {v for k, v in headers if k == "content-length"}
    if not values:
        if status in _NO_BODY:
            return 0
        raise WireError(f"HTTP {status} answer has no Content-Length (refused: no framing)")
    if len(values) != 1 or not (declared := values.pop()).isdigit():
        raise WireError(f"HTTP {status} answer has an invalid Content-Length: {sorted(values)}")
    length = int(declared)
    if length > MAX_BODY_BYTES:
        raise WireError(f"HTTP {status} answer is too large: {length} > {MAX_BODY_BYTES} bytes")
    return length


class HttpConnection:
    """One keep-alive HTTP/1.1 connection to ``host:port``, one request at a time.

    The connection is opened on the first request and reopened when the server has closed it
    (idle timeout, ``Connection: close``). A request that gets no byte of answer on a reused
    connection (end of stream or reset) is sent once more on a new one: the server closed it as
    the request went out, the race every keep-alive client has. Any failure closes the connection, since its
    state (a half-read answer) is then unknown."""

    def __init__(self, host: str, port: int, *, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self._host = host
        self._port = port
        self._authority = f"{host}:{port}".encode("ascii")
        self._timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        #: Connections opened so far (observability; tests read it).
        self.connects = 0

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        """Send one request and read its whole answer, within the timeout."""
        raw = self._encode(method, path, body, headers or {})
        try:
            async with asyncio.timeout(self._timeout):
                return await self._exchange(raw)
        except TimeoutError:
            await self.close()
            raise WireError(
                f"{method} {path}: no complete answer within {self._timeout:g} s"
            ) from None
        except WireError as exc:
            await self.close()
            raise WireError(f"{method} {path}: {exc}") from None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            await self.close()
            raise WireError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Close the connection, if open (a new request opens another)."""
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):  # the peer reset it already: closed all the same
                await writer.wait_closed()

    def _encode(
        self, method: str, path: str, body: bytes | None, headers: Mapping[str, str]
    ) -> bytes:
        lines = [
            f"{method} {path} HTTP/1.1".encode("ascii"),
            b"Host: " + self._authority,
            b"Accept: application/json",
        ]
        lines += [f"{name}: {value}".encode("latin-1") for name, value in headers.items()]
        if body is not None:
            lines += [b"Content-Type: application/json", b"Content-Length: %d" % len(body)]
        return b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")

    async def _exchange(self, raw: bytes) -> Response:
        reader, writer, reused = await self._ensure_open()
        try:
            return await self._send_and_read(reader, writer, raw)
        except asyncio.IncompleteReadError as exc:
            if not reused or exc.partial:
                raise
        except ConnectionError:
            if not reused:
                raise
        # The server closed (or reset) the idle connection as the request went out: once more,
        # on a fresh one.
        await self.close()
        reader, writer, _ = await self._ensure_open()
        return await self._send_and_read(reader, writer, raw)

    async def _ensure_open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bool]:
        """The open connection's streams, opening one unless a live one is there; the flag is
        True when an already open connection is reused."""
        reader, writer = self._reader, self._writer
        if reader is not None and writer is not None:
            if not reader.at_eof() and not writer.is_closing():
                return reader, writer, True
            await self.close()
        reader, writer = await asyncio.open_connection(
            self._host, self._port, limit=MAX_HEADER_BYTES
        )
        self._reader, self._writer = reader, writer
        self.connects += 1
        return reader, writer, False

    async def _send_and_read(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes
    ) -> Response:
        writer.write(raw)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        status, headers, keep_alive = _parse_head(head[:-4])
        length = _content_length(status, headers)
        body = await reader.readexactly(length) if length else b""
        if not keep_alive:
            await self.close()
        return Response(status, headers, body)


# --------------------------------------------------------------------------- the handshake


def _problem_summary(response: Response) -> str:
    """``HTTP <status>: <title> [<code>]`` from an RFC 7807 body, or the body's first bytes."""
    try:
        problem = orjson.loads(response.body) if response.body else None
    except orjson.JSONDecodeError:
        problem = None
    if not isinstance(problem, dict):
        snippet = response.body[:80].decode("utf-8", "replace")
        return f"HTTP {response.status}" + (f": {snippet!r}" if snippet else "")
    title = problem.get("title") or problem.get("detail") or "no title"
    code = problem.get("code") or problem.get("type")
    check = problem.get("check")
    summary = f"HTTP {response.status}: {str(title)[:120]}"
    if code:
        summary += f" [{str(code)[:60]}]"
    if check:
        summary += f" (check {str(check)[:60]})"
    return summary


def _json_object(response: Response, step: str) -> dict[str, Any]:
    """The 200 answer of ``step`` as a JSON object; any other status or shape is a WireError."""
    if response.status != 200:
        raise WireError(f"{step}: {_problem_summary(response)}")
    try:
        value = orjson.loads(response.body)
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise WireError(f"{step}: HTTP 200 but not a JSON object: {response.body[:60]!r}")
    return value


def selected_hash(extra: object) -> HashName:
    """The report-data hash the broker selected in ``extra-params``, read as the SDK reads it
    (:func:`nacre.sdk.kbs.selected_report_hash`); one this client did not offer is an error."""
    try:
        return selected_report_hash(extra)
    except KbsProtocolError as exc:
        raise WireError(f"auth: the broker selected a hash not offered: {exc.actual}") from None


def session_cookie(response: Response) -> str:
    """The ``kbs-session-id`` value from the answer's Set-Cookie headers."""
    for header in response.header_values("set-cookie"):
        name, sep, rest = header.partition("=")
        if sep and name.strip() == SESSION_COOKIE:
            value = rest.split(";", 1)[0].strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            if value:
                return value
    raise WireError(f"auth: HTTP 200 but no {SESSION_COOKIE} cookie was set")


class KbsWireClient:
    """One virtual workload: full KBS handshakes over one keep-alive connection.

    ``resource`` is ``repo/type/tag``; ``expected`` the bytes the broker must release. Only
    ``http://host:port`` URLs (the benchmark's loopback servers)."""

    def __init__(
        self,
        url: str,
        backend: SimBackend,
        resource: str,
        expected: bytes,
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname or parts.path.strip("/"):
            raise ValueError(f"the wire client speaks plain http://host:port only, not {url!r}")
        repo, rtype, tag = parse_resource_path(resource)
        self._resource_path = f"/kbs/v0/resource/{repo}/{rtype}/{tag}"
        self._backend = backend
        self._expected = expected
        self._auth_body = orjson.dumps(
            {
                "version": KBS_PROTOCOL_VERSION,
                "tee": backend.tee,
                "extra-params": {"supported-hash-algorithms": list(SUPPORTED_HASHES)},
            }
        )
        self.connection = HttpConnection(parts.hostname, parts.port or 80, timeout=timeout)

    async def aclose(self) -> None:
        await self.connection.close()

    async def handshake(self) -> bytes:
        """auth -> fresh key and quote -> attest -> resource GET -> decrypt -> compare.

        Returns the released bytes (equal to ``expected``); raises :class:`WireError` otherwise."""
        conn = self.connection
        # 1. Request -> challenge (nonce, selected hash) and the session cookie.
        answer = await conn.request("POST", "/kbs/v0/auth", body=self._auth_body)
        challenge = _json_object(answer, "auth")
        nonce = challenge.get("nonce")
        if not isinstance(nonce, str) or not nonce:
            raise WireError("auth: HTTP 200 without a nonce")
        hash_name = selected_hash(challenge.get("extra-params"))
        cookie = session_cookie(answer)

        # 2. A fresh ephemeral TEE key, the report data binding it to the nonce, the quote.
        key = ec.generate_private_key(ec.SECP256R1())
        jwk = public_jwk(key)
        quote = self._backend.quote(kbs_report_data(nonce, jwk, "", hash_algorithm=hash_name))

        # 3. Attestation -> token.
        attest_body = orjson.dumps(
            {
                "runtime-data": {"nonce": nonce, "tee-pubkey": jwk},
                "tee-evidence": {
                    "primary_evidence": {"quote": base64.b64encode(quote).decode("ascii")},
                    "additional_evidence": "",
                },
            }
        )
        answer = await conn.request(
            "POST",
            "/kbs/v0/attest",
            body=attest_body,
            headers={"Cookie": f"{SESSION_COOKIE}={cookie}"},
        )
        token = _json_object(answer, "attest").get("token")
        if not isinstance(token, str) or token.count(".") != 2:
            raise WireError("attest: HTTP 200 without a JWT token")

        # 4. The resource, as a JWE to the key of step 2.
        answer = await conn.request(
            "GET", self._resource_path, headers={"Authorization": f"Bearer {token}"}
        )
        jwe = _json_object(answer, "resource")
        try:
            secret = decrypt(jwe, key)
        except JweError as exc:
            raise WireError(
                f"resource: the JWE does not open with this key: {exc.message}"
            ) from exc
        if secret != self._expected:
            raise WireError(
                f"resource: released bytes differ from the expected secret "
                f"({len(secret)} bytes released, {len(self._expected)} expected)"
            )
        return secret
