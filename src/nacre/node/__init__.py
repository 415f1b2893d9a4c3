"""Node discovery: which TEE this machine offers and what is missing to use it (``nacre node check``)."""

from __future__ import annotations

from nacre.node.discovery import (
    EpcNode,
    Finding,
    Identity,
    KernelVersion,
    NodeReport,
    Status,
    TeeName,
    discover,
)

__all__ = [
    "EpcNode",
    "Finding",
    "Identity",
    "KernelVersion",
    "NodeReport",
    "Status",
    "TeeName",
    "discover",
]
