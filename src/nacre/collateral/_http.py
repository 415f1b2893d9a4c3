"""The HTTP plumbing shared by the Intel PCS/PCCS and AMD KDS clients.

One GET, done carefully:

1. Only ``https://`` URLs, except ``http://`` to a loopback host (a PCCS or a test server on the
   same machine). TLS certificates are always verified; a private PCCS's CA can be *added* to the
   default trust store (``ca_bundle``), verification cannot be switched off.
2. A timeout per attempt (connect/read/write) and a wall-clock deadline per attempt, body included.
3. The body is streamed and refused past ``max_bytes`` (:class:`~nacre.errors.LimitExceededError`),
   before reading when ``Content-Length`` already says so.
4. At most ``retries`` retries, with doubling backoff, on 5xx/429 answers, timeouts and connection
   errors; every other failure is final and names the URL, the status and what to do.
5. Issuer-chain headers are URL-encoded PEM: they are URL-decoded (``%2B`` and a literal ``+`` both
   stay ``+``: this is percent-decoding, not form decoding).

Redirects are not followed: PCS, PCCS and KDS answer directly, and a redirect is reported as an error.
"""

from __future__ import annotations

import ssl
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

import httpx

from nacre.errors import CollateralFetchError, LimitExceededError, UsageError
from nacre.limits import (
    FETCH_BACKOFF_SECONDS,
    FETCH_DEADLINE_SECONDS,
    FETCH_RETRIES,
    FETCH_TIMEOUT_SECONDS,
    MAX_FETCH_BYTES,
    MAX_PEM_CHAIN_BYTES,
)
from nacre.urls import check_service_url

__all__ = [
    "Fetched",
    "HttpGetter",
    "Request",
    "ServiceClient",
    "check_url",
]

_USER_AGENT = "nacre-collateral/0.1"
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_PEM_BEGIN = "-----BEGIN CERTIFICATE-----"


@dataclass(frozen=True, slots=True)
class Request:
    """One GET and how to explain its failure.

    ``chain_headers``: response headers that may carry the issuer chain, first present wins.
    ``fallback``: tried when this request answers 404 (PCCS ``rootcacrl`` -> the root's CRL DP).
    """

    url: str
    what: str
    accept: str
    chain_headers: tuple[str, ...] = ()
    not_found: str = ""
    not_found_hint: str = ""
    fallback: Request | None = None


@dataclass(frozen=True, slots=True)
class Fetched:
    """A successful answer: the body exactly as served, and the URL-decoded issuer chain."""

    url: str
    body: bytes
    issuer_chain: bytes | None


def check_url(url: str, *, field: str) -> str:
    """``url`` if it is https (or http to loopback), with a host and no credentials; else UsageError."""
    return check_service_url(
        url,
        field=field,
        subject=field,
        hint="for example https://api.trustedservices.intel.com or https://pccs.example:8081",
    )


def decode_chain_header(value: str, *, header: str, url: str) -> bytes:
    """A URL-encoded PEM chain header -> PEM bytes."""
    try:
        text = urllib.parse.unquote(value, errors="strict")
        pem = text.encode("ascii", errors="strict")
    except UnicodeError as exc:
        raise CollateralFetchError(
            f"issuer chain header {header} from {url} does not decode to PEM text",
            code="COLLATERAL_FETCH_BAD_RESPONSE",
            field=header,
            expected="URL-encoded ASCII PEM",
            actual=str(exc),
            hint="the server is not speaking the Intel PCS/PCCS API v4; check the URL",
        ) from exc
    if len(pem) > MAX_PEM_CHAIN_BYTES:
        raise LimitExceededError(
            f"issuer chain header {header} from {url} is too large",
            field=header,
            expected=f"<= {MAX_PEM_CHAIN_BYTES} bytes",
            actual=f"{len(pem)} bytes",
        )
    if _PEM_BEGIN not in text:
        raise CollateralFetchError(
            f"issuer chain header {header} from {url} is not a URL-encoded PEM chain",
            code="COLLATERAL_FETCH_BAD_RESPONSE",
            field=header,
            expected=f"URL-encoded text containing {_PEM_BEGIN!r}",
            actual=repr(value[:60]),
            hint="the server is not speaking the Intel PCS/PCCS API v4; check the URL",
        )
    return pem


