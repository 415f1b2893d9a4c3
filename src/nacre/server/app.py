"""``create_app(config)``: the attestation service, the KBS v0.4.0 key broker and the admin API.

Endpoints (OpenAPI at ``/openapi.json``):

- ``GET /healthz``, ``GET /metrics`` (Prometheus), ``GET /.well-known/jwks.json``
- ``POST /attestation/v1/{tee}`` evidence -> EAR JWT
- ``POST /kbs/v0/auth``, ``POST /kbs/v0/attest``, ``GET /kbs/v0/resource/{repo}/{type}/{tag}``
- ``/admin/v1/...`` resources, policies, admin keys, audit (signed admin JWTs with roles)
- ``/kms/v1/keys...`` HSM-like keys: management (admin JWT) and use (admin JWT or EAR token)

No handshake state is kept in memory: sessions and their single-use nonces are rows in the
database, and so are the EAR signing keyring and the admin keys (envelope-encrypted under the KEK,
which exists only sealed in ``kek.json``), so any replica finishes a handshake another began.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from nacre.errors import LimitExceededError, NacreError, UsageError
from nacre.server.admin import admin_router
from nacre.server.adminauth import AdminAuthError
from nacre.server.attestation_api import attestation_router
from nacre.server.config import ServerConfig
from nacre.server.kbs import kbs_router
from nacre.server.kms_api import kms_router
from nacre.server.maintenance import Maintenance
from nacre.server.observe import BodyLimitMiddleware, log_event
from nacre.server.problems import Problem, problem_response
from nacre.server.service import NacreService
from nacre.store import ConflictError, NotFoundError

__all__ = ["create_app"]


def create_app(config: ServerConfig) -> FastAPI:
    """The ASGI app of one ``nacre serve`` instance (opens the store; closed on shutdown)."""
    svc = NacreService(config)

    jobs = (
        None
        if config.maintenance_interval is None
        else Maintenance(svc.store, interval=config.maintenance_interval, now_fn=svc.now)
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        log_event("server.start", trust_sim=config.trust_sim)
        if jobs is not None:
            jobs.start()
        try:
            yield
        finally:
            if jobs is not None:
                jobs.stop()
            svc.close()

    app = FastAPI(
        title="nacre",
        version="0.1.0",
        summary="Attestation service, KBS v0.4.0 key broker and admin API",
        lifespan=lifespan,
        # nacre has its own Prometheus metrics and JSON logs. FastAPI's OpenTelemetry bridge,
        # left on, asks the global OTel providers (an environment lookup each) on every request
        # for nothing: ~4% of the server's CPU under KBS load.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.nacre = svc
    app.state.maintenance = jobs

    def limit_for(path: str) -> int:
        return (
            config.max_admin_body_bytes if path.startswith("/admin/") else config.max_request_bytes
        )

    app.add_middleware(BodyLimitMiddleware, limit_for=limit_for, metrics=svc.metrics)

    def rid(request: Request) -> str | None:
        value = request.scope.get("state", {}).get("request_id")
        return str(value) if value is not None else None

    # -- error handlers: RFC 7807 everywhere, never a 500 for bad input --------------------------

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> Response:
        log_event(
            "http.problem",
            logging.INFO,
            status=exc.status,
            kind=exc.kind,
            code=exc.code,
            check=exc.check,
            request_id=rid(request),
        )
        return problem_response(exc, rid(request))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        errors = exc.errors()
        first: Mapping[str, Any] = errors[0] if errors else {}
        kbs = request.url.path.startswith("/kbs/")
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        malformed = first.get("type") == "json_invalid" or (
            first.get("type") == "model_attributes_type"
            and not loc
            and isinstance(first.get("input"), bytes | str)
        )
        if malformed:
            problem = Problem(
                400,
                "malformed JSON",
                kind="SerdeError" if kbs else "MalformedJson",
                kbs=kbs,
                code="JSON_INVALID",
                field="body",
                expected="a JSON document",
                actual=str(first.get("ctx", {}).get("error", first.get("msg", ""))),
            )
        else:
            problem = Problem(
                400,
                "request body does not match the schema",
                kind="SerdeError" if kbs else "BadRequest",
                kbs=kbs,
                code="SCHEMA",
                field=".".join(loc) or "body",
                expected=str(first.get("msg", "")),
                actual=str(first.get("type", "")),
                extra={
                    "errors": [
                        {
                            "field": ".".join(str(p) for p in e.get("loc", ()) if p != "body"),
                            "message": str(e.get("msg", "")),
                        }
                        for e in errors[:20]
                    ]
                },
            )
        return problem_response(problem, rid(request))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        kind = {404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status_code, "HttpError")
        return problem_response(
            Problem(exc.status_code, str(exc.detail), kind=kind, code=kind.upper()), rid(request)
        )

    @app.exception_handler(NacreError)
    async def _nacre(request: Request, exc: NacreError) -> Response:
        if isinstance(exc, NotFoundError):
            status, kind = 404, "NotFound"
        elif isinstance(exc, ConflictError):
            status, kind = 409, "Conflict"
        elif isinstance(exc, LimitExceededError):
            status, kind = 413, "PayloadTooLarge"
        elif isinstance(exc, AdminAuthError):
            status, kind = 401, "AdminAuth"
        elif isinstance(exc, UsageError):
            status, kind = 400, "BadRequest"
        else:
            log_event("http.error", logging.ERROR, code=exc.code, request_id=rid(request))
            status, kind = 500, "InternalError"
        return problem_response(Problem.from_error(status, exc, kind=kind), rid(request))

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> Response:
        logging.getLogger("nacre.server").exception(
            "unhandled error", extra={"event": "http.crash", "request_id": rid(request)}
        )
        return problem_response(
            Problem(500, "internal error", kind="InternalError", code="INTERNAL"), rid(request)
        )

    # -- public -----------------------------------------------------------------------------------

    @app.get("/healthz", tags=["service"])
    def healthz() -> dict[str, str]:
        """200 once the service serves."""
        return {"status": "ok"}

    @app.get("/metrics", tags=["service"], response_class=Response)
    def metrics() -> Response:
        """Prometheus metrics."""
        return Response(generate_latest(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.include_router(attestation_router(svc))
    app.include_router(kbs_router(svc))
    app.include_router(admin_router(svc))
    app.include_router(kms_router(svc))
    return app
