"""Verify and appraise evidence for the HTTP edge, turning every refusal into a :class:`Problem`.

Trust: the production roots (``ServerConfig.trust``, default the pinned Intel/AMD roots), and,
when ``trust_sim`` is on, the simulation root for evidence whose embedded PCK chain ends in it
(results carry ``sim: true``). Collateral: a configured bundle directory per TEE, else the
configured provider (the simulator's ``SimPlatform.bundle``), cached briefly so the verifier's
collateral-side cache stays warm. Appraisal: the named stored appraisal policy, else the stored
policy ``default``, else the built-in default (UpToDate or SWHardeningNeeded; simulated evidence
only when ``trust_sim`` is on).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from cryptography.hazmat.primitives.serialization import Encoding

from nacre.appraisal import (
    AppraisalResult,
    Policy,
    PolicyDocumentError,
    appraise,
    parse_policy,
    policy_from_dict,
)
from nacre.collateral.bundle import CollateralBundle
from nacre.collateral.trust import TrustRoots
from nacre.errors import (
    LimitExceededError,
    MalformedEvidenceError,
    NacreError,
    UsageError,
    VerificationError,
)
from nacre.evidence import detect_kind
from nacre.limits import MAX_EVIDENCE_BYTES
from nacre.server.config import ServerConfig
from nacre.server.problems import Problem
from nacre.store import NotFoundError, Store
from nacre.store import Policy as StoredPolicy
from nacre.verify import VerifiedEvidence, verify

__all__ = ["COLLATERAL_CACHE_SECONDS", "DEFAULT_POLICY_ID", "Appraised", "Attester"]

#: How long a provider's or a directory's collateral bundle is reused.
COLLATERAL_CACHE_SECONDS: Final = 300.0
DEFAULT_POLICY_ID: Final = "default"
_TEES: Final = ("sgx", "tdx", "snp")
#: DCAP quote header ``tee_type`` (offset 4, u32 LE): 0 SGX, 0x81 TDX.
_DCAP_TEE_TYPES: Final = {0x00: "sgx", 0x81: "tdx"}


class _NotRead:
    """The type of :data:`_NOT_READ`: the caller has not read the policy row."""


_NOT_READ: Final = _NotRead()


@dataclass(frozen=True, slots=True)
class Appraised:
    verified: VerifiedEvidence
    result: AppraisalResult
    policy_id: str


class Attester:
    def __init__(self, config: ServerConfig, store: Store) -> None:
        self._config = config
        self._store = store
        self._trust = config.trust or TrustRoots.default()
        self._sim: TrustRoots | None = None
        self._sim_pems: tuple[bytes, ...] = ()
        if config.trust_sim:
            self._sim = config.sim_trust or TrustRoots.simulation()
            self._sim_pems = tuple(c.public_bytes(Encoding.PEM) for c in self._sim.intel)
        self._lock = threading.Lock()
        self._bundles: dict[str, tuple[float, CollateralBundle]] = {}
        #: Parsed appraisal policies by id, with the document each came from (reused only for
        #: that same document: exact whatever replica changed the row).
        self._policies: dict[str, tuple[str, Policy]] = {}
        self._default = policy_from_dict(
            {
                "version": 1,
                "name": "nacre-default",
                "tcb_status": ["UpToDate", "SWHardeningNeeded"],
                "allow_sim": config.trust_sim,
            }
        )

    # -- collateral and trust -------------------------------------------------------------------

    def collateral(self, tee: str) -> CollateralBundle:
        now = time.monotonic()
        with self._lock:
            cached = self._bundles.get(tee)
            if cached is not None and now - cached[0] < COLLATERAL_CACHE_SECONDS:
                return cached[1]
        directory = self._config.collateral_dirs.get(tee)
        try:
            if directory is not None:
                bundle = CollateralBundle.from_dir(directory)
            elif self._config.collateral_provider is not None:
                bundle = self._config.collateral_provider(tee)
            else:
                raise Problem(
                    503,
                    "no collateral source for this TEE",
                    kind="CollateralUnavailable",
                    code="COLLATERAL_UNAVAILABLE",
                    field="tee",
                    expected="a collateral directory or provider configured for it",
                    actual=tee,
                )
        except NacreError as exc:
            raise Problem.from_error(503, exc, kind="CollateralUnavailable") from None
        with self._lock:
            self._bundles[tee] = (now, bundle)
        return bundle

    def trust_for(self, evidence: bytes) -> TrustRoots:
        if self._sim is not None and any(pem in evidence for pem in self._sim_pems):
            return self._sim
        return self._trust

    # -- verification ---------------------------------------------------------------------------

    def verify(
        self, evidence: bytes, *, tee: str, now: datetime, kbs: bool = False
    ) -> VerifiedEvidence:
        """Verify ``evidence`` claimed to be from ``tee``; refusals become 400/403 problems."""
        if len(evidence) > MAX_EVIDENCE_BYTES:
            raise Problem(
                400,
                "evidence is over its size limit",
                kind="AttestationError",
                kbs=kbs,
                code="LIMIT_EXCEEDED",
                field="evidence",
                expected=f"<= {MAX_EVIDENCE_BYTES} bytes",
                actual=f"{len(evidence)} bytes",
            )
        claimed = _evidence_tee(evidence)
        if claimed is not None and claimed != tee:
            raise Problem(
                400,
                "evidence is from another TEE than the request names",
                kind="AttestationError",
                kbs=kbs,
                code="TEE_MISMATCH",
                check="tee",
                field="tee",
                expected=tee,
                actual=claimed,
            )
        bundle = self.collateral(tee)
        try:
            verified = verify(evidence, collateral=bundle, now=now, trust=self.trust_for(evidence))
        except (MalformedEvidenceError, LimitExceededError) as exc:
            raise Problem.from_error(
                400,
                exc,
                kind="AttestationError",
                title="evidence is malformed",
                kbs=kbs,
                check="evidence",
            ) from None
        except VerificationError as exc:
            raise Problem.from_error(
                403,
                exc,
                kind="AttestationError",
                title="evidence does not verify",
                kbs=kbs,
                check=f"verify.{exc.step}" if exc.step else "verify",
            ) from None
        except UsageError as exc:
            raise Problem.from_error(
                400, exc, kind="AttestationError", title="evidence refused", kbs=kbs
            ) from None
        if verified.tee != tee:
            raise Problem(
                400,
                "evidence is from another TEE than the request names",
                kind="AttestationError",
                kbs=kbs,
                code="TEE_MISMATCH",
                check="tee",
                field="tee",
                expected=tee,
                actual=verified.tee,
            )
        return verified

    # -- appraisal ------------------------------------------------------------------------------

    def policy(self, policy_id: str | None) -> tuple[str, Policy]:
        wanted = policy_id or DEFAULT_POLICY_ID
        try:
            stored: StoredPolicy | None = self._store.get_policy(wanted)
        except NotFoundError:
            stored = None
        except UsageError as exc:
            raise Problem.from_error(400, exc, kind="BadRequest") from None
        return self.resolve_policy(policy_id, stored)

    def resolve_policy(
        self, policy_id: str | None, stored: StoredPolicy | None
    ) -> tuple[str, Policy]:
        """The appraisal policy for ``policy_id`` (None: the stored ``default``, else the built-in
        one) given ``stored``, the row of that id just read (None: no such row)."""
        if stored is None:
            if policy_id is None:
                return DEFAULT_POLICY_ID, self._default
            raise Problem(
                400,
                "no such appraisal policy",
                kind="PolicyNotFound",
                code="NOT_FOUND",
                field="policy_id",
                expected="a stored appraisal policy id",
                actual=policy_id,
            )
        if stored.kind != "appraisal":
            raise Problem(
                400,
                "the policy is not an appraisal policy",
                kind="PolicyNotFound",
                code="POLICY_KIND",
                field="policy_id",
                expected="appraisal",
                actual=stored.kind,
            )
        with self._lock:
            cached = self._policies.get(stored.id)
        if cached is not None and cached[0] == stored.document:
            return stored.id, cached[1]
        try:
            parsed = parse_policy(stored.document, source=f"policy {stored.id}")
        except PolicyDocumentError as exc:
            raise Problem.from_error(500, exc, kind="PolicyEngine") from None
        with self._lock:
            self._policies[stored.id] = (stored.document, parsed)
        return stored.id, parsed

    def appraise(
        self,
        evidence: bytes,
        *,
        tee: str,
        now: datetime,
        policy_id: str | None,
        kbs: bool = False,
        stored: StoredPolicy | _NotRead | None = _NOT_READ,
    ) -> Appraised:
        """Verify and appraise ``evidence``. ``stored``: the row of the policy (``policy_id``, or
        ``default`` when None) the caller has just read with its own query (None: no such row);
        read here when not given."""
        if isinstance(stored, _NotRead):
            pid, policy = self.policy(policy_id)
        else:
            pid, policy = self.resolve_policy(policy_id, stored)
        verified = self.verify(evidence, tee=tee, now=now, kbs=kbs)
        return Appraised(verified, appraise(verified, policy), pid)


def _evidence_tee(evidence: bytes) -> str | None:
    """The TEE a piece of evidence says it is from (None when it is too short to say)."""
    try:
        kind = detect_kind(evidence)
    except NacreError:
        return None
    if kind != "dcap":
        return "snp"
    if len(evidence) < 8:
        return None
    return _DCAP_TEE_TYPES.get(int.from_bytes(evidence[4:8], "little"))


def known_tee(tee: str) -> bool:
    return tee in _TEES
