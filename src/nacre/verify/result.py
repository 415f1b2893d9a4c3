"""What verification produces: :class:`VerifiedEvidence`, which only a verifier can construct."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, Literal, NamedTuple

# Small records are NamedTuples: immutable like frozen dataclasses, and several times cheaper to
# build, which matters on the per-quote path (about 20 of them per verification).
__all__ = [
    "ChainLink",
    "Check",
    "CollateralItem",
    "TcbMatch",
    "TeeKind",
    "VerifiedEvidence",
]

TeeKind = Literal["sgx", "tdx", "snp"]

# Only verifiers in nacre.verify hold this token; VerifiedEvidence refuses any other.
_VERIFIER_TOKEN = object()


class Check(NamedTuple):
    """One verification step, as passed or failed, with why."""

    step: str
    name: str
    passed: bool
    detail: str = ""


class ChainLink(NamedTuple):
    """One certificate on the way from evidence to trust anchor."""

    role: str
    subject: str
    not_before: datetime
    not_after: datetime


class CollateralItem(NamedTuple):
    """One collateral item that was used, with its validity window."""

    name: str
    issued: datetime
    next_update: datetime


class TcbMatch(NamedTuple):
    """The TCB level matched and why."""

    platform_status: str
    platform_tcb_date: str | None
    qe_status: str | None
    module_status: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class VerifiedEvidence:
    """Evidence whose signatures, chains and collateral checked out at ``verified_at``.

    Construct only through a verifier; appraisal accepts nothing else.
    """

    tee: TeeKind
    version: int
    tcb_status: str | None
    advisory_ids: tuple[str, ...]
    claims: Mapping[str, Any]
    verified_at: datetime
    sim: bool = False
    checks: tuple[Check, ...] = ()
    chain: tuple[ChainLink, ...] = ()
    collateral: tuple[CollateralItem, ...] = ()
    tcb: TcbMatch | None = None
    evidence: Any = field(default=None, repr=False, compare=False)
    _token: object = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self._token is not _VERIFIER_TOKEN:
            raise TypeError(
                "VerifiedEvidence is produced by nacre.verify, not constructed directly"
            )
        object.__setattr__(self, "claims", MappingProxyType(dict(self.claims)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "tee": self.tee,
            "version": self.version,
            "tcb_status": self.tcb_status,
            "advisory_ids": list(self.advisory_ids),
            "claims": dict(self.claims),
            "sim": self.sim,
        }


def _make(**kwargs: Any) -> VerifiedEvidence:
    """Constructor for verifiers inside :mod:`nacre.verify`."""
    return VerifiedEvidence(**kwargs, _token=_VERIFIER_TOKEN)
