"""The key management API under ``/kms/v1``: HSM-like keys used inside the service.

Two kinds of caller, both as ``Authorization: Bearer <token>``:

- an **admin JWT** (:mod:`nacre.server.adminauth`; audience ``nacre-admin``) becomes a principal
  with its registered roles: ``admin`` manages keys, ``key-user`` (and ``admin``) uses them when
  the key's policy allows principals (``admin_use: true``, or no policy), ``auditor`` lists;
- an **EAR token** this service issued (``/kbs/v0/attest`` or ``/attestation/v1/{tee}``) becomes
  an attested workload, allowed to use a key when the key's policy admits its claims, and the only
  caller a key is exported to (flattened JWE to the token's ``tee-pubkey``).

Binary members are base64 in JSON. Errors are RFC 7807: 401 no or bad credentials, 403 the KMS
denied (``check`` names the failed check: ``role``, ``ear.status``, ``policy.rule``,
``policy.admin_use``, ``exportable`` ...), 404 no such key or policy, 409 the key's state forbids
it, 400 bad input, 413 too large. The KMS library audits every operation.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, Depends, Security
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel, ConfigDict, Field

from nacre.errors import LimitExceededError, NacreError, UsageError
from nacre.kms import (
    AccessDeniedError,
    Caller,
    KeyStateError,
    Kms,
    KmsError,
)
from nacre.server.adminauth import ADMIN_AUDIENCE, AdminAuthError
from nacre.server.observe import log_event
from nacre.server.problems import Problem
from nacre.server.service import BEARER, NacreService, b64decode
from nacre.store import ConflictError, KeyInfo, KeyType, LifecycleError, NotFoundError
from nacre.token import TokenError

__all__ = [
    "CreateKeyBody",
    "DataKeyBody",
    "DecryptBody",
    "EncryptBody",
    "ImportKeyBody",
    "ScheduleDeleteBody",
    "SignBody",
    "UnwrapBody",
    "VerifyBody",
    "WrapBody",
    "kms_router",
]

_PREFIX: Final = "/kms/v1"
_B64: Final = "base64"


# -- bodies -------------------------------------------------------------------------------------


class CreateKeyBody(BaseModel):
    """``POST /kms/v1/keys``: a new key generated inside the service (``name`` is its id)."""

    model_config = ConfigDict(extra="forbid")

    type: KeyType
    name: str = Field(min_length=1, max_length=128)
    policy_id: str | None = None
    exportable: bool = False
    rotation_days: int | None = Field(default=None, ge=1)
    expires_at: datetime | None = None


class ImportKeyBody(BaseModel):
    """``POST /kms/v1/import``: a key made from existing material, which arrives only wrapped to
    the service's import key (``GET /kms/v1/import/wrapping-key``), never in clear."""

    model_config = ConfigDict(extra="forbid")

    type: KeyType
    name: str = Field(min_length=1, max_length=128)
    wrapped: dict[str, Any] = Field(
        description="flattened JWE (ECDH-ES+A256KW, A256GCM) to the import wrapping key; "
        "plaintext: the raw 32 bytes (AES-256) or a PKCS#8 DER private key"
    )
    policy_id: str | None = None
    exportable: bool = False
    rotation_days: int | None = Field(default=None, ge=1)
    expires_at: datetime | None = None


class ScheduleDeleteBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    days: int = Field(description="waiting period before destruction (7..30)")


class EncryptBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    plaintext: str = Field(description=_B64)
    aad: str = Field(default="", description=_B64)


class DecryptBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ciphertext: str = Field(description=_B64)
    aad: str = Field(default="", description=_B64)


class DataKeyBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    aad: str = Field(default="", description=_B64)
    size: int = Field(default=32, description="16, 24 or 32 bytes")


class WrapBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key_material: str = Field(description=_B64)


class UnwrapBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    wrapped: str = Field(description=_B64)


class SignBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: str = Field(description=_B64)
    prehashed: bool = False
    low_s: bool = False
    deterministic: bool = False


class VerifyBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: str = Field(description=_B64)
    signature: str = Field(description=_B64)
    version: int | None = None
    prehashed: bool = False
    signature_format: Literal["der", "raw"] = "der"
    require_low_s: bool = False


# -- helpers ------------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _key_json(info: KeyInfo) -> dict[str, Any]:
    return info.to_json()


