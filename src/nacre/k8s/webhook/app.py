"""The webhook's ASGI app: AdmissionReview in, AdmissionReview out.

Paths (the webhook configurations select which pods reach which path):

- ``POST /mutate``, ``POST /validate``: pods selected by the pod label
  ``nacre.dev/confidential: "true"`` (objectSelector). A pod without the label that arrives
  anyway is admitted unchanged (defence in depth against a widened selector).
- ``POST /mutate/namespace``, ``POST /validate/namespace``: every pod of a namespace labelled
  ``nacre.dev/confidential: "true"`` (namespaceSelector) is confidential.
- ``POST /validate/untrusted``: every pod of a namespace labelled ``nacre.dev/untrusted: "true"``
  must run in a sandboxed RuntimeClass.
- ``GET /healthz``.

Only Pods are judged: mutation on CREATE, validation on CREATE and UPDATE (the pod itself or its
``ephemeralcontainers`` subresource, through which debug containers are added). An UPDATE is
refused only for violations it adds (not already in ``oldObject``): a pod admitted under an
older configuration can still get its finalizers removed. Anything else is admitted unchanged. A body that is not an AdmissionReview v1 gets HTTP 400 with an RFC 7807
problem naming the field; a body over :data:`MAX_REVIEW_BYTES` gets 413. The webhook has no
side effects, so dry-run requests are answered like any other.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping
from typing import Any, Final

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from nacre.k8s.webhook.config import WebhookConfig
from nacre.k8s.webhook.mutate import mutate_pod
from nacre.k8s.webhook.pod import Violation, is_opted_in
from nacre.k8s.webhook.review import (
    MAX_REVIEW_BYTES,
    AdmissionRequest,
    MalformedReviewError,
    allowed_response,
    denied_response,
    parse_review,
)
from nacre.k8s.webhook.validate import confidential_violations, untrusted_violations

__all__ = ["PATHS", "Mode", "create_app", "decide"]

_log = logging.getLogger("nacre.k8s.webhook")

_PROBLEM: Final = "application/problem+json"


class Mode(enum.Enum):
    """What one webhook path does."""

    MUTATE = "/mutate"
    MUTATE_NAMESPACE = "/mutate/namespace"
    VALIDATE = "/validate"
    VALIDATE_NAMESPACE = "/validate/namespace"
    VALIDATE_UNTRUSTED = "/validate/untrusted"

    @property
    def mutating(self) -> bool:
        return self in (Mode.MUTATE, Mode.MUTATE_NAMESPACE)

    @property
    def by_label(self) -> bool:
        return self in (Mode.MUTATE, Mode.VALIDATE)


PATHS: Final = tuple(mode.value for mode in Mode)


def _denied(uid: str, problems: list[Violation]) -> dict[str, Any]:
    forbidden = any(not p.invalid for p in problems)
    return denied_response(
        uid,
        code=403 if forbidden else 422,
        reason="Forbidden" if forbidden else "Invalid",
        message="; ".join(p.text for p in problems),
    )


def decide(mode: Mode, request: AdmissionRequest, config: WebhookConfig) -> dict[str, Any]:
    """The AdmissionReview answer to ``request`` on ``mode``'s path (pure: no side effects)."""
    pod: Mapping[str, Any] | None = request.object
    if not request.is_pod or pod is None:
        return allowed_response(request.uid)
    if mode.mutating:
        if request.operation != "CREATE" or request.sub_resource:
            return allowed_response(request.uid)
        if mode.by_label and not is_opted_in(pod):
            return allowed_response(request.uid)
        patch, problems = mutate_pod(pod, config)
        return _denied(request.uid, problems) if problems else allowed_response(request.uid, patch)
    if request.operation not in ("CREATE", "UPDATE"):
        return allowed_response(request.uid)
    if request.sub_resource not in ("", "ephemeralcontainers"):
        return allowed_response(request.uid)
    if mode is Mode.VALIDATE_UNTRUSTED:
        rules = untrusted_violations
    elif mode.by_label and not is_opted_in(pod):
        return allowed_response(request.uid)
    else:
        rules = confidential_violations
    problems = rules(pod, config)
    if problems and request.operation == "UPDATE" and request.old_object is not None:
        # Judge only what the update adds: a pod admitted under an older configuration must
        # still be updatable (finalizers, labels), or it could never be deleted cleanly.
        before = {p.text for p in rules(request.old_object, config)}
        problems = [p for p in problems if p.text not in before]
    return _denied(request.uid, problems) if problems else allowed_response(request.uid)


def _problem(status: int, title: str, error: MalformedReviewError | None = None) -> Response:
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status}
    if error is not None:
        body.update(
            detail=str(error),
            code=error.code,
            field=error.field,
            expected=error.expected,
            actual=error.actual,
        )
    return JSONResponse(body, status_code=status, media_type=_PROBLEM)


async def _read_body(request: Request) -> bytes | None:
    """The body, or None when it is larger than :data:`MAX_REVIEW_BYTES` (stops reading there)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_REVIEW_BYTES:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_REVIEW_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(config: WebhookConfig) -> Starlette:
    """The webhook app for ``config``."""

    def endpoint(mode: Mode) -> Any:
        async def review(request: Request) -> Response:
            body = await _read_body(request)
            if body is None:
                return _problem(413, f"the AdmissionReview is larger than {MAX_REVIEW_BYTES} bytes")
            try:
                admission = parse_review(body)
                answer = decide(mode, admission, config)
            except MalformedReviewError as exc:
                _log.warning("malformed AdmissionReview on %s: %s", mode.value, exc)
                return _problem(400, "malformed AdmissionReview", exc)
            except RecursionError:
                error = MalformedReviewError(
                    "the AdmissionReview nests too deeply", field="body", expected="a Pod"
                )
                return _problem(400, "malformed AdmissionReview", error)
            response = answer["response"]
            _log.info(
                "%s %s %s %s/%s uid=%s dryRun=%s allowed=%s%s",
                mode.value,
                admission.operation,
                admission.kind,
                admission.namespace or "-",
                admission.name or "-",
                admission.uid,
                admission.dry_run,
                response["allowed"],
                " (patched)" if "patch" in response else "",
            )
            if not response["allowed"]:
                _log.info("denied uid=%s: %s", admission.uid, response["status"]["message"])
            return JSONResponse(answer)

        return review

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    routes = [Route(mode.value, endpoint(mode), methods=["POST"]) for mode in Mode]
    routes.append(Route("/healthz", healthz, methods=["GET"]))
    return Starlette(routes=routes)
