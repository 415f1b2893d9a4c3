"""The merge patch that brings a node's own-key labels and annotations to what they should be.

The patch is a JSON merge patch (RFC 7386, ``application/merge-patch+json``). Labels and
annotations are plain string maps, where a merge patch sets a key by naming it and deletes one by
naming it with ``null``; keys the patch does not name are left alone. So the patch names only the
agent's own keys that differ (and ``null`` for own keys present on the node that no longer apply):
other keys are untouched even if they change between our GET and our PATCH, and no
``resourceVersion`` precondition is needed (nothing else writes these keys). Strategic merge would
behave the same on maps, but it is specific to built-in types; merge patch is a standard the
test fake can apply exactly.

``nacre.dev/updated-at`` changes only together with another own key, so a node whose facts did not
change gets no patch at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from nacre.k8s.nodeagent.facts import NodeMetadata
from nacre.k8s.nodeagent.labels import ANNOTATION_UPDATED_AT, OWN_ANNOTATIONS, OWN_LABELS

__all__ = ["current_metadata", "own_keys_patch", "rfc3339"]


def rfc3339(now: datetime) -> str:
    """``2026-11-29T13:24:55Z`` (seconds, UTC)."""
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _string_map(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items() if isinstance(k, str) and v is not None}


def current_metadata(node: Mapping[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """The labels and annotations of a Node object as the API server sent it."""
    meta = node.get("metadata")
    if not isinstance(meta, dict):
        return {}, {}
    return _string_map(meta.get("labels")), _string_map(meta.get("annotations"))


def _delta(
    current: Mapping[str, str], desired: Mapping[str, str], own: frozenset[str]
) -> dict[str, str | None]:
    delta: dict[str, str | None] = {k: v for k, v in desired.items() if current.get(k) != v}
    delta.update({k: None for k in sorted(own) if k in current and k not in desired})
    return delta


def own_keys_patch(
    node: Mapping[str, Any], desired: NodeMetadata, *, now: datetime
) -> dict[str, Any] | None:
    """The merge patch for ``node``, or None when its own keys already say what ``desired`` says."""
    labels, annotations = current_metadata(node)
    for key in (*desired.labels, *desired.annotations):
        if key not in OWN_LABELS | OWN_ANNOTATIONS or key == ANNOTATION_UPDATED_AT:
            raise ValueError(f"{key} is not a key the node agent may set")
    label_delta = _delta(labels, desired.labels, OWN_LABELS)
    annotation_delta = _delta(
        annotations, desired.annotations, OWN_ANNOTATIONS - {ANNOTATION_UPDATED_AT}
    )
    if not label_delta and not annotation_delta:
        return None
    annotation_delta[ANNOTATION_UPDATED_AT] = rfc3339(now)
    metadata: dict[str, Any] = {"annotations": annotation_delta}
    if label_delta:
        metadata["labels"] = label_delta
    return {"metadata": metadata}
