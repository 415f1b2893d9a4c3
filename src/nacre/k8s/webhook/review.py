"""AdmissionReview v1: parse a request body into an :class:`AdmissionRequest`, build the response.

The API server sends ``{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
"request": {...}}`` and expects the same envelope back with ``response.uid`` echoing
``request.uid``. Anything that is not such a review is a :class:`MalformedReviewError` (the app
answers HTTP 400, and the API server applies the webhook's failurePolicy) — never an exception
that escapes, and never a guess at what the sender meant.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from nacre.errors import UsageError

__all__ = [
    "ADMISSION_API_VERSION",
    "ADMISSION_KIND",
    "MAX_JSON_DEPTH",
    "MAX_REVIEW_BYTES",
    "AdmissionRequest",
    "MalformedReviewError",
    "allowed_response",
    "denied_response",
    "parse_review",
    "shown",
]

ADMISSION_API_VERSION: Final = "admission.k8s.io/v1"
ADMISSION_KIND: Final = "AdmissionReview"
#: A review carries the object and, on UPDATE, the old object; etcd caps one object at 1.5 MiB.
MAX_REVIEW_BYTES: Final = 3 * 1024 * 1024
#: JSON nesting accepted in a review (a Pod, managedFields included, is about 15 levels deep).
MAX_JSON_DEPTH: Final = 64
#: Longest value quoted back in an error message.
_SHOWN_CHARS: Final = 100


class MalformedReviewError(UsageError):
    """The body is not an AdmissionReview v1 request the webhook can judge."""

    default_code = "ADMISSION_MALFORMED"


def shown(value: object) -> str:
    """``value`` as JSON for a message, cut to a readable length."""
    try:
        text = json.dumps(value, sort_keys=True)
    except (TypeError, ValueError, RecursionError):
        text = repr(type(value).__name__)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


@dataclass(frozen=True, slots=True)
class AdmissionRequest:
    """The parts of ``request`` the webhook reads. ``object``/``old_object`` are the raw JSON."""

    uid: str
    group: str
    version: str
    kind: str
    sub_resource: str
    operation: str
    namespace: str
    name: str
    object: Mapping[str, Any] | None
    old_object: Mapping[str, Any] | None
    dry_run: bool

    @property
    def is_pod(self) -> bool:
        return self.group == "" and self.version == "v1" and self.kind == "Pod"


def _depth_ok(value: Any) -> bool:
    """True when ``value`` nests at most :data:`MAX_JSON_DEPTH` levels (checked without recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Sequence[Any] = list(node.values())
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > MAX_JSON_DEPTH:
            return False
        stack.extend((child, depth + 1) for child in children)
    return True


def _malformed(message: str, field: str, expected: str, actual: object) -> MalformedReviewError:
    return MalformedReviewError(
        message,
        field=field,
        expected=expected,
        actual=actual if isinstance(actual, str) and len(actual) <= _SHOWN_CHARS else shown(actual),
    )


def _text(obj: Mapping[str, Any], key: str, where: str, *, required: bool) -> str:
    value = obj.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise _malformed(
            f"{where}.{key} is not a {'non-empty ' if required else ''}string",
            f"{where}.{key}",
            "a non-empty string" if required else "a string",
            "missing" if value is None else value,
        )
    return value


def _optional_object(request: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    value = request.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _malformed(
            f"request.{key} is not a JSON object", f"request.{key}", "an object or null", value
        )
    return value


def parse_review(body: bytes) -> AdmissionRequest:
    """The request of an AdmissionReview v1 body; :class:`MalformedReviewError` otherwise."""
    if len(body) > MAX_REVIEW_BYTES:
        raise _malformed(
            "the AdmissionReview is too large",
            "body",
            f"<= {MAX_REVIEW_BYTES} bytes (MAX_REVIEW_BYTES)",
            f"{len(body)} bytes",
        )
    try:
        review = json.loads(body)
    except (ValueError, RecursionError) as exc:
        detail = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:120]
        raise _malformed(
            f"the body is not JSON: {detail}", "body", "an AdmissionReview JSON object", "not JSON"
        ) from None
    if not isinstance(review, dict):
        raise _malformed("the body is not a JSON object", "body", "a JSON object", review)
    if not _depth_ok(review):
        raise _malformed(
            "the AdmissionReview nests too deeply",
            "body",
            f"at most {MAX_JSON_DEPTH} levels (MAX_JSON_DEPTH)",
            "deeper",
        )
    if review.get("apiVersion") != ADMISSION_API_VERSION:
        raise _malformed(
            "unsupported AdmissionReview version",
            "apiVersion",
            ADMISSION_API_VERSION,
            review.get("apiVersion", "missing"),
        )
    if review.get("kind") != ADMISSION_KIND:
        raise _malformed(
            "the body is not an AdmissionReview",
            "kind",
            ADMISSION_KIND,
            review.get("kind", "missing"),
        )
    request = review.get("request")
    if not isinstance(request, dict):
        raise _malformed(
            "the AdmissionReview has no request",
            "request",
            "an object",
            "missing" if request is None else request,
        )
    uid = _text(request, "uid", "request", required=True)
    kind = request.get("kind")
    if not isinstance(kind, dict):
        raise _malformed(
            "request.kind is not a group/version/kind object",
            "request.kind",
            'an object like {"group": "", "version": "v1", "kind": "Pod"}',
            "missing" if kind is None else kind,
        )
    operation = _text(request, "operation", "request", required=True)
    if operation not in ("CREATE", "UPDATE", "DELETE", "CONNECT"):
        raise _malformed(
            "unknown admission operation",
            "request.operation",
            "CREATE, UPDATE, DELETE or CONNECT",
            operation,
        )
    obj = _optional_object(request, "object")
    old = _optional_object(request, "oldObject")
    if operation in ("CREATE", "UPDATE") and obj is None:
        raise _malformed(
            f"a {operation} review carries no object", "request.object", "an object", "missing"
        )
    dry_run = request.get("dryRun", False)
    if dry_run is None:
        dry_run = False
    if not isinstance(dry_run, bool):
        raise _malformed(
            "request.dryRun is not a boolean", "request.dryRun", "true or false", dry_run
        )
    return AdmissionRequest(
        uid=uid,
        group=_text(kind, "group", "request.kind", required=False),
        version=_text(kind, "version", "request.kind", required=True),
        kind=_text(kind, "kind", "request.kind", required=True),
        sub_resource=_text(request, "subResource", "request", required=False),
        operation=operation,
        namespace=_text(request, "namespace", "request", required=False),
        name=_text(request, "name", "request", required=False),
        object=obj,
        old_object=old,
        dry_run=dry_run,
    )


def _envelope(response: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": ADMISSION_API_VERSION, "kind": ADMISSION_KIND, "response": response}


def allowed_response(uid: str, patch: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """Admit; with a non-empty ``patch``, as a base64 JSONPatch (RFC 6902)."""
    response: dict[str, Any] = {"uid": uid, "allowed": True}
    if patch:
        encoded = json.dumps(list(patch), separators=(",", ":")).encode()
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(encoded).decode("ascii")
    return _envelope(response)


def denied_response(uid: str, *, code: int, reason: str, message: str) -> dict[str, Any]:
    """Refuse, with a ``status`` whose message says which field broke which rule."""
    return _envelope(
        {
            "uid": uid,
            "allowed": False,
            "status": {"code": code, "reason": reason, "message": message},
        }
    )
