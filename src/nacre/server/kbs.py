"""The Confidential Containers KBS protocol v0.4.0: ``/kbs/v0/auth``, ``/kbs/v0/attest``,
``/kbs/v0/resource/{repo}/{type}/{tag}``, wire-compatible with Trustee and guest-components.

Sessions and their single-use nonces are database rows (any replica finishes a handshake); the
statuses are honest: 400 bad request, 401 no/expired/replayed session or bad token, 403
evidence not bound to the key or refused by a policy (the failed check named), 404 no resource.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from functools import lru_cache
from typing import Any, Final

import orjson
from starlette.responses import JSONResponse, Response

from nacre.errors import NacreError, UsageError, VerificationError
from nacre.server.attest import DEFAULT_POLICY_ID
from nacre.server.models import KbsAttestRequest, KbsAuthRequest
from nacre.server.problems import Problem
from nacre.server.release import evaluate_release
from nacre.server.service import KBS_TEES, NacreService, b64decode
from nacre.store import NonceError, NotFoundError, ResourceName, Session
from nacre.store import Policy as StoredPolicy
from nacre.token import (
    EarClaims,
    JweError,
    TokenError,
    check_tee_key,
    encrypt_for_tee_key,
    kbs_report_data,
)
from nacre.token.initdata import check_init_data, parse_init_data

__all__ = ["KBS_PROTOCOL_VERSION", "KBS_SESSION_COOKIE", "KbsHandlers", "kbs_handlers"]

KBS_PROTOCOL_VERSION: Final = "0.4.0"
KBS_SESSION_COOKIE: Final = "kbs-session-id"
#: Session ids written into the cookie as they are: characters a cookie value holds unquoted
#: (http.cookies' legal set), which every id the store issues or accepts is made of.
_COOKIE_VALUE: Final = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class _KbsJson(JSONResponse):
    """A JSON answer rendered by orjson: the bytes Starlette's JSONResponse writes (compact,
    UTF-8, no NaN) for the KBS answers' plain values, in a fraction of the time."""

    #: The handler's outcome, which the KBS lane adds to the request's one log line.
    log_fields: dict[str, Any] | None = None

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


@lru_cache(maxsize=8)
def _http_date(timestamp: int) -> str:
    return format_datetime(datetime.fromtimestamp(timestamp, UTC), usegmt=True)


def _set_cookie(response: Response, session_id: str, expires: datetime) -> None:
    """``Set-Cookie: kbs-session-id=<id>; expires=<HTTP date>; HttpOnly; Path=/;
    SameSite=strict``, as Starlette's ``set_cookie`` writes it, without building a cookie jar
    for one header (an id with any other character goes through Starlette)."""
    if not _COOKIE_VALUE.fullmatch(session_id):
        response.set_cookie(
            KBS_SESSION_COOKIE,
            session_id,
            expires=expires,
            path="/",
            httponly=True,
            samesite="strict",
        )
        return
    value = (
        f"{KBS_SESSION_COOKIE}={session_id}; expires={_http_date(int(expires.timestamp()))}; "
        "HttpOnly; Path=/; SameSite=strict"
    )
    response.raw_headers.append((b"set-cookie", value.encode("latin-1")))


def _primary_quote(tee_evidence: Any) -> tuple[bytes, str]:
    """The quote bytes and the ``additional_evidence`` string of a KBS ``tee-evidence``.

    Accepted shapes (Trustee kbs-types 0.4 ``CompositeEvidence`` and its verifiers):
    ``{"primary_evidence": {"quote": b64, ...}, "additional_evidence": "<json string>"}``;
    the verifier's own ``{"quote": b64, ...}`` (SgxEvidence / TdxEvidence); either of them as a
    JSON string; or the raw quote as a base64 string.
    """
    evidence = tee_evidence
    if isinstance(evidence, str):
        text = evidence.strip()
        if text.startswith("{"):
            try:
                evidence = json.loads(text)
            except ValueError:
                raise _shape_problem("tee-evidence is not JSON", field="tee-evidence") from None
        else:
            return b64decode(text, "tee-evidence", kbs=True), ""
    additional = ""
    if isinstance(evidence, dict) and "primary_evidence" in evidence:
        extra = evidence.get("additional_evidence", "")
        if not isinstance(extra, str):
            extra = json.dumps(extra, separators=(",", ":"))
        additional = extra
        evidence = evidence["primary_evidence"]
        if isinstance(evidence, str):
            text = evidence.strip()
            if text.startswith("{"):
                try:
                    evidence = json.loads(text)
                except ValueError:
                    evidence = None
            else:
                return b64decode(text, "tee-evidence.primary_evidence", kbs=True), additional
    if isinstance(evidence, dict) and isinstance(evidence.get("quote"), str):
        return b64decode(evidence["quote"], "tee-evidence.quote", kbs=True), additional
    if isinstance(evidence, dict) and isinstance(evidence.get("attestation_report"), dict):
        raise _shape_problem(
            "SEV-SNP evidence as Trustee's snp attester writes it (the report as a JSON object) "
            "is not supported yet",
            field="tee-evidence.attestation_report",
            expected='the raw 1184-byte ATTESTATION_REPORT, base64: {"quote": base64}',
            actual="a JSON object (attestation_report)",
            detail="send the report bytes as nacre.sdk and nacre.tee do (configfs-tsm outblob)",
        )
    raise _shape_problem(
        "tee-evidence has no quote",
        field="tee-evidence",
        expected='{"primary_evidence": {"quote": base64}, "additional_evidence": ""} or {"quote": base64}',
        actual=type(evidence).__name__,
    )


