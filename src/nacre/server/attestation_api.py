"""The attestation API: ``POST /attestation/v1/{tee}`` (evidence -> EAR JWT) and the JWKS."""

from __future__ import annotations

import hashlib
from typing import Any

from fastapi import APIRouter

from nacre.errors import NacreError
from nacre.server.attest import known_tee
from nacre.server.models import AttestationRequest
from nacre.server.observe import log_event
from nacre.server.problems import Problem
from nacre.server.service import KBS_TEES, NacreService, b64decode
from nacre.token import canonicalize

__all__ = ["attestation_router"]


def attestation_router(svc: NacreService) -> APIRouter:
    router = APIRouter()

    @router.get("/.well-known/jwks.json", tags=["attestation"])
    def jwks() -> dict[str, Any]:
        """The EAR signing keys (current and those whose tokens may still be unexpired)."""
        return svc.keyring.jwks(svc.now())

    @router.post("/attestation/v1/{tee}", tags=["attestation"])
    def attestation(tee: str, body: AttestationRequest) -> dict[str, Any]:
        """Verify and appraise evidence; answer an EAR JWT whatever the appraisal concluded
        (``ear.status`` says it), or a problem when the evidence does not verify."""
        if not known_tee(tee):
            raise Problem(
                404,
                "unknown TEE",
                kind="NotFound",
                code="TEE_UNKNOWN",
                field="tee",
                expected=" | ".join(KBS_TEES),
                actual=tee,
            )
        evidence = b64decode(body.evidence, "evidence")
        expected_rd: bytes | None = None
        if body.runtime_data is not None:
            if body.hash_algorithm not in ("sha256", "sha384", "sha512"):
                raise Problem(
                    400,
                    "unsupported hash algorithm",
                    kind="BadRequest",
                    code="SCHEMA",
                    field="hash_algorithm",
                    expected="sha256 | sha384 | sha512",
                    actual=body.hash_algorithm,
                )
            rd = body.runtime_data
            if set(rd) == {"raw"} and isinstance(rd["raw"], str):
                material = b64decode(rd["raw"], "runtime_data.raw")
            elif set(rd) == {"structured"}:
                try:
                    material = canonicalize(rd["structured"])
                except NacreError as exc:
                    raise Problem.from_error(400, exc, kind="BadRequest") from None
            else:
                raise Problem(
                    400,
                    "runtime_data is {raw: base64} or {structured: JSON}",
                    kind="BadRequest",
                    code="SCHEMA",
                    field="runtime_data",
                    expected="raw | structured",
                    actual=",".join(sorted(rd)),
                )
            expected_rd = hashlib.new(body.hash_algorithm, material).digest().ljust(64, b"\0")[:64]
        now = svc.now()
        try:
            appraised = svc.attester.appraise(evidence, tee=tee, now=now, policy_id=body.policy_id)
        except Problem as problem:
            svc.metrics.attestations.labels("attestation", tee, "refused").inc()
            raise problem
        actual_rd = str(appraised.verified.claims.get("report_data", ""))[:128]
        if expected_rd is not None and actual_rd != expected_rd.hex():
            svc.metrics.attestations.labels("attestation", tee, "refused").inc()
            raise Problem(
                403,
                "report_data does not bind the runtime data",
                kind="AttestationError",
                code="REPORT_DATA_MISMATCH",
                check="report_data",
                field="report_data",
                expected=expected_rd.hex(),
                actual=actual_rd,
            )
        token = svc.issue_token(appraised, tee_pubkey=None, runtime=None, nonce=body.nonce)
        result = appraised.result
        svc.metrics.attestations.labels("attestation", tee, result.status).inc()
        log_event(
            "attestation",
            tee=tee,
            status=result.status,
            sim=appraised.verified.sim,
            policy_id=appraised.policy_id,
        )
        return {
            "token": token,
            "status": result.status,
            "sim": appraised.verified.sim,
            "policy_id": appraised.policy_id,
            "tcb_status": appraised.verified.tcb_status,
            "checks": [c.to_dict() for c in result.checks],
            "trustworthiness": result.trustworthiness.to_dict(),
        }

    return router
