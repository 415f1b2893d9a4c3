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

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from nacre.errors import NacreError
from nacre.server.admin import admin_router
from nacre.server.attestation_api import attestation_router
from nacre.server.config import ServerConfig
from nacre.server.kbs import kbs_handlers
from nacre.server.kbs_lane import KBS_PREFIX, KbsLane
from nacre.server.kbs_openapi import add_kbs_paths
from nacre.server.kms_api import kms_router
from nacre.server.maintenance import Maintenance
from nacre.server.observe import (
    BodyLimitMiddleware,
    crash_answer,
    error_answer,
    log_event,
    problem_answer,
)
from nacre.server.problems import Problem, problem_response, validation_problem
from nacre.server.service import NacreService

__all__ = ["NacreApp", "create_app"]


class NacreApp(FastAPI):
    """The FastAPI app, with the KBS routes (``/kbs/v0/...``) served by a lane in front of it
    (:mod:`nacre.server.kbs_lane`: the hot path of every handshake, without FastAPI's per-request
    machinery) and described in the same OpenAPI document."""

    kbs_lane: KbsLane | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        lane = self.kbs_lane
        if lane is not None and scope["type"] == "http" and scope["path"].startswith(KBS_PREFIX):
            await lane(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            self.openapi_schema = add_kbs_paths(super().openapi())
        return self.openapi_schema


def create_app(config: ServerConfig) -> NacreApp:
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

    app = NacreApp(
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
        return problem_answer(exc, rid(request))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        problem = validation_problem(exc.errors(), kbs=request.url.path.startswith("/kbs/"))
        return problem_response(problem, rid(request))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        kind = {404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status_code, "HttpError")
        return problem_response(
            Problem(exc.status_code, str(exc.detail), kind=kind, code=kind.upper()), rid(request)
        )

    @app.exception_handler(NacreError)
    async def _nacre(request: Request, exc: NacreError) -> Response:
        return error_answer(exc, rid(request))

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> Response:
        return crash_answer(exc, rid(request))

    # -- public -----------------------------------------------------------------------------------

    @app.get("/healthz", tags=["service"])
    def healthz() -> dict[str, str]:
        """200 once the service serves."""
        return {"status": "ok"}

    @app.get("/metrics", tags=["service"], response_class=Response)
    def metrics() -> Response:
        """Prometheus metrics."""
        return Response(generate_latest(svc.metrics.exposition), media_type=CONTENT_TYPE_LATEST)

    app.include_router(attestation_router(svc))
    # SQLite: the KBS handlers run on the event loop (nacre.server.kbs_lane.KbsLane._run);
    # PostgreSQL: on worker threads, which overlap its network round trips.
    inline = svc.store.engine.dialect.name == "sqlite"
    app.kbs_lane = KbsLane(
        svc,
        kbs_handlers(svc, deferred_audit=inline),
        limit=config.max_request_bytes,
        inline=inline,
    )
    app.include_router(admin_router(svc))
    app.include_router(kms_router(svc))
    return app
