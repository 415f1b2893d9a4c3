"""RFC 7807 problem details: the one error body of every nacre HTTP API.

A :class:`Problem` is raised by route code and rendered as ``application/problem+json``::

    {"type": ".../errors/PolicyDeny", "title": "policy denied the release", "status": 403,
     "detail": "...", "code": "POLICY_DENY", "check": "rules.mrenclave",
     "field": "claims.mrenclave", "expected": "...", "actual": "...", "request_id": "..."}

KBS routes use Trustee's error type URIs (``https://github.com/confidential-containers/kbs/errors/
<Kind>``) so clients that match on ``type`` keep working; the status codes are honest (400, 401,
403, 404, 413) where Trustee answers 401 for nearly everything.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from starlette.responses import JSONResponse

from nacre.errors import LimitExceededError, NacreError, UsageError
from nacre.server.adminauth import AdminAuthError
from nacre.store import ConflictError, NotFoundError

__all__ = [
    "KBS_ERROR_BASE",
    "NACRE_ERROR_BASE",
    "PROBLEM_CONTENT_TYPE",
    "Problem",
    "error_problem",
    "problem_response",
    "validation_problem",
]

PROBLEM_CONTENT_TYPE: Final = "application/problem+json"
KBS_ERROR_BASE: Final = "https://github.com/confidential-containers/kbs/errors/"
NACRE_ERROR_BASE: Final = "https://nacre.dev/problems/"


class Problem(Exception):  # noqa: N818 - an RFC 7807 "problem", raised to be answered
    """An HTTP error with an RFC 7807 body. ``kind`` becomes the last segment of ``type``."""

    def __init__(
        self,
        status: int,
        title: str,
        *,
        kind: str,
        detail: str | None = None,
        code: str | None = None,
        check: str | None = None,
        field: str | None = None,
        expected: object = None,
        actual: object = None,
        kbs: bool = False,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(title)
        self.status = status
        self.title = title
        self.kind = kind
        self.detail = detail or title
        self.code = code
        self.check = check
        self.field = field
        self.expected = None if expected is None else str(expected)
        self.actual = None if actual is None else str(actual)
        self.kbs = kbs
        self.extra = extra or {}
        self.headers = headers or {}

    @classmethod
    def from_error(
        cls,
        status: int,
        exc: NacreError,
        *,
        kind: str,
        title: str | None = None,
        kbs: bool = False,
        check: str | None = None,
    ) -> Problem:
        """A problem carrying a :class:`NacreError`'s code, field, expected and actual."""
        return cls(
            status,
            title or exc.message,
            kind=kind,
            detail=str(exc),
            code=exc.code,
            check=check,
            field=exc.field,
            expected=exc.expected,
            actual=exc.actual,
            kbs=kbs,
        )

    def body(self, request_id: str | None = None) -> dict[str, Any]:
        base = KBS_ERROR_BASE if self.kbs else NACRE_ERROR_BASE
        out: dict[str, Any] = {
            "type": base + self.kind,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        for name in ("code", "check", "field", "expected", "actual"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        out.update(self.extra)
        if request_id is not None:
            out["request_id"] = request_id
        return out


def problem_response(problem: Problem, request_id: str | None = None) -> JSONResponse:
    return JSONResponse(
        problem.body(request_id),
        status_code=problem.status,
        media_type=PROBLEM_CONTENT_TYPE,
        headers=problem.headers,
    )


def error_problem(exc: NacreError) -> tuple[Problem, bool]:
    """The answer to a :class:`NacreError` no route turned into a problem itself, and whether
    it is the server's fault (a 500, to be logged as an error)."""
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
        return Problem.from_error(500, exc, kind="InternalError"), True
    return Problem.from_error(status, exc, kind=kind), False


def validation_problem(errors: Sequence[Mapping[str, Any]], *, kbs: bool) -> Problem:
    """A 400 for a body that is not JSON or does not match the route's schema, from pydantic's
    error list (``loc`` may start with ``"body"``, as FastAPI reports it)."""
    first: Mapping[str, Any] = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    malformed = first.get("type") == "json_invalid" or (
        first.get("type") == "model_attributes_type"
        and not loc
        and isinstance(first.get("input"), bytes | str)
    )
    if malformed:
        return Problem(
            400,
            "malformed JSON",
            kind="SerdeError" if kbs else "MalformedJson",
            kbs=kbs,
            code="JSON_INVALID",
            field="body",
            expected="a JSON document",
            actual=str(first.get("ctx", {}).get("error", first.get("msg", ""))),
        )
    return Problem(
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
