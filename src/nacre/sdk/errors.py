"""Typed errors of :mod:`nacre.sdk`, all :class:`nacre.errors.NacreError` subclasses.

NacreError
└── KbsError                    the key broker refused or could not serve a request
    ├── KbsSessionError         401: no, expired or unknown session / token (KBS_UNAUTHORIZED)
    ├── KbsDeniedError          403 (or Trustee's 401 of type .../PolicyDeny): attestation or
    │                           release policy refused (KBS_DENIED); ``check`` names the failed check
    ├── KbsNotFoundError        404: no such resource (KBS_NOT_FOUND)
    ├── KbsUnavailableError     transport failure or 5xx after the bounded retries (KBS_UNAVAILABLE)
    └── KbsProtocolError        an answer that is not KBS v0.4.0 (KBS_PROTOCOL)

Every error carries the HTTP ``status`` (None for transport failures), the RFC 7807 ``problem_type``,
``title``, ``detail`` and ``code`` (as ``server_code``) the server sent, and ``check`` when the
server named one (nacre's broker names the failed check; Trustee's does not).
"""

from __future__ import annotations

from typing import Any

from nacre.errors import NacreError

__all__ = [
    "KbsDeniedError",
    "KbsError",
    "KbsNotFoundError",
    "KbsProtocolError",
    "KbsSessionError",
    "KbsUnavailableError",
]


class KbsError(NacreError):
    """The key broker refused a request or could not be reached."""

    default_code = "KBS_ERROR"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        check: str | None = None,
        detail: str | None = None,
        problem_type: str | None = None,
        title: str | None = None,
        server_code: str | None = None,
        problem: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(message, **kwargs)
        self.status = status
        self.check = check
        self.detail = detail
        self.problem_type = problem_type
        self.title = title
        #: The server's own machine-readable code (``code`` of the body), e.g. ``POLICY_DENY``.
        self.server_code = server_code
        #: The whole RFC 7807 body as the server sent it (empty when there was none).
        self.problem: dict[str, Any] = dict(problem or {})

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out.update(
            {
                "status": self.status,
                "check": self.check,
                "detail": self.detail,
                "type": self.problem_type,
            }
        )
        return out


class KbsSessionError(KbsError):
    """401: the session or token is missing, expired or unknown (a fresh handshake may help)."""

    default_code = "KBS_UNAUTHORIZED"


class KbsDeniedError(KbsError):
    """403 (Trustee: 401 PolicyDeny): the evidence or the release policy refused this workload."""

    default_code = "KBS_DENIED"


class KbsNotFoundError(KbsError):
    """404: the resource does not exist."""

    default_code = "KBS_NOT_FOUND"


class KbsUnavailableError(KbsError):
    """The broker could not be reached, or kept answering 5xx after the bounded retries."""

    default_code = "KBS_UNAVAILABLE"


class KbsProtocolError(KbsError):
    """The broker answered something that is not the KBS v0.4.0 protocol."""

    default_code = "KBS_PROTOCOL"
