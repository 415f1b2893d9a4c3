"""``nacre k8s node-agent``: publish this node's TEE facts as ``nacre.dev/`` labels and annotations.

Facts come from :func:`nacre.node.discover` (TEE, FLC, EPC), CPUID leaf 0x12 (SGX KSS), the
installed containerd shims (Kata, RunD) and, where a TEE backend can quote, the quote's PCK
certificate (FMSPC) and its verification against configured collateral (TCB status). They are
written with the official Kubernetes client as a JSON merge patch that names only the agent's own
keys (:mod:`nacre.k8s.nodeagent.labels`).
"""

from __future__ import annotations

from nacre.k8s.nodeagent.agent import (
    DEFAULT_INTERVAL_SECONDS,
    PATCH_CONTENT_TYPE,
    AgentConfig,
    NodeAgent,
    PassResult,
)
from nacre.k8s.nodeagent.attestation import AttestationFacts, CollateralSource
from nacre.k8s.nodeagent.facts import NodeFacts, NodeMetadata, collect, desired_metadata
from nacre.k8s.nodeagent.labels import OWN_ANNOTATIONS, OWN_LABELS
from nacre.k8s.nodeagent.patch import own_keys_patch

__all__ = [
    "DEFAULT_INTERVAL_SECONDS",
    "OWN_ANNOTATIONS",
    "OWN_LABELS",
    "PATCH_CONTENT_TYPE",
    "AgentConfig",
    "AttestationFacts",
    "CollateralSource",
    "NodeAgent",
    "NodeFacts",
    "NodeMetadata",
    "PassResult",
    "collect",
    "desired_metadata",
    "own_keys_patch",
]
