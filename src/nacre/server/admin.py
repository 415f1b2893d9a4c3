"""The admin API under ``/admin/v1``: resources, policies, admin keys and the audit log.

Every endpoint takes a signed admin JWT (:mod:`nacre.server.adminauth`) and checks its roles:
read (admin, secret-writer, auditor), write (admin, secret-writer; appraisal policies admin only),
audit (admin, auditor), admin keys (admin). Every change is in the audit log.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Security
from fastapi.security import HTTPAuthorizationCredentials

from nacre.appraisal import PolicyDocumentError, parse_policy
from nacre.errors import UsageError
from nacre.server.adminauth import AdminAuthError, AdminIdentity
from nacre.server.models import AdminKeyBody, PolicyBody, ResourceBody
from nacre.server.observe import log_event
from nacre.server.problems import Problem
from nacre.server.release import parse_release_policy
from nacre.server.service import BEARER, NacreService, b64decode
from nacre.store import (
    PolicyKind,
    ResourceInfo,
    ResourceName,
    verify_chain,
)

__all__ = ["admin_router"]

_ADMIN_ROLES_READ: Final = ("admin", "secret-writer", "auditor")
_ADMIN_ROLES_WRITE: Final = ("admin", "secret-writer")


def _resource_json(info: ResourceInfo) -> dict[str, Any]:
    return {
        "name": str(info.name),
        "policy_id": info.policy_id,
        "version": info.current_version,
        "created_at": info.created_at.isoformat(),
        "updated_at": info.updated_at.isoformat(),
    }


def _validate_policy(kind: str, document: str) -> None:
    try:
        if kind == "appraisal":
            parse_policy(document, source="document")
        elif kind == "resource":
            parse_release_policy(document)
        else:
            raise UsageError(
                "unknown policy kind", field="kind", expected="resource or appraisal", actual=kind
            )
    except PolicyDocumentError as exc:
        raise Problem.from_error(
            400, exc, kind="PolicyInvalid", title="invalid policy document"
        ) from None


def admin_router(svc: NacreService) -> APIRouter:
    router = APIRouter()

    def require(*roles: str) -> Callable[..., AdminIdentity]:
        def dependency(
            credentials: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)],
        ) -> AdminIdentity:
            if credentials is None:
                raise Problem(
                    401,
                    "admin token required",
                    kind="AdminAuth",
                    code="ADMIN_AUTH",
                    field="Authorization",
                    expected="Bearer <admin JWT>",
                    actual="none",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            try:
                identity = svc.registry.authenticate(credentials.credentials, svc.now())
            except AdminAuthError as exc:
                raise Problem.from_error(401, exc, kind="AdminAuth") from None
            if not identity.roles & set(roles):
                raise Problem(
                    403,
                    "role not allowed on this endpoint",
                    kind="AdminForbidden",
                    code="ROLE_DENIED",
                    check="role",
                    field="role",
                    expected=" | ".join(roles),
                    actual=", ".join(sorted(identity.roles)),
                )
            return identity

        return dependency

    reader = Depends(require(*_ADMIN_ROLES_READ))
    writer = Depends(require(*_ADMIN_ROLES_WRITE))
    admin_only = Depends(require("admin"))
    auditor = Depends(require("admin", "auditor"))

    @router.get("/admin/v1/resources", tags=["admin"])
    def list_resources(who: AdminIdentity = reader) -> dict[str, Any]:
        """Resources (metadata only: never the secret)."""
        return {"resources": [_resource_json(i) for i in svc.store.list_resources()]}

    @router.get("/admin/v1/resources/{repo}/{type}/{tag}", tags=["admin"])
    def get_resource(repo: str, type: str, tag: str, who: AdminIdentity = reader) -> dict[str, Any]:
        """One resource's metadata (never the secret)."""
        return _resource_json(svc.store.get_resource_info(f"{repo}/{type}/{tag}"))

    @router.put("/admin/v1/resources/{repo}/{type}/{tag}", tags=["admin"])
    def put_resource(
        repo: str, type: str, tag: str, body: ResourceBody, who: AdminIdentity = writer
    ) -> dict[str, Any]:
        """Store a new version of a resource (body: base64 data; a policy id or an inline
        release policy, stored as ``resource:<repo>:<type>:<tag>``)."""
        name = ResourceName.parse(f"{repo}/{type}/{tag}")
        data = b64decode(body.data, "data")
        policy_id = body.policy_id
        if body.policy is not None:
            if policy_id is not None:
                raise Problem(
                    400,
                    "give policy or policy_id, not both",
                    kind="BadRequest",
                    code="SCHEMA",
                    field="policy",
                    expected="one of them",
                    actual="both",
                )
            _validate_policy("resource", body.policy)
            policy_id = f"resource:{name.repo}:{name.type}:{name.tag}"
            svc.store.set_policy(policy_id, "resource", body.policy, actor=who.actor, now=svc.now())
        info = svc.store.put_resource(
            name, data, policy_id=policy_id, actor=who.actor, now=svc.now()
        )
        log_event(
            "admin.resource.put", resource=str(name), version=info.current_version, actor=who.actor
        )
        return _resource_json(info)

    @router.delete("/admin/v1/resources/{repo}/{type}/{tag}", tags=["admin"])
    def delete_resource(
        repo: str, type: str, tag: str, who: AdminIdentity = writer
    ) -> dict[str, Any]:
        name = f"{repo}/{type}/{tag}"
        svc.store.delete_resource(name, actor=who.actor, now=svc.now())
        log_event("admin.resource.delete", resource=name, actor=who.actor)
        return {"deleted": name}

    @router.get("/admin/v1/policies", tags=["admin"])
    def list_policies(kind: str | None = None, who: AdminIdentity = reader) -> dict[str, Any]:
        if kind is not None and kind not in ("resource", "appraisal"):
            raise Problem(
                400,
                "unknown policy kind",
                kind="BadRequest",
                code="SCHEMA",
                field="kind",
                expected="resource | appraisal",
                actual=kind,
            )
        policies = svc.store.list_policies(kind)  # type: ignore[arg-type]
        return {"policies": [_policy_json(p) for p in policies]}

    def _policy_json(p: Any) -> dict[str, Any]:
        return {
            "id": p.id,
            "kind": p.kind,
            "version": p.version,
            "document": p.document,
            "created_at": p.created_at.isoformat(),
            "updated_at": p.updated_at.isoformat(),
        }

    @router.get("/admin/v1/policies/{policy_id}", tags=["admin"])
    def get_policy(policy_id: str, who: AdminIdentity = reader) -> dict[str, Any]:
        return _policy_json(svc.store.get_policy(policy_id))

    @router.put("/admin/v1/policies/{policy_id}", tags=["admin"])
    def set_policy(policy_id: str, body: PolicyBody, who: AdminIdentity = writer) -> dict[str, Any]:
        """Set a resource (release) or appraisal policy; appraisal policies need role admin."""
        if body.kind == "appraisal" and "admin" not in who.roles:
            raise Problem(
                403,
                "appraisal policies need role admin",
                kind="AdminForbidden",
                code="ROLE_DENIED",
                check="role",
                field="role",
                expected="admin",
                actual=", ".join(sorted(who.roles)),
            )
        _validate_policy(body.kind, body.document)
        kind: PolicyKind = "appraisal" if body.kind == "appraisal" else "resource"
        stored = svc.store.set_policy(
            policy_id, kind, body.document, actor=who.actor, now=svc.now()
        )
        log_event(
            "admin.policy.set",
            policy_id=policy_id,
            kind=kind,
            version=stored.version,
            actor=who.actor,
        )
        return _policy_json(stored)

    @router.get("/admin/v1/audit/verify", tags=["admin"])
    def audit_verify(who: AdminIdentity = auditor) -> dict[str, Any]:
        """Recompute the audit hash chain; reports the first broken link."""
        return verify_chain(svc.store).to_json()

    @router.get("/admin/v1/audit", tags=["admin"])
    def audit_entries(
        after: int = 0, limit: int = 100, who: AdminIdentity = auditor
    ) -> dict[str, Any]:
        limit = max(1, min(limit, 1000))
        return {"entries": [e.to_json() for e in svc.store.audit_entries(after=after, limit=limit)]}

    @router.get("/admin/v1/ear-keys", tags=["admin"])
    def ear_keys(who: AdminIdentity = auditor) -> dict[str, Any]:
        """The EAR signing keys: the current one and those still published in the JWKS."""
        now = svc.now()
        ring = svc.keyring.signing_ring(now)
        current = ring.current().kid
        keys = sorted(ring.signing_keys(), key=lambda k: k.created, reverse=True)
        return {
            "current_kid": current,
            "keys": [
                {
                    "kid": k.kid,
                    "current": k.kid == current,
                    "created_at": k.created.isoformat(),
                    "signs_until": k.not_after.isoformat(),
                    "published_until": k.retire_at.isoformat(),
                }
                for k in keys
                if k.published(now)
            ],
        }

    @router.post("/admin/v1/ear-keys/rotate", tags=["admin"])
    def rotate_ear_key(who: AdminIdentity = admin_only) -> dict[str, Any]:
        """A new EAR signing key now; the old one stays in the JWKS until its tokens expire."""
        key, rotated = svc.keyring.rotate(svc.now(), actor=who.actor)
        log_event("admin.ear_key.rotate", kid=key.kid, rotated=rotated, actor=who.actor)
        return {
            "current_kid": key.kid,
            "rotated": rotated,
            "signs_until": key.not_after.isoformat(),
        }

    @router.get("/admin/v1/admin-keys", tags=["admin"])
    def list_admin_keys(who: AdminIdentity = admin_only) -> dict[str, Any]:
        return {"keys": [k.to_json() for k in svc.registry.entries()]}

    @router.put("/admin/v1/admin-keys/{name}", tags=["admin"])
    def put_admin_key(
        name: str, body: AdminKeyBody, who: AdminIdentity = admin_only
    ) -> dict[str, Any]:
        """Register an admin public key (Ed25519 or P-256 JWK) with its roles."""
        entry = svc.registry.register(
            body.jwk, tuple(body.roles), name=name, now=svc.now(), actor=who.actor
        )
        return entry.to_json()

    @router.delete("/admin/v1/admin-keys/{kid}", tags=["admin"])
    def delete_admin_key(kid: str, who: AdminIdentity = admin_only) -> dict[str, Any]:
        if not svc.registry.remove(kid, actor=who.actor, now=svc.now()):
            raise Problem(
                404,
                "no such admin key",
                kind="NotFound",
                code="NOT_FOUND",
                field="kid",
                expected="a registered key id",
                actual=kid[:64],
            )
        return {"deleted": kid}

    return router
