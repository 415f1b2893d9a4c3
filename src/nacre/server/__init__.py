"""Layer 7: the HTTP service of ``nacre serve``.

    from nacre.server import ServerConfig, create_app
    app = create_app(ServerConfig(database_url=..., data_dir=..., sealer=..., trust_sim=True,
                                  sim_trust=platform.trust_roots(),
                                  collateral_provider=platform.bundle))

Attestation (``/attestation/v1/{tee}``, EAR JWTs, JWKS), the Confidential Containers KBS
protocol v0.4.0 (``/kbs/v0/...``), the admin API (``/admin/v1/...``), ``/healthz``, ``/metrics``.
"""

from __future__ import annotations

from nacre.server.adminauth import (
    ADMIN_KEY_FILE,
    ROLES,
    AdminKeyRegistry,
    load_admin_key,
    public_jwk_of,
    sign_admin_token,
)
from nacre.server.app import create_app
from nacre.server.config import (
    DEFAULT_SESSION_TTL,
    DEFAULT_TOKEN_TTL,
    MAX_ADMIN_BODY_BYTES,
    MAX_REQUEST_BYTES,
    ServerConfig,
)
from nacre.server.kbs import KBS_PROTOCOL_VERSION, KBS_SESSION_COOKIE
from nacre.server.problems import PROBLEM_CONTENT_TYPE, Problem
from nacre.server.release import evaluate_release, parse_release_policy
from nacre.server.service import NacreService

__all__ = [
    "ADMIN_KEY_FILE",
    "DEFAULT_SESSION_TTL",
    "DEFAULT_TOKEN_TTL",
    "KBS_PROTOCOL_VERSION",
    "KBS_SESSION_COOKIE",
    "MAX_ADMIN_BODY_BYTES",
    "MAX_REQUEST_BYTES",
    "PROBLEM_CONTENT_TYPE",
    "ROLES",
    "AdminKeyRegistry",
    "NacreService",
    "Problem",
    "ServerConfig",
    "create_app",
    "evaluate_release",
    "load_admin_key",
    "parse_release_policy",
    "public_jwk_of",
    "sign_admin_token",
]
