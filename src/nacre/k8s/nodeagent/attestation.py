"""FMSPC and TCB status of this node, "where known": from a fresh quote, and collateral if configured.

1. A TEE backend (:func:`nacre.tee.current`, honouring ``NACRE_TEE``) makes a quote over 64 fresh
   random bytes. No backend, or one that fails: both facts are unknown, and the reason is kept.
2. DCAP quotes (SGX, TDX) carry the PCK certificate chain (certification data type 5); the FMSPC is
   the PCK leaf's SGX extension ``1.2.840.113741.1.13.1.4``. SEV-SNP reports have no FMSPC.
3. Only with a collateral source (a PCS/PCCS URL) is the TCB status looked up: the collateral is
   fetched for this quote and the quote is verified against it (:func:`nacre.verify.verify`) with
   the given trust roots, exactly as ``nacre collateral fetch`` + ``nacre verify`` do. A quote that
   does not verify gets no TCB label: the reason names the failed check.

Nothing here raises for a missing fact: each absent one comes with a reason for the node report.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from nacre.collateral.certs import load_pem_chain
from nacre.collateral.fetch import fetch_collateral
from nacre.collateral.pck import parse_pck_extensions
from nacre.collateral.pcs import PcsClient
from nacre.collateral.trust import TrustRoots
from nacre.errors import NacreError
from nacre.evidence import detect_kind, parse_quote
from nacre.k8s.nodeagent.labels import LABEL_FMSPC, LABEL_TCB_STATUS
from nacre.tee import REPORT_DATA_SIZE, current
from nacre.verify import verify

__all__ = ["AttestationFacts", "CollateralSource", "attestation_facts"]


@dataclass(frozen=True, slots=True)
class CollateralSource:
    """Where TCB info comes from (``--pccs``) and whose signatures are trusted."""

    pccs_url: str
    ca_bundle: Path | None = None
    trust: TrustRoots | None = None  # None: the pinned Intel root


@dataclass(frozen=True, slots=True)
class AttestationFacts:
    tee: str | None  # the kind of evidence quoted, None when no backend could quote
    fmspc: str | None  # lower-case hex
    tcb_status: str | None
    sim: bool = False  # verified against nacre's simulation root
    reasons: Mapping[str, str] = field(default_factory=dict)  # absent label → why


def _error(exc: NacreError) -> str:
    return f"[{exc.code}] {exc.message}"


def attestation_facts(
    *,
    root: str | os.PathLike[str],
    collateral: CollateralSource | None,
    now: datetime,
    environ: Mapping[str, str] | None = None,
) -> AttestationFacts:
    """What a fresh quote (and, with ``collateral``, its verification) says about this node."""
    # 1. A fresh quote.
    try:
        backend = current(Path(root), environ=environ)
        evidence = backend.quote(secrets.token_bytes(REPORT_DATA_SIZE))
    except (NacreError, OSError) as exc:
        detail = _error(exc) if isinstance(exc, NacreError) else f"{type(exc).__name__}: {exc}"
        why = f"no TEE backend can quote here: {detail}"
        return AttestationFacts(None, None, None, reasons={LABEL_FMSPC: why, LABEL_TCB_STATUS: why})
    tee = backend.tee
    reasons: dict[str, str] = {}

    # 2. FMSPC from the PCK leaf.
    fmspc: str | None = None
    if detect_kind(evidence) != "dcap":
        reasons[LABEL_FMSPC] = f"{tee} evidence carries no FMSPC (DCAP quotes only)"
        reasons[LABEL_TCB_STATUS] = f"TCB status is looked up for DCAP quotes only, not {tee}"
        return AttestationFacts(tee, None, None, reasons=reasons)
    try:
        chain = load_pem_chain(parse_quote(evidence).pck_chain_pem, field="PCK certificate chain")
        fmspc = parse_pck_extensions(chain[0]).fmspc.hex()
    except NacreError as exc:
        reasons[LABEL_FMSPC] = f"the quote's PCK certificate gives no FMSPC: {_error(exc)}"

    # 3. TCB status, only with a collateral source.
    if collateral is None:
        reasons[LABEL_TCB_STATUS] = "no collateral source configured (--pccs URL)"
        return AttestationFacts(tee, fmspc, None, reasons=reasons)
    try:
        with PcsClient(collateral.pccs_url, ca_bundle=collateral.ca_bundle) as pcs:
            outcome = fetch_collateral(
                evidence, pcs=pcs, kds=None, cache=None, now=now, trust=collateral.trust
            )
        result = verify(evidence, collateral=outcome.bundle, now=now, trust=collateral.trust)
    except NacreError as exc:
        reasons[LABEL_TCB_STATUS] = (
            f"the quote did not verify against {collateral.pccs_url}: " + _error(exc)
        )
        return AttestationFacts(tee, fmspc, None, reasons=reasons)
    if result.tcb_status is None:
        reasons[LABEL_TCB_STATUS] = "verification gave no TCB status"
    return AttestationFacts(tee, fmspc, result.tcb_status, sim=result.sim, reasons=reasons)
