"""The HTTP side of the KBS routes (``/kbs/v0/...``), served in front of the FastAPI app.

A KBS handshake is three requests, and through FastAPI's stack (its middleware, routing,
dependency resolution and response handling) each cost about 0.25 ms of CPU before the handler
ran: a sixth of the server's work per handshake. This lane does for these three routes what that
stack did, and nothing more: request id, body limit (413), JSON parsing and validation with the
same pydantic models, the session cookie and the Bearer token, the handler on the service's
worker threads, RFC 7807 problems for every error (the same bodies and statuses as every other
route), the access log (one line per request, carrying the handler's outcome: the TEE and EAR
status of an attestation, the resource and version of a release) and the request metrics.
Everything else goes to FastAPI, which also describes these routes in the OpenAPI document
(:mod:`nacre.server.kbs_openapi`).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import cookie_parser
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from nacre.errors import NacreError
from nacre.server.deferred_sync import DeferredSync
from nacre.server.kbs import KBS_SESSION_COOKIE, KbsHandlers
from nacre.server.models import KbsAttestRequest, KbsAuthRequest
from nacre.server.observe import (
    Metrics,
    body_too_large,
    crash_answer,
    error_answer,
    log_event,
    problem_answer,
)
from nacre.server.problems import Problem, validation_problem
from nacre.server.service import NacreService

__all__ = ["KBS_PREFIX", "KbsLane"]

#: Every path under this prefix is the lane's (unknown ones get its 404).
KBS_PREFIX: Final = "/kbs/v0/"
AUTH: Final = "/kbs/v0/auth"
ATTEST: Final = "/kbs/v0/attest"
RESOURCE: Final = "/kbs/v0/resource/{repo}/{type}/{tag}"
_RESOURCE_PREFIX: Final = "/kbs/v0/resource/"

_Model = TypeVar("_Model", bound=BaseModel)
_Call = Callable[[Scope, Receive], Awaitable[Response]]


class _ClientGoneError(Exception):
    """The client went away before its request body arrived: nothing to answer."""


class KbsLane:
    """ASGI app for the paths under :data:`KBS_PREFIX`."""

    def __init__(
        self, svc: NacreService, handlers: KbsHandlers, *, limit: int, inline: bool
    ) -> None:
        """``inline``: run the handlers on the event loop (their audit entries deferred, see
        :meth:`_run`), else on the service's worker threads."""
        self._svc = svc
        self._handlers = handlers
        self._limit = limit
        self._inline = inline
        self._metrics: Metrics = svc.metrics
        self._durable = DeferredSync(self._sync_store, svc.executor)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = secrets.token_hex(8)
        start = time.perf_counter()
        method = str(scope.get("method", ""))
        path = str(scope.get("path", ""))
        route = "unmatched"
        status = 500
        outcome: dict[str, Any] | None = None
        try:
            try:
                route, call = self._route(method, path)
                response = await call(scope, receive)
            except _ClientGoneError:
                status = 499  # logged as nginx does; no response can be sent
                return
            except Problem as problem:
                response = problem_answer(problem, request_id)
            except NacreError as exc:
                response = error_answer(exc, request_id)
            except Exception as exc:
                response = crash_answer(exc, request_id)
            response.headers.append("x-request-id", request_id)
            status = response.status_code
            outcome = getattr(response, "log_fields", None)
            await response(scope, receive, send)
        finally:
            elapsed = time.perf_counter() - start
            self._metrics.observe_request(method, route, str(status), elapsed)
            log_event(
                "http.request",
                method=method,
                route=route,
                path=path[:256],
                status=status,
                duration_ms=round(elapsed * 1000, 3),
                request_id=request_id,
                **(outcome or {}),
            )

    # -- routing ----------------------------------------------------------------------------------

    def _route(self, method: str, path: str) -> tuple[str, _Call]:
        """The route template and its call, or the 404 / 405 problem FastAPI would answer."""
        if path == AUTH:
            return AUTH, self._method(method, "POST", self._auth)
        if path == ATTEST:
            return ATTEST, self._method(method, "POST", self._attest)
        if path.startswith(_RESOURCE_PREFIX):
            parts = path[len(_RESOURCE_PREFIX) :].split("/")
            if len(parts) == 3 and all(parts):
                repo, rtype, tag = parts

                async def resource(scope: Scope, _receive: Receive) -> Response:
                    return await self._resource(scope, repo, rtype, tag)

                return RESOURCE, self._method(method, "GET", resource)
        raise Problem(404, "Not Found", kind="NotFound", code="NOTFOUND")

    @staticmethod
    def _method(method: str, allowed: str, call: _Call) -> _Call:
        if method != allowed:
            raise Problem(
                405,
                "Method Not Allowed",
                kind="MethodNotAllowed",
                code="METHODNOTALLOWED",
                headers={"allow": allowed},
            )
        return call

    # -- the three routes -------------------------------------------------------------------------

    async def _auth(self, scope: Scope, receive: Receive) -> Response:
        body = await self._parse(scope, receive, KbsAuthRequest)
        return await self._run(self._handlers.auth, body)

    async def _attest(self, scope: Scope, receive: Receive) -> Response:
        body = await self._parse(scope, receive, KbsAttestRequest)
        return await self._run(self._handlers.attest, _cookie(scope), body)

    async def _resource(self, scope: Scope, repo: str, rtype: str, tag: str) -> Response:
        return await self._run(
            self._handlers.resource, repo, rtype, tag, _cookie(scope), _bearer(scope)
        )

    async def _run(self, fn: Callable[..., Response], *args: Any) -> Response:
        """``fn(*args)``: on a worker thread, or inline on the event loop.

        Inline is for SQLite, where a handler never waits for anything but the disk: handing
        each request to a thread and back cost more CPU than the handler itself (GIL hand-offs
        between the loop and the workers). The one wait on the disk, the fsync that makes an
        audit entry durable, is moved off the loop: the handlers commit their entries without
        it, and before the answer (a release, a denial) leaves, a worker thread syncs the WAL,
        one fsync (and one thread hop) for every request waiting at that moment
        (:class:`nacre.server.deferred_sync.DeferredSync`). If that fails, the answer is a 500.
        """
        if not self._inline:
            return await self._svc.offload(fn, *args)
        store = self._svc.store
        mark = store.deferred_mark()
        try:
            return fn(*args)
        finally:
            if store.deferred_mark() != mark:
                await self._durable.wait()

    def _sync_store(self) -> None:
        self._svc.store.sync_deferred()

    # -- request parts ----------------------------------------------------------------------------

    async def _parse(self, scope: Scope, receive: Receive, model: type[_Model]) -> _Model:
        """The body as ``model``: a 413 over the limit, a 400 (JSON_INVALID or SCHEMA) as the
        other routes answer, without reading further than the limit."""
        content_type = _header(scope, b"content-type")
        body = await self._body(scope, receive)
        if content_type is not None and not _is_json(content_type):
            raise validation_problem(
                [{"type": "json_invalid", "msg": f"content-type {content_type[:80]} is not JSON"}],
                kbs=True,
            )
        try:
            return model.model_validate_json(body)
        except ValidationError as exc:
            raise validation_problem(exc.errors(include_url=False), kbs=True) from None

    async def _body(self, scope: Scope, receive: Receive) -> bytes:
        declared = _header(scope, b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                size = -1
            if size > self._limit:
                raise body_too_large(self._limit, f"{size} bytes")
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGoneError
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > self._limit:
                raise body_too_large(self._limit, f"> {self._limit} bytes (streamed)")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def _is_json(content_type: str) -> bool:
    """``application/json`` or ``application/*+json`` (parameters ignored), as FastAPI reads."""
    mime = content_type.split(";", 1)[0].strip().lower()
    main, _, sub = mime.partition("/")
    return main == "application" and (sub == "json" or sub.endswith("+json"))


def _cookie(scope: Scope) -> str | None:
    header = _header(scope, b"cookie")
    if not header:
        return None
    return cookie_parser(header).get(KBS_SESSION_COOKIE) or None


def _bearer(scope: Scope) -> str | None:
    """The token of ``Authorization: Bearer <token>``; None for no header or another scheme
    (the session cookie then decides), as FastAPI's HTTPBearer(auto_error=False) reads it."""
    header = _header(scope, b"authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token
