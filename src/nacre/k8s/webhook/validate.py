"""The validating half: which pod settings a confidential (or untrusted) pod may not have.

A confidential pod is refused when any container (init, app or ephemeral) is privileged, allows
privilege escalation or adds capabilities; when the pod shares the host's PID, IPC or network
namespace; when it mounts a hostPath other than the AESM socket directory the webhook itself
injects (exactly ``nacre-aesmd`` = hostPath ``/var/run/aesmd``, type Directory); when its
RuntimeClass is missing or not one of the configured sandboxed classes; and when its
``nacre.dev/`` annotations are unusable. Every violation is listed, each naming the field path,
its value and the rule, in a fixed order (runtime class, host namespaces, volumes, containers,
annotations).

In an untrusted namespace every pod must name a sandboxed RuntimeClass; nothing else is checked.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nacre.k8s.webhook.config import AESM_DIR, AESM_VOLUME, WebhookConfig
from nacre.k8s.webhook.pod import (
    CONTAINER_LISTS,
    Violation,
    container_list,
    list_at,
    object_at,
    read_intent,
    spec_of,
)
from nacre.k8s.webhook.review import MalformedReviewError, shown

__all__ = ["confidential_violations", "untrusted_violations"]

_HOST_NAMESPACES = (
    ("hostNetwork", "network namespace"),
    ("hostPID", "PID namespace"),
    ("hostIPC", "IPC namespace"),
)


def _flag(holder: Mapping[str, Any], key: str, where: str) -> bool:
    value = holder.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise MalformedReviewError(
            f"{where} is not a boolean", field=where, expected="true or false", actual=shown(value)
        )
    return value


def _runtime_class(spec: Mapping[str, Any], config: WebhookConfig, who: str) -> list[Violation]:
    value = spec.get("runtimeClassName")
    if value is not None and not isinstance(value, str):
        raise MalformedReviewError(
            "spec.runtimeClassName is not a string",
            field="spec.runtimeClassName",
            expected="a string",
            actual=shown(value),
        )
    if value and value in config.sandboxed_classes:
        return []
    state = "is not set" if not value else f"is {shown(value)}"
    rule = f"{who} must run in a sandboxed RuntimeClass (one of {config.sandboxed_list()})"
    return [Violation(f"spec.runtimeClassName {state}: {rule}")]


def _is_injected_aesm(volume: Mapping[str, Any]) -> bool:
    return volume.get("name") == AESM_VOLUME and volume.get("hostPath") == {
        "path": AESM_DIR,
        "type": "Directory",
    }


def _volumes(spec: Mapping[str, Any]) -> list[Violation]:
    found: list[Violation] = []
    for i, volume in enumerate(list_at(spec, "volumes", "spec.volumes") or []):
        where = f"spec.volumes[{i}]"
        if not isinstance(volume, dict):
            raise MalformedReviewError(
                f"{where} is not a JSON object",
                field=where,
                expected="a volume",
                actual=shown(volume),
            )
        host_path = object_at(volume, "hostPath", f"{where}.hostPath")
        if host_path is None or _is_injected_aesm(volume):
            continue
        found.append(
            Violation(
                f"{where}.hostPath.path is {shown(host_path.get('path'))}: confidential pods must "
                f"not mount host paths (only nacre's AESM volume {AESM_VOLUME} of {AESM_DIR})"
            )
        )
    return found


def _containers(spec: Mapping[str, Any]) -> list[Violation]:
    found: list[Violation] = []
    for key in CONTAINER_LISTS:
        for i, container in enumerate(container_list(spec, key)):
            where = f"spec.{key}[{i}].securityContext"
            context = object_at(container, "securityContext", where) or {}
            if _flag(context, "privileged", f"{where}.privileged"):
                found.append(
                    Violation(
                        f"{where}.privileged is true: confidential pods must not be privileged"
                    )
                )
            if _flag(context, "allowPrivilegeEscalation", f"{where}.allowPrivilegeEscalation"):
                found.append(
                    Violation(
                        f"{where}.allowPrivilegeEscalation is true: confidential pods must not "
                        "allow privilege escalation"
                    )
                )
            caps = object_at(context, "capabilities", f"{where}.capabilities") or {}
            added = list_at(caps, "add", f"{where}.capabilities.add") or []
            if added:
                found.append(
                    Violation(
                        f"{where}.capabilities.add is {shown(added)}: confidential pods must not "
                        "add capabilities"
                    )
                )
    return found


def confidential_violations(pod: Mapping[str, Any], config: WebhookConfig) -> list[Violation]:
    """Every rule a confidential pod breaks (empty: admit)."""
    spec = spec_of(pod)
    found = _runtime_class(spec, config, "confidential pods")
    for key, what in _HOST_NAMESPACES:
        if _flag(spec, key, f"spec.{key}"):
            found.append(
                Violation(f"spec.{key} is true: confidential pods must not share the host's {what}")
            )
    found += _volumes(spec)
    found += _containers(spec)
    _, problems = read_intent(pod, config)
    return found + problems


def untrusted_violations(pod: Mapping[str, Any], config: WebhookConfig) -> list[Violation]:
    """The rule of untrusted namespaces: a sandboxed RuntimeClass (empty: admit)."""
    return _runtime_class(spec_of(pod), config, "pods in untrusted namespaces")