def _token_audience(token: str) -> object:
    """The ``aud`` of a compact JWS, unverified (only to choose the verifier)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = parts[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (binascii.Error, ValueError):
        return None
    return claims.get("aud") if isinstance(claims, dict) else None


def _problem(exc: NacreError) -> Problem:
    """The RFC 7807 answer to a KMS (or store) refusal."""
    if isinstance(exc, AccessDeniedError):
        return Problem.from_error(403, exc, kind="KmsAccessDenied", check=exc.field)
    if isinstance(exc, KeyStateError | LifecycleError):
        return Problem.from_error(409, exc, kind="KeyState", check=exc.field)
    if isinstance(exc, NotFoundError):
        return Problem.from_error(404, exc, kind="NotFound")
    if isinstance(exc, ConflictError):
        return Problem.from_error(409, exc, kind="Conflict")
    if isinstance(exc, LimitExceededError):
        return Problem.from_error(413, exc, kind="PayloadTooLarge")
    if isinstance(exc, KmsError | UsageError):
        return Problem.from_error(400, exc, kind="BadRequest", check=exc.field)
    return Problem.from_error(500, exc, kind="InternalError")


def _check_aware(expires_at: datetime | None) -> None:
    if expires_at is not None and expires_at.tzinfo is None:
        raise Problem(
            400,
            "expires_at needs a time zone",
            kind="BadRequest",
            code="SCHEMA",
            field="expires_at",
            expected="an ISO-8601 time with offset",
            actual=expires_at.isoformat(),
        )


@contextmanager
def _kms_errors() -> Iterator[None]:
    try:
        yield
    except NacreError as exc:
        raise _problem(exc) from None


def kms_router(svc: NacreService) -> APIRouter:
    router = APIRouter()
    kms = Kms(svc.store, now_fn=svc.now)

    def caller(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)],
    ) -> Caller:
        """An admin JWT -> a principal with its roles; an EAR token -> an attested workload."""
        if credentials is None:
            raise Problem(
                401,
                "a token is required",
                kind="Unauthenticated",
                code="AUTH_REQUIRED",
                field="Authorization",
                expected="Bearer <admin JWT> or Bearer <EAR token>",
                actual="none",
                headers={"WWW-Authenticate": "Bearer"},
            )
        token = credentials.credentials
        now = svc.now()
        aud = _token_audience(token)
        if aud == ADMIN_AUDIENCE or (isinstance(aud, list) and ADMIN_AUDIENCE in aud):
            try:
                identity = svc.registry.authenticate(token, now)
            except AdminAuthError as exc:
                raise Problem.from_error(401, exc, kind="AdminAuth", check="token") from None
            return Caller.principal(identity.actor, identity.roles)
        try:
            claims = svc.keyring.verify(token, now)
        except TokenError as exc:
            raise Problem.from_error(401, exc, kind="TokenVerifierError", check="token") from None
        return Caller.workload(claims)

    who = Depends(caller)

    def data(text: str, field: str) -> bytes:
        return b64decode(text, field) if text else b""

    def use(op: str, key_id: str, c: Caller, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        with _kms_errors():
            result = run()
        log_event("kms.use", op=op, key_id=key_id, attested=c.attested)
        return result

    # -- management ------------------------------------------------------------------------------

    @router.post(f"{_PREFIX}/keys", tags=["kms"])
    def create_key(body: CreateKeyBody, c: Caller = who) -> dict[str, Any]:
        """Create a key (role admin); its material is generated here and never leaves in clear."""
        _check_aware(body.expires_at)
        with _kms_errors():
            info = kms.create_key(
                c,
                body.type,
                name=body.name,
                policy_id=body.policy_id,
                exportable=body.exportable,
                rotation_days=body.rotation_days,
                expires_at=body.expires_at,
            )
        log_event("kms.key.create", key_id=info.id, type=info.type, actor=c.subject)
        return _key_json(info)

    @router.get(f"{_PREFIX}/import/wrapping-key", tags=["kms"])
    def import_wrapping_key(c: Caller = who) -> dict[str, Any]:
        """The public JWK (EC P-384) to wrap import material to (role admin; made on first use)."""
        with _kms_errors():
            w = kms.import_wrapping_key(c)
        return {
            "key_id": w.key_id,
            "version": w.version,
            "jwk": dict(w.jwk),
            "alg": "ECDH-ES+A256KW",
            "enc": "A256GCM",
        }

    @router.post(f"{_PREFIX}/import", tags=["kms"])
    def import_key(body: ImportKeyBody, c: Caller = who) -> dict[str, Any]:
        """Create a key from material wrapped to the import key (role admin). The material is
        checked against ``type`` and kept like generated material: never returned in clear."""
        _check_aware(body.expires_at)
        with _kms_errors():
            info = kms.import_key(
                c,
                body.type,
                body.wrapped,
                name=body.name,
                policy_id=body.policy_id,
                exportable=body.exportable,
                rotation_days=body.rotation_days,
                expires_at=body.expires_at,
            )
        log_event("kms.key.import", key_id=info.id, type=info.type, actor=c.subject)
        return _key_json(info)

    @router.get(f"{_PREFIX}/keys", tags=["kms"])
    def list_keys(include_destroyed: bool = False, c: Caller = who) -> dict[str, Any]:
        """Keys' metadata (roles admin, auditor, key-user)."""
        with _kms_errors():
            keys = kms.list_keys(c, include_destroyed=include_destroyed)
        return {"keys": [_key_json(k) for k in keys]}

    @router.get(f"{_PREFIX}/keys/{{key_id}}", tags=["kms"])
    def get_key(key_id: str, c: Caller = who) -> dict[str, Any]:
        """A key's metadata, versions and (asymmetric keys) public key PEM."""
        with _kms_errors():
            versions = kms.versions(c, key_id)
            info = svc.store.get_key(key_id)
            pem = None if info.type == "AES-256" else kms.public_key(key_id)
        return {
            **_key_json(info),
            "versions": [
                {"version": v.version, "state": v.state, "created_at": v.created_at.isoformat()}
                for v in versions
            ],
            "public_key_pem": pem,
        }

    @router.post(f"{_PREFIX}/keys/{{key_id}}/rotate", tags=["kms"])
    def rotate(key_id: str, c: Caller = who) -> dict[str, Any]:
        """A new version becomes current; older versions still decrypt, unwrap and verify."""
        with _kms_errors():
            kms.rotate(c, key_id)
            info = svc.store.get_key(key_id)
        return _key_json(info)

    @router.post(f"{_PREFIX}/keys/{{key_id}}/disable", tags=["kms"])
    def disable(key_id: str, c: Caller = who) -> dict[str, Any]:
        with _kms_errors():
            return _key_json(kms.disable(c, key_id))

    @router.post(f"{_PREFIX}/keys/{{key_id}}/enable", tags=["kms"])
    def enable(key_id: str, c: Caller = who) -> dict[str, Any]:
        with _kms_errors():
            return _key_json(kms.enable(c, key_id))

    @router.post(f"{_PREFIX}/keys/{{key_id}}/schedule-delete", tags=["kms"])
    def schedule_delete(key_id: str, body: ScheduleDeleteBody, c: Caller = who) -> dict[str, Any]:
        """Pending deletion: destroyed after ``days`` (7..30) unless cancelled."""
        with _kms_errors():
            return _key_json(kms.schedule_delete(c, key_id, body.days))

    @router.post(f"{_PREFIX}/keys/{{key_id}}/cancel-delete", tags=["kms"])
    def cancel_delete(key_id: str, c: Caller = who) -> dict[str, Any]:
        """Pending deletion -> disabled (enable it afterwards)."""
        with _kms_errors():
            return _key_json(kms.cancel_delete(c, key_id))

    # -- use ---------------------------------------------------------------------------------------

    @router.post(f"{_PREFIX}/keys/{{key_id}}/encrypt", tags=["kms"])
    def encrypt(key_id: str, body: EncryptBody, c: Caller = who) -> dict[str, Any]:
        plaintext, aad = data(body.plaintext, "plaintext"), data(body.aad, "aad")

        def run() -> dict[str, Any]:
            ct = kms.encrypt(c, key_id, plaintext, aad=aad)
            return {
                "key_id": ct.key_id,
                "version": ct.version,
                "algorithm": ct.algorithm,
                "ciphertext": _b64(ct.ciphertext),
            }

        return use("encrypt", key_id, c, run)

    @router.post(f"{_PREFIX}/keys/{{key_id}}/decrypt", tags=["kms"])
    def decrypt(key_id: str, body: DecryptBody, c: Caller = who) -> dict[str, Any]:
        ciphertext, aad = data(body.ciphertext, "ciphertext"), data(body.aad, "aad")

        def run() -> dict[str, Any]:
            pt = kms.decrypt(c, key_id, ciphertext, aad=aad)
            return {"key_id": pt.key_id, "version": pt.version, "plaintext": _b64(pt.plaintext)}

        return use("decrypt", key_id, c, run)

    @router.post(f"{_PREFIX}/keys/{{key_id}}/generate-data-key", tags=["kms"])
    def generate_data_key(key_id: str, body: DataKeyBody, c: Caller = who) -> dict[str, Any]:
        aad = data(body.aad, "aad")

        def run() -> dict[str, Any]:
            dk = kms.generate_data_key(c, key_id, aad=aad, size=body.size)
            return {
                "key_id": dk.key_id,
                "version": dk.version,
                "plaintext": _b64(dk.plaintext),
                "ciphertext": _b64(dk.ciphertext),
            }

        return use("generate_data_key", key_id, c, run)

    @router.post(f"{_PREFIX}/keys/{{key_id}}/wrap", tags=["kms"])
    def wrap(key_id: str, body: WrapBody, c: Caller = who) -> dict[str, Any]:
        material = data(body.key_material, "key_material")

        def run() -> dict[str, Any]:
            wk = kms.wrap(c, key_id, material)
            return {
                "key_id": wk.key_id,
                "version": wk.version,
                "algorithm": wk.algorithm,
                "wrapped": _b64(wk.wrapped),
            }

        return use("wrap", key_id, c, run)

    @router.post(f"{_PREFIX}/keys/{{key_id}}/unwrap", tags=["kms"])
    def unwrap(key_id: str, body: UnwrapBody, c: Caller = who) -> dict[str, Any]:
        wrapped = data(body.wrapped, "wrapped")

        def run() -> dict[str, Any]:
            pt = kms.unwrap(c, key_id, wrapped)
            return {"key_id": pt.key_id, "version": pt.version, "key_material": _b64(pt.plaintext)}

        return use("unwrap", key_id, c, run)

    @router.post(f"{_PREFIX}/keys/{{key_id}}/sign", tags=["kms"])
    def sign(key_id: str, body: SignBody, c: Caller = who) -> dict[str, Any]:
        """Sign with the current version (DER ECDSA with ``raw_rs`` beside it, Ed25519, PSS)."""
        message = data(body.message, "message")

        def run() -> dict[str, Any]:
            sig = kms.sign(
                c,
                key_id,
                message,
                prehashed=body.prehashed,
                low_s=body.low_s,
                deterministic=body.deterministic,
            )
            return {
                "key_id": sig.key_id,
                "version": sig.version,
                "algorithm": sig.algorithm,
                "signature": _b64(sig.signature),
                "raw_rs": None if sig.raw_rs is None else _b64(sig.raw_rs),
                "low_s": sig.low_s,
            }

        return use("sign", key_id, c, run)

    @router.post(f"{_PREFIX}/keys/{{key_id}}/verify", tags=["kms"])
    def verify(key_id: str, body: VerifyBody, c: Caller = who) -> dict[str, Any]:
        message, signature = data(body.message, "message"), data(body.signature, "signature")

        def run() -> dict[str, Any]:
            v = kms.verify(
                c,
                key_id,
                message,
                signature,
                version=body.version,
                prehashed=body.prehashed,
                signature_format=body.signature_format,
                require_low_s=body.require_low_s,
            )
            return {
                "key_id": v.key_id,
                "version": v.version,
                "algorithm": v.algorithm,
                "valid": v.valid,
            }

        return use("verify", key_id, c, run)

    @router.post(f"{_PREFIX}/keys/{{key_id}}/export", tags=["kms"])
    def export(key_id: str, c: Caller = who) -> dict[str, Any]:
        """An exportable key's material as a flattened JWE to the attested workload's TEE key
        (attested workloads only; raw bytes for AES-256, PKCS#8 DER otherwise)."""

        def run() -> dict[str, Any]:
            ex = kms.export_to_tee(c, key_id)
            return {
                "key_id": ex.key_id,
                "version": ex.version,
                "type": ex.type,
                "format": ex.format,
                "jwe": dict(ex.jwe),
            }

        return use("export", key_id, c, run)

    return router
