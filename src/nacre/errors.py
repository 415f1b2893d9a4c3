"""The one exception hierarchy of nacre.

Every error names what went wrong in words a user can act on: the ``field`` that was checked, the
``expected`` and the ``actual`` value, and a ``hint`` saying what to do about it. ``code`` is a stable
machine-readable identifier (the vocabulary of ``shared/vectors/README.md``, extended, never renamed).

    NacreError
    ├── UsageError                      bad arguments, unreadable files (CLI exit 2)
    ├── LimitExceededError              an input is over a named limit
    ├── CollateralFetchError            PCS/PCCS/KDS could not be reached or answered badly
    └── VerificationError               the evidence is rejected (CLI exit 1)
        ├── MalformedEvidenceError      bytes that are not a well-formed quote/report
        │   └── UnsupportedEvidenceError  well-formed, but a variant nacre cannot verify
        ├── CollateralError             collateral is malformed, unsigned, expired or for another platform
        └── PolicyViolationError        genuine evidence that the appraisal policy refuses
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nacre.verify.result import VerifiedEvidence

__all__ = [
    "CollateralError",
    "CollateralFetchError",
    "LimitExceededError",
    "MalformedEvidenceError",
    "NacreError",
    "PolicyViolationError",
    "UnsupportedEvidenceError",
    "UsageError",
    "VerificationError",
]


class NacreError(Exception):
    """Root of every error nacre raises on purpose."""

    default_code = "NACRE_ERROR"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        field: str | None = None,
        expected: object = None,
        actual: object = None,
        hint: str | None = None,
        step: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.field = field
        self.expected = None if expected is None else str(expected)
        self.actual = None if actual is None else str(actual)
        self.hint = hint
        self.step = step
        #: Verification steps up to and including the failed one (set by verifiers).
        self.checks: tuple[Any, ...] = ()

    def __str__(self) -> str:
        parts = [self.message]
        if self.field is not None and (self.expected is not None or self.actual is not None):
            parts.append(f"({self.field}: expected {self.expected}, got {self.actual})")
        if self.hint:
            parts.append(f"- {self.hint}")
        return " ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """The ``error`` object of the CLI's JSON output."""
        return {
            "code": self.code,
            "field": self.field,
            "expected": self.expected,
            "actual": self.actual,
            "message": str(self),
        }


class UsageError(NacreError):
    """Arguments or input files that cannot be used at all."""

    default_code = "USAGE"


class LimitExceededError(NacreError):
    """An input is larger or deeper than a named limit in :mod:`nacre.limits`."""

    default_code = "LIMIT_EXCEEDED"


class CollateralFetchError(NacreError):
    """Collateral could not be fetched from Intel PCS/PCCS or AMD KDS."""

    default_code = "COLLATERAL_FETCH_FAILED"


class VerificationError(NacreError):
    """The evidence is rejected. ``code`` says why, ``step`` says which verification step."""

    default_code = "VERIFICATION_FAILED"


class MalformedEvidenceError(VerificationError):
    """The bytes are not a well-formed quote or report."""

    default_code = "QUOTE_MALFORMED"


class UnsupportedEvidenceError(MalformedEvidenceError):
    """Well-formed evidence of a kind nacre cannot verify (another key type, cert data type ...)."""

    default_code = "QUOTE_UNSUPPORTED"


class CollateralError(VerificationError):
    """Collateral is malformed, badly signed, out of its validity window or for another platform."""

    default_code = "COLLATERAL_INVALID"


class PolicyViolationError(VerificationError):
    """The evidence verifies, but the appraisal policy refuses it (debug enclave, revoked TCB ...).

    ``verified`` holds the verification result, so callers can still report the TCB status.
    """

    default_code = "POLICY_VIOLATION"

    def __init__(self, message: str, *, verified: VerifiedEvidence, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.verified = verified