def _shape_problem(title: str, **fields: Any) -> Problem:
    """A 400 for ``tee-evidence`` of a shape this KBS cannot read (code EVIDENCE_SHAPE)."""
    return Problem(400, title, kind="SerdeError", kbs=True, code="EVIDENCE_SHAPE", **fields)


@dataclass(frozen=True, slots=True)
class KbsHandlers:
    """The three KBS operations, as blocking functions of the parsed request, run by
    :class:`nacre.server.kbs_lane.KbsLane` (which serves the HTTP side) on the event loop with
    SQLite, on the service's worker threads with PostgreSQL. Each returns the response or
    raises a :class:`Problem`."""

    #: RCAR request: a session (cookie ``kbs-session-id``) and its challenge nonce.
    auth: Callable[[KbsAuthRequest], JSONResponse]
    #: RCAR attestation (session cookie value, body): evidence binding the TEE key and the
    #: nonce -> EAR token.
    attest: Callable[[str | None, KbsAttestRequest], JSONResponse]
    #: The resource ``repo/type/tag`` as a flattened JWE to the attested TEE key, if its release
    #: policy allows; authorised by the Bearer token, else by the session cookie.
    resource: Callable[[str, str, str, str | None, str | None], JSONResponse]


def kbs_handlers(svc: NacreService, *, deferred_audit: bool = False) -> KbsHandlers:
    """``deferred_audit``: audit entries are committed without waiting for the disk; the caller
    (the lane, on the event loop) makes them durable with ``Store.sync_deferred`` before it
    answers (nacre.store.Store.record)."""
    config = svc.config
    durable = not deferred_audit

    def _auth(body: KbsAuthRequest) -> JSONResponse:
        if body.version != KBS_PROTOCOL_VERSION:
            raise Problem(
                400,
                "KBS Client Protocol Version Mismatch",
                kind="ProtocolVersion",
                kbs=True,
                code="PROTOCOL_VERSION",
                field="version",
                expected=KBS_PROTOCOL_VERSION,
                actual=body.version[:40],
            )
        if body.tee not in KBS_TEES:
            raise Problem(
                400,
                "TEE not supported by this KBS",
                kind="AttestationError",
                kbs=True,
                code="TEE_UNSUPPORTED",
                field="tee",
                expected=" | ".join(KBS_TEES),
                actual=body.tee[:40],
            )
        now = svc.now()
        nonce = base64.b64encode(secrets.token_bytes(32)).decode("ascii")
        session = svc.store.create_session(body.tee, ttl=config.session_ttl, now=now, nonce=nonce)
        svc.sweep_now_and_then(now)
        response = _KbsJson({"nonce": session.nonce, "extra-params": ""})
        _set_cookie(response, session.id, session.expires_at)
        return response

    def _session(sid: str | None) -> str:
        if not sid:
            raise Problem(
                401,
                "no KBS session: POST /kbs/v0/auth first",
                kind="UnAuthenticated",
                kbs=True,
                code="SESSION_MISSING",
                field=KBS_SESSION_COOKIE,
                expected="the cookie set by /kbs/v0/auth",
                actual="none",
            )
        return sid

    def _live_session(
        sid: str, now: datetime, policy_id: str | None = None
    ) -> tuple[Session, StoredPolicy | None]:
        """The live session and, read in the same statement, the policy ``policy_id``."""
        try:
            return svc.store.kbs_session(sid, now=now, policy_id=policy_id)
        except (NotFoundError, UsageError) as exc:
            raise Problem.from_error(
                401, exc, kind="UnAuthenticated", kbs=True, title="KBS session unknown or expired"
            ) from None

    def _attest(cookie: str | None, body: KbsAttestRequest) -> JSONResponse:
        now = svc.now()
        sid = _session(cookie)
        # The appraisal policy (stored "default", else the built-in one) comes with the session.
        session, stored_policy = _live_session(sid, now, DEFAULT_POLICY_ID)
        rd = body.runtime_data
        if session.state != "pending":
            raise Problem(
                401,
                "the session's nonce was already used (replay)",
                kind="UnAuthenticated",
                kbs=True,
                code="NONCE_REPLAYED",
                check="nonce",
                field="nonce",
                expected="an unused nonce",
                actual="session already attested",
            )
        if rd.nonce != session.nonce:
            raise Problem(
                401,
                "runtime-data nonce is not this session's challenge",
                kind="UnAuthenticated",
                kbs=True,
                code="NONCE_MISMATCH",
                check="nonce",
                field="runtime-data.nonce",
                expected=session.nonce,
                actual=rd.nonce[:64],
            )
        try:
            check_tee_key(rd.tee_pubkey)  # refuses keys a resource could not be sent to
        except JweError as exc:
            raise Problem.from_error(
                400, exc, kind="JweError", kbs=True, check="tee-pubkey"
            ) from None
        quote, additional = _primary_quote(body.tee_evidence)
        try:
            expected = kbs_report_data(rd.nonce, rd.tee_pubkey, additional)
        except NacreError as exc:
            raise Problem.from_error(400, exc, kind="SerdeError", kbs=True) from None
        init = None
        if body.init_data is not None:
            try:
                init = parse_init_data(body.init_data)
            except UsageError as exc:
                raise Problem.from_error(
                    400, exc, kind="SerdeError", kbs=True, check="init-data"
                ) from None
        try:
            appraised = svc.attester.appraise(
                quote, tee=session.tee, now=now, policy_id=None, kbs=True, stored=stored_policy
            )
        except Problem as problem:
            svc.metrics.attestations.labels("kbs", session.tee, "refused").inc()
            raise problem
        actual = str(appraised.verified.claims.get("report_data", ""))[:128]
        if actual != expected.hex():
            svc.metrics.attestations.labels("kbs", session.tee, "refused").inc()
            raise Problem(
                403,
                "report_data does not bind this nonce and tee-pubkey",
                kind="AttestationError",
                kbs=True,
                code="REPORT_DATA_MISMATCH",
                check="report_data",
                field="report_data",
                expected=expected.hex(),
                actual=actual,
                detail="the evidence's report_data is not pad64(SHA-384(JCS({additional-evidence, "
                "nonce, tee-pubkey}))) of this request: a different TEE key or nonce was attested",
            )
        if init is not None:
            try:
                check_init_data(init, appraised.verified.tee, appraised.verified.claims)
            except VerificationError as exc:
                svc.metrics.attestations.labels("kbs", session.tee, "refused").inc()
                raise Problem.from_error(
                    403, exc, kind="AttestationError", kbs=True, check="init_data"
                ) from None
        result = appraised.result
        svc.metrics.attestations.labels("kbs", session.tee, result.status).inc()
        if result.status == "contraindicated":
            failed = result.failed_checks
            first = failed[0] if failed else None
            svc.store.record(
                actor="kbs-session:" + hashlib.sha256(sid.encode()).hexdigest()[:16],
                action="kbs.attest",
                target=session.tee,
                outcome="denied",
                detail={
                    "policy_id": appraised.policy_id,
                    "failed": [c.name for c in failed][:20],
                    "sim": appraised.verified.sim,
                },
                now=now,
                durable=durable,
            )
            raise Problem(
                403,
                "the appraisal policy refuses this evidence",
                kind="PolicyDeny",
                kbs=True,
                code="APPRAISAL_DENY",
                check=first.name if first else None,
                field=first.name if first else None,
                expected=first.expected if first else None,
                actual=first.actual if first else None,
                detail=first.message if first else None,
                extra={"checks": [c.to_dict() for c in failed], "policy_id": appraised.policy_id},
            )
        runtime = {"nonce": rd.nonce, "additional-evidence": additional}
        token = svc.issue_token(
            appraised,
            tee_pubkey=rd.tee_pubkey,
            runtime=runtime,
            nonce=rd.nonce,
            init_data=None if init is None else init.claims(),
        )
        try:
            svc.store.attest_session(
                sid,
                rd.nonce,
                tee_pubkey=json.dumps(rd.tee_pubkey, sort_keys=True),
                token=token,
                now=now,
            )
        except NonceError as exc:
            raise Problem.from_error(
                401, exc, kind="UnAuthenticated", kbs=True, check="nonce"
            ) from None
        except NotFoundError as exc:
            raise Problem.from_error(401, exc, kind="UnAuthenticated", kbs=True) from None
        response = _KbsJson({"token": token})
        response.log_fields = {
            "tee": session.tee,
            "ear_status": result.status,
            "sim": appraised.verified.sim,
        }
        _set_cookie(response, sid, session.expires_at)
        return response

    def _resource(
        repo: str, type: str, tag: str, cookie: str | None, bearer: str | None
    ) -> JSONResponse:
        now = svc.now()
        try:
            name = ResourceName.parse(f"{repo}/{type}/{tag}")
        except UsageError as exc:
            raise Problem.from_error(404, exc, kind="InvalidRequestPath", kbs=True) from None
        if bearer is not None:
            token = bearer
        else:
            session = _live_session(_session(cookie), now)[0]
            if session.state != "attested" or session.token is None:
                raise Problem(
                    401,
                    "the session has not attested",
                    kind="UnAuthenticated",
                    kbs=True,
                    code="SESSION_NOT_ATTESTED",
                    field=KBS_SESSION_COOKIE,
                    expected="an attested session",
                    actual=session.state,
                )
            token = session.token
        try:
            claims = svc.keyring.verify(token, now)
        except TokenError as exc:
            svc.metrics.releases.labels("unauthenticated").inc()
            raise Problem.from_error(
                401, exc, kind="TokenVerifierError", kbs=True, check="token"
            ) from None
        tee_pubkey = claims.tee_pubkey
        if tee_pubkey is None:
            svc.metrics.releases.labels("unauthenticated").inc()
            raise Problem(
                401,
                "the token names no TEE key",
                kind="TokenVerifierError",
                kbs=True,
                code="TOKEN_NO_TEE_KEY",
                field="runtime_data_claims.tee-pubkey",
            )
        actor = f"ear:{claims.raw.get('jti', '?')}"
        audit = _auditor(actor, str(name), claims, now)
        try:
            # The resource, its current version (still sealed) and its release policy: one read.
            candidate = svc.store.resource_for_release(name)
        except NotFoundError as exc:
            svc.metrics.releases.labels("not_found").inc()
            audit("not_found", None)
            raise Problem.from_error(404, exc, kind="ResourceNotFound", kbs=True) from None
        info = candidate.info
        if info.policy_id is None:
            policy = None
        elif candidate.policy is None:  # cannot happen (foreign key); fail closed all the same
            raise NotFoundError(
                "the resource's release policy is missing",
                field="policy_id",
                expected="an existing policy",
                actual=info.policy_id,
            )
        else:
            policy = svc.parsed_release_policy(candidate.policy)
        decision = evaluate_release(policy, claims, str(name))
        failure = decision.first_failure
        if failure is not None:
            svc.metrics.releases.labels("denied").inc()
            audit("denied", {"check": failure.name, "policy_id": info.policy_id})
            raise Problem(
                403,
                "the release policy denies this resource",
                kind="PolicyDeny",
                kbs=True,
                code="POLICY_DENY",
                check=failure.name,
                field=failure.name,
                expected=failure.expected,
                actual=failure.actual,
                detail=failure.message,
                extra={
                    "checks": [c.to_dict() for c in decision.checks],
                    "policy_id": info.policy_id,
                },
            )
        resource = svc.store.open_release(candidate)
        try:
            jwe = encrypt_for_tee_key(resource.data, tee_pubkey)
        except JweError as exc:
            svc.metrics.releases.labels("denied").inc()
            audit("denied", {"check": "tee-pubkey", "policy_id": info.policy_id})
            raise Problem.from_error(
                400, exc, kind="JweError", kbs=True, check="tee-pubkey"
            ) from None
        audit("released", {"version": resource.version, "policy_id": info.policy_id})
        svc.metrics.releases.labels("released").inc()
        response = _KbsJson(jwe)
        response.log_fields = {"resource": str(name), "version": resource.version}
        return response

    def _auditor(
        actor: str, target: str, claims: EarClaims, now: datetime
    ) -> Callable[[str, dict[str, Any] | None], None]:
        appraisal = claims.submods.get("cpu0")
        base = {
            "kid": claims.kid,
            "status": appraisal.status if appraisal else None,
            "sim": appraisal.sim if appraisal else None,
        }

        def record(outcome: str, detail: dict[str, Any] | None) -> None:
            svc.store.record(
                actor=actor,
                action="resource.release",
                target=target,
                outcome=outcome,
                detail={**base, **(detail or {})},
                now=now,
                durable=durable,
            )

        return record

    return KbsHandlers(auth=_auth, attest=_attest, resource=_resource)
