"""Observability: Prometheus metrics (one registry per app), JSON logs, the edge middleware.

The middleware is plain ASGI (no buffering of responses): it gives every request an id
(``X-Request-Id``), refuses a body over the route's named limit with 413 before the route reads
it, counts requests and their latency by route template, and logs one JSON line per request.
Logs carry method, route, status, duration and request id: never bodies, tokens or secrets.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, values
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nacre.errors import NacreError
from nacre.server.json_logs import LOGGER_NAME, JsonLogFormatter, log_event
from nacre.server.problems import Problem, error_problem, problem_response

__all__ = [
    "LOGGER_NAME",
    "BodyLimitMiddleware",
    "JsonLogFormatter",
    "Metrics",
    "body_too_large",
    "crash_answer",
    "error_answer",
    "log_event",
    "problem_answer",
]

_log = logging.getLogger(LOGGER_NAME)


class Metrics:
    """The service's metrics, in ``registry`` (one per app). ``exposition`` is what ``/metrics``
    renders: ``registry`` itself in a single process; under prometheus_client's multiprocess mode
    (``PROMETHEUS_MULTIPROC_DIR`` set when the process started, as ``nacre serve --workers``
    does for its workers) every process writes its values to its own files in that directory
    and ``exposition`` collects them all, so counters and histograms are sums over the
    processes (including ones that have exited)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        #: prometheus_client's multiprocess directory, or None (one process). The mode is fixed
        #: when prometheus_client is imported: a variable set later changes nothing here either.
        self.multiprocess_dir = (
            os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
            if values.ValueClass is not values.MutexValue
            else None
        )
        self.exposition = self.registry
        if self.multiprocess_dir is not None:
            from prometheus_client.multiprocess import MultiProcessCollector

            self.exposition = CollectorRegistry()
            MultiProcessCollector(self.exposition, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]
        self.requests = Counter(
            "nacre_http_requests",
            "HTTP requests",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "nacre_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )
        self.attestations = Counter(
            "nacre_attestations",
            "Attestations by API, TEE and EAR status (or refusal)",
            ["api", "tee", "status"],
            registry=self.registry,
        )
        self._request_children: dict[tuple[str, str, str], Any] = {}
        self._latency_children: dict[tuple[str, str], Any] = {}
        self.releases = Counter(
            "nacre_kbs_resource_requests",
            "KBS resource requests by outcome (released, denied, ...)",
            ["outcome"],
            registry=self.registry,
        )

    def observe_request(self, method: str, route: str, status: str, seconds: float) -> None:
        """Count one request and its latency (label children cached: ``labels()`` validates and
        locks on every call)."""
        key = (method, route, status)
        counter = self._request_children.get(key)
        if counter is None:
            counter = self._request_children[key] = self.requests.labels(method, route, status)
        counter.inc()
        histogram = self._latency_children.get((method, route))
        if histogram is None:
            histogram = self._latency_children[(method, route)] = self.latency.labels(method, route)
        histogram.observe(seconds)


def _route_of(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return str(path) if path else "unmatched"


def body_too_large(limit: int, actual: str) -> Problem:
    """The 413 for a request body over ``limit`` bytes (``actual``: what was seen)."""
    return Problem(
        413,
        "request body over the limit",
        kind="PayloadTooLarge",
        code="LIMIT_EXCEEDED",
        field="body",
        expected=f"<= {limit} bytes",
        actual=actual,
        extra={"limit": "max_request_bytes" if limit < 1024 * 1024 else "max_admin_body_bytes"},
    )


def problem_answer(problem: Problem, request_id: str | None) -> JSONResponse:
    """The RFC 7807 answer to ``problem``, logged with its status, kind, code and check."""
    log_event(
        "http.problem",
        logging.INFO,
        status=problem.status,
        kind=problem.kind,
        code=problem.code,
        check=problem.check,
        request_id=request_id,
    )
    return problem_response(problem, request_id)


def error_answer(exc: NacreError, request_id: str | None) -> JSONResponse:
    """The answer to a :class:`NacreError` no route turned into a problem (a 500, logged as an
    error, when it is the server's fault)."""
    problem, internal = error_problem(exc)
    if internal:
        log_event("http.error", logging.ERROR, code=exc.code, request_id=request_id)
    return problem_response(problem, request_id)


def crash_answer(exc: BaseException, request_id: str | None) -> JSONResponse:
    """The 500 for an exception nobody expected: the traceback goes to the log, not the client."""
    _log.error(
        "unhandled error", exc_info=exc, extra={"event": "http.crash", "request_id": request_id}
    )
    return problem_response(
        Problem(500, "internal error", kind="InternalError", code="INTERNAL"), request_id
    )


class BodyLimitMiddleware:
    """Request id, body size limit (413 RFC 7807), metrics and the access log."""

    def __init__(self, app: ASGIApp, *, limit_for: Callable[[str], int], metrics: Metrics) -> None:
        self.app = app
        self.limit_for = limit_for
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = secrets.token_hex(8)
        scope.setdefault("state", {})["request_id"] = request_id
        start = time.perf_counter()
        status_holder = [500]
        limit = self.limit_for(str(scope.get("path", "")))

        def too_large(actual: str) -> Problem:
            return body_too_large(limit, actual)

        exceeded = False

        async def send_wrapper(message: Message) -> None:
            if exceeded:
                return  # the app's answer to a cut-off body is replaced by the 413 below
            if message["type"] == "http.response.start":
                status_holder[0] = int(message["status"])
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        declared = None
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
        try:
            if declared is not None and declared > limit:
                await problem_response(too_large(f"{declared} bytes"), request_id)(
                    scope, receive, send_wrapper
                )
                return
            received = 0

            async def limited_receive() -> Message:
                nonlocal received, exceeded
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > limit:
                        exceeded = True
                        raise too_large(f"> {limit} bytes (streamed)")
                return message

            try:
                await self.app(scope, limited_receive, send_wrapper)
            except Problem:
                if not exceeded:
                    raise
            if exceeded:
                exceeded = False
                await problem_response(too_large(f"> {limit} bytes (streamed)"), request_id)(
                    scope, receive, send_wrapper
                )
        finally:
            elapsed = time.perf_counter() - start
            route = _route_of(scope)
            method = str(scope.get("method", ""))
            self.metrics.observe_request(method, route, str(status_holder[0]), elapsed)
            log_event(
                "http.request",
                method=method,
                route=route,
                path=str(scope.get("path", ""))[:256],
                status=status_holder[0],
                duration_ms=round(elapsed * 1000, 3),
                request_id=request_id,
            )
