"""The OpenAPI description of the KBS routes, which :class:`nacre.server.kbs_lane.KbsLane`
serves outside FastAPI's routing: added to the document FastAPI generates for the others."""

from __future__ import annotations

from typing import Any, Final

from pydantic.json_schema import models_json_schema

from nacre.server.kbs import KBS_SESSION_COOKIE
from nacre.server.kbs_lane import ATTEST, AUTH, RESOURCE
from nacre.server.models import KbsAttestRequest, KbsAuthRequest
from nacre.server.problems import PROBLEM_CONTENT_TYPE

__all__ = ["add_kbs_paths"]

_REF: Final = "#/components/schemas/{model}"
_PROBLEM: Final = {
    "title": "Problem",
    "description": "RFC 7807 problem details; KBS routes use Trustee's error type URIs.",
    "type": "object",
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {"type": "string"},
        "check": {"type": "string"},
        "field": {"type": "string"},
        "expected": {"type": "string"},
        "actual": {"type": "string"},
        "request_id": {"type": "string"},
    },
    "required": ["type", "title", "status", "detail"],
}


def _problems(*statuses: tuple[int, str]) -> dict[str, Any]:
    return {
        str(status): {
            "description": why,
            "content": {PROBLEM_CONTENT_TYPE: {"schema": {"$ref": _REF.format(model="Problem")}}},
        }
        for status, why in statuses
    }


def _json_body(model: str) -> dict[str, Any]:
    return {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": _REF.format(model=model)}}},
    }


def _ok(description: str, schema: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "200": {
            "description": description,
            "content": {"application/json": {"schema": schema}},
            **extra,
        }
    }


_COOKIE_PARAM: Final = {
    "name": KBS_SESSION_COOKIE,
    "in": "cookie",
    "required": False,
    "schema": {"type": "string"},
    "description": "The session set by /kbs/v0/auth.",
}


def _paths() -> dict[str, Any]:
    too_large = (413, "request body over the limit")
    return {
        AUTH: {
            "post": {
                "tags": ["kbs"],
                "operationId": "kbs_auth",
                "summary": "Kbs Auth",
                "description": "RCAR request: a session (cookie `kbs-session-id`) and its "
                "challenge nonce.",
                "requestBody": _json_body("KbsAuthRequest"),
                "responses": {
                    **_ok(
                        "The challenge; the session cookie is set.",
                        {
                            "type": "object",
                            "properties": {
                                "nonce": {"type": "string"},
                                "extra-params": {"type": "string"},
                            },
                            "required": ["nonce", "extra-params"],
                        },
                        headers={"Set-Cookie": {"schema": {"type": "string"}}},
                    ),
                    **_problems((400, "protocol version, TEE or body refused"), too_large),
                },
            }
        },
        ATTEST: {
            "post": {
                "tags": ["kbs"],
                "operationId": "kbs_attest",
                "summary": "Kbs Attest",
                "description": "RCAR attestation: evidence binding the TEE key and the nonce -> "
                "EAR token.",
                "parameters": [_COOKIE_PARAM],
                "requestBody": _json_body("KbsAttestRequest"),
                "responses": {
                    **_ok(
                        "The attestation token (EAR JWT).",
                        {
                            "type": "object",
                            "properties": {"token": {"type": "string"}},
                            "required": ["token"],
                        },
                    ),
                    **_problems(
                        (400, "malformed body, evidence or TEE key"),
                        (401, "no, expired or replayed session"),
                        (403, "evidence not bound to the key, or refused by a policy"),
                        too_large,
                    ),
                },
            }
        },
        RESOURCE: {
            "get": {
                "tags": ["kbs"],
                "operationId": "kbs_resource",
                "summary": "Kbs Resource",
                "description": "The resource as a flattened JWE to the attested TEE key, if its "
                "release policy allows. Authorised by the Bearer EAR token, else by the "
                "attested session's cookie.",
                "security": [{"HTTPBearer": []}, {}],
                "parameters": [
                    *(
                        {"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
                        for n in ("repo", "type", "tag")
                    ),
                    _COOKIE_PARAM,
                ],
                "responses": {
                    **_ok(
                        "Flattened JWE (ECDH-ES+A256KW or RSA-OAEP-256, A256GCM).",
                        {"type": "object", "additionalProperties": True},
                    ),
                    **_problems(
                        (400, "the attested TEE key cannot receive a JWE"),
                        (401, "no attested session or a bad token"),
                        (403, "the release policy denies this resource"),
                        (404, "no such resource"),
                    ),
                },
            }
        },
    }


def add_kbs_paths(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` (an OpenAPI document FastAPI generated) with the KBS routes added."""
    _, schemas = models_json_schema(
        [(KbsAuthRequest, "validation"), (KbsAttestRequest, "validation")], ref_template=_REF
    )
    components = document.setdefault("components", {})
    known = components.setdefault("schemas", {})
    known.update(schemas.get("$defs", {}))
    known.setdefault("Problem", _PROBLEM)
    security = components.setdefault("securitySchemes", {})
    security.setdefault("HTTPBearer", {"type": "http", "scheme": "bearer"})
    document.setdefault("paths", {}).update(_paths())
    return document
