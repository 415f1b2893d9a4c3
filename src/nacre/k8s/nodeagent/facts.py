"""What the node agent publishes: every fact about the node, as labels and annotations.

:func:`collect` gathers the facts (node discovery, CPUID, sandbox shims, attestation);
:func:`desired_metadata` turns them into the agent's own labels and its ``nacre.dev/node-report``
annotation. A label whose value is unknown is left off, and the report says why; a computed value
that is not a valid label value is left off the same way (never sent to the API server).

``nacre.dev/tee`` names a TEE only when discovery found it *usable*; a TEE with missing pieces is
``none`` (scheduling confidential pods there would fail), and the report shows what was detected
and what is missing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from nacre.k8s.nodeagent.attestation import AttestationFacts, CollateralSource, attestation_facts
from nacre.k8s.nodeagent.cpuid import KssProbe, sgx_kss
from nacre.k8s.nodeagent.labels import (
    ANNOTATION_NODE_REPORT,
    LABEL_EPC_MIB,
    LABEL_FMSPC,
    LABEL_SANDBOX_RUNTIME,
    LABEL_SGX_FLC,
    LABEL_SGX_KSS,
    LABEL_TCB_STATUS,
    LABEL_TEE,
    InvalidLabelValueError,
    check_label_value,
)
from nacre.k8s.nodeagent.runtimes import InstalledShim, sandbox_runtimes
from nacre.node import NodeReport, discover

__all__ = [
    "MAX_REPORT_TEXT_CHARS",
    "NodeFacts",
    "NodeMetadata",
    "collect",
    "desired_metadata",
]

#: Each free-text field of a finding in the node report is cut to this length (annotations share
#: a 256 KiB budget per object; the report stays a few KiB).
MAX_REPORT_TEXT_CHARS: Final = 200
#: Version of the node-report JSON layout.
REPORT_FORMAT: Final = 1


@dataclass(frozen=True, slots=True)
class NodeFacts:
    report: NodeReport
    kss: KssProbe | None  # None: not looked at (no usable SGX)
    shims: tuple[InstalledShim, ...]
    attestation: AttestationFacts


@dataclass(frozen=True, slots=True)
class NodeMetadata:
    """The agent's own labels and annotations (without ``updated-at``) as they should be."""

    labels: Mapping[str, str]
    annotations: Mapping[str, str]


def collect(
    root: str | os.PathLike[str],
    *,
    collateral: CollateralSource | None,
    now: datetime,
    environ: Mapping[str, str] | None = None,
) -> NodeFacts:
    """Look at the node under ``root`` (raises UsageError when ``root`` is not a directory)."""
    report = discover(root)
    usable_sgx = report.usable and report.tee == "sgx"
    return NodeFacts(
        report=report,
        kss=sgx_kss(root) if usable_sgx else None,
        shims=sandbox_runtimes(root),
        attestation=attestation_facts(
            root=Path(root), collateral=collateral, now=now, environ=environ
        ),
    )


def _cut(text: str | None) -> str | None:
    if text is None or len(text) <= MAX_REPORT_TEXT_CHARS:
        return text
    return text[: MAX_REPORT_TEXT_CHARS - 1] + "…"


def desired_metadata(facts: NodeFacts) -> NodeMetadata:
    """The labels the facts justify, and the node report (compact, key-sorted JSON)."""
    report = facts.report
    candidates: dict[str, str | None] = {}
    absent: dict[str, str] = {}
    tee = report.tee if report.usable else "none"
    candidates[LABEL_TEE] = tee
    if tee == "sgx":
        candidates[LABEL_SGX_FLC] = "true" if "sgx_lc" in report.flags else "false"
        kss = facts.kss
        if kss is not None and kss.supported is not None:
            candidates[LABEL_SGX_KSS] = "true" if kss.supported else "false"
        elif kss is not None:
            absent[LABEL_SGX_KSS] = kss.reason
        if report.epc_mib is not None:
            candidates[LABEL_EPC_MIB] = str(report.epc_mib)
        else:
            absent[LABEL_EPC_MIB] = "the kernel does not report the EPC size (sgx_total_bytes)"
    att = facts.attestation
    if att.fmspc is not None:
        candidates[LABEL_FMSPC] = att.fmspc
    if att.tcb_status is not None:
        candidates[LABEL_TCB_STATUS] = att.tcb_status
    absent.update(att.reasons)
    if facts.shims:
        candidates[LABEL_SANDBOX_RUNTIME] = facts.shims[0].runtime
    else:
        absent[LABEL_SANDBOX_RUNTIME] = "no containerd-shim-kata-v2 / -rund-v2 / -rune-v2 found"

    labels: dict[str, str] = {}
    for key, value in candidates.items():
        if value is None:
            continue
        try:
            labels[key] = check_label_value(key, value)
        except InvalidLabelValueError as exc:
            absent[key] = exc.message

    document: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "detected": report.tee,
        "usable": report.usable,
        "kernel": None if report.kernel is None else report.kernel.release,
        "epc_mib": report.epc_mib,
        "findings": [
            {
                "check": f.check,
                "status": f.status,
                "seen": _cut(f.seen),
                **({"advice": _cut(f.advice)} if f.advice else {}),
            }
            for f in report.findings
        ],
        "sgx_kss": None if facts.kss is None else _cut(facts.kss.reason),
        "sandbox_shims": [s.path for s in facts.shims],
        "quote_tee": att.tee,
        "sim": att.sim,
        "absent": {k: _cut(v) for k, v in sorted(absent.items()) if k not in labels},
    }
    text = json.dumps(document, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    return NodeMetadata(labels=labels, annotations={ANNOTATION_NODE_REPORT: text})