class _RetryableError(Exception):
    """Internal: this attempt failed in a way worth another try."""

    def __init__(self, detail: str, status: int | None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status


class HttpGetter:
    """Careful GETs over one ``httpx.Client`` (given, or built here with TLS verification on)."""

    def __init__(
        self,
        *,
        service: str,
        client: httpx.Client | None = None,
        transport: httpx.BaseTransport | None = None,
        ca_bundle: str | Path | None = None,
        timeout: float = FETCH_TIMEOUT_SECONDS,
        deadline: float = FETCH_DEADLINE_SECONDS,
        max_bytes: int = MAX_FETCH_BYTES,
        retries: int = FETCH_RETRIES,
        backoff: float = FETCH_BACKOFF_SECONDS,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        if client is not None and (transport is not None or ca_bundle is not None):
            raise UsageError(
                "pass either an httpx client or a transport/CA bundle, not both",
                field="client",
                expected="client alone, or transport and/or ca_bundle",
                actual="both",
            )
        if not 0 <= retries <= FETCH_RETRIES:
            raise UsageError(
                "too many retries asked for",
                field="retries",
                expected=f"0..{FETCH_RETRIES}",
                actual=str(retries),
            )
        self.service = service
        self.max_bytes = max_bytes
        self.deadline = deadline
        self.retries = retries
        self.backoff = backoff
        self._sleep = time.sleep if sleep is None else sleep
        self._owns_client = client is None
        if client is None:
            client = httpx.Client(
                verify=_ssl_context(ca_bundle),
                timeout=httpx.Timeout(timeout),
                follow_redirects=False,
                transport=transport,
                headers={"User-Agent": _USER_AGENT},
            )
        self._client = client

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> HttpGetter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def get(self, request: Request) -> Fetched:
        """GET ``request`` (then its fallback on 404), with bounded retries."""
        try:
            return self._get_with_retries(request)
        except CollateralFetchError as exc:
            if request.fallback is None or exc.code != "COLLATERAL_NOT_FOUND":
                raise
            return self.get(request.fallback)

    def _get_with_retries(self, request: Request) -> Fetched:
        last: _RetryableError | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                self._sleep(self.backoff * 2 ** (attempt - 1))
            try:
                return self._attempt(request)
            except _RetryableError as retry:
                last = retry
        assert last is not None
        attempts = self.retries + 1
        raise CollateralFetchError(
            f"{self.service} did not deliver {request.what}: {last.detail} "
            f"({attempts} attempt{'s' if attempts > 1 else ''})",
            code="COLLATERAL_FETCH_FAILED",
            field=request.url,
            expected="HTTP 200 within the timeout",
            actual=f"HTTP {last.status}" if last.status is not None else last.detail,
            hint=f"check that {self.service} is up and reachable from here, then try again",
        )

    def _attempt(self, request: Request) -> Fetched:
        started = time.monotonic()
        try:
            with self._client.stream(
                "GET", request.url, headers={"Accept": request.accept}
            ) as resp:
                self._check_status(request, resp)
                body = self._read_body(request, resp, started)
                chain = self._issuer_chain(request, resp)
                return Fetched(url=request.url, body=body, issuer_chain=chain)
        except httpx.TimeoutException as exc:
            raise _RetryableError(f"timed out ({type(exc).__name__})", None) from exc
        except httpx.TransportError as exc:
            if _tls_verification_failed(exc):
                raise CollateralFetchError(
                    f"the TLS certificate of {self.service} does not verify",
                    code="COLLATERAL_FETCH_TLS",
                    field=request.url,
                    expected="a certificate chain to a trusted CA, for this host name",
                    actual=str(exc)[:200],
                    hint="for a private PCCS pass --ca-bundle with its CA certificate "
                    "(TLS verification cannot be turned off)",
                ) from exc
            raise _RetryableError(f"connection failed ({type(exc).__name__}: {exc})", None) from exc
        except httpx.HTTPError as exc:
            raise CollateralFetchError(
                f"{self.service} sent an unreadable answer for {request.what}",
                code="COLLATERAL_FETCH_BAD_RESPONSE",
                field=request.url,
                expected="a well-formed HTTP response",
                actual=f"{type(exc).__name__}: {exc}",
                hint=f"check the {self.service} URL",
            ) from exc

    def _check_status(self, request: Request, resp: httpx.Response) -> None:
        status = resp.status_code
        if status == 200:
            return
        detail = _error_detail(resp.headers)
        if status in _RETRY_STATUSES:
            raise _RetryableError(f"HTTP {status}{detail}", status)
        if status == 404:
            raise CollateralFetchError(
                f"{request.not_found or f'{self.service} has no {request.what}'}{detail}",
                code="COLLATERAL_NOT_FOUND",
                field=request.url,
                expected="HTTP 200",
                actual="HTTP 404",
                hint=request.not_found_hint or f"check the {self.service} URL and API version",
            )
        hint = f"check the {self.service} URL"
        if status in (401, 403):
            hint = f"{self.service} refused the request: check its access settings"
        elif 300 <= status < 400:
            where = resp.headers.get("Location", "?")
            hint = f"redirects are not followed (to {where}); use the final URL as the base"
        raise CollateralFetchError(
            f"{self.service} answered HTTP {status} for {request.what}{detail}",
            code="COLLATERAL_FETCH_FAILED",
            field=request.url,
            expected="HTTP 200",
            actual=f"HTTP {status}",
            hint=hint,
        )

    def _too_large(self, request: Request, actual: str) -> LimitExceededError:
        return LimitExceededError(
            f"{self.service} sent more than {self.max_bytes} bytes for {request.what}",
            field=request.url,
            expected=f"<= {self.max_bytes} bytes (nacre.limits.MAX_FETCH_BYTES)",
            actual=actual,
            hint="this is not collateral; check the URL",
        )

    def _read_body(self, request: Request, resp: httpx.Response, started: float) -> bytes:
        declared = resp.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            raise self._too_large(request, f"Content-Length {declared}")
        chunks: list[bytes] = []
        size = 0
        for chunk in resp.iter_bytes():
            size += len(chunk)
            if size > self.max_bytes:
                raise self._too_large(request, f"> {self.max_bytes} bytes, still sending")
            chunks.append(chunk)
            if time.monotonic() - started > self.deadline:
                raise httpx.ReadTimeout(f"body not complete after {self.deadline} s")
        return b"".join(chunks)

    def _issuer_chain(self, request: Request, resp: httpx.Response) -> bytes | None:
        for name in request.chain_headers:
            value = resp.headers.get(name)
            if value is not None:
                return decode_chain_header(value, header=name, url=request.url)
        if request.chain_headers:
            raise CollateralFetchError(
                f"{self.service} sent {request.what} without its issuer chain",
                code="COLLATERAL_FETCH_BAD_RESPONSE",
                field=request.url,
                expected=f"header {' or '.join(request.chain_headers)}",
                actual="none of them",
                hint="the server is not speaking the Intel PCS/PCCS API v4; check the URL",
            )
        return None


def _tls_verification_failed(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(8):  # the cause chain: httpx -> httpcore -> ssl
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _error_detail(headers: Mapping[str, str]) -> str:
    """Intel PCS explains failures in ``Error-Code``/``Error-Message`` headers."""
    parts = [headers[h] for h in ("Error-Code", "Error-Message") if h in headers]
    rid = headers.get("Request-ID")
    if rid:
        parts.append(f"Request-ID {rid}")
    return f" ({'; '.join(p[:200] for p in parts)})" if parts else ""


def _ssl_context(ca_bundle: str | Path | None) -> ssl.SSLContext:
    """The default trust store (certifi, as httpx uses), plus ``ca_bundle`` when given."""
    ctx = httpx.create_ssl_context(verify=True)
    if ca_bundle is not None:
        path = Path(ca_bundle)
        try:
            ctx.load_verify_locations(cafile=str(path))
        except (OSError, ValueError) as exc:
            raise UsageError(
                f"cannot load CA bundle {path}: {exc}",
                field="--ca-bundle",
                expected="a readable PEM file of CA certificates",
                actual=str(path),
            ) from exc
    return ctx


class ServiceClient:
    """Lifecycle shared by the PCS/PCCS and KDS clients: both own one :class:`HttpGetter`."""

    _http: HttpGetter

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
