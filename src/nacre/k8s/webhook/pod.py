"""Reading a Pod from an AdmissionReview: typed access to its JSON, and what it asks for.

The API server sends pods before schema validation has run on the mutated result, so nothing
is assumed: a field of the wrong JSON type is a :class:`MalformedReviewError` naming it (HTTP
400), and a well-typed but unusable annotation is a :class:`Violation` the response reports.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from nacre.errors import UsageError
from nacre.k8s.initsecrets import SecretSpec, parse_secret_list
from nacre.k8s.webhook.config import (
    ANNOTATION_EPC_MIB,
    ANNOTATION_SECRETS,
    ANNOTATION_SGX_PROVISION,
    ANNOTATION_TEE,
    LABEL_CONFIDENTIAL,
    MAX_EPC_MIB,
    SECRETS_DIR,
    TEES,
    Tee,
    WebhookConfig,
)
from nacre.k8s.webhook.review import MalformedReviewError, shown

__all__ = [
    "CONTAINER_LISTS",
    "Intent",
    "Violation",
    "annotation_field",
    "annotations_of",
    "container_list",
    "is_opted_in",
    "list_at",
    "object_at",
    "read_intent",
    "spec_of",
]

#: The pod's container lists, in the order messages report them.
CONTAINER_LISTS: Final = ("initContainers", "containers", "ephemeralContainers")
_EPC_DIGITS: Final = 7


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken rule: ``text`` names the field, its value and the rule. ``invalid`` marks a
    badly written annotation (HTTP 422 Invalid) rather than a refused setting (403 Forbidden)."""

    text: str
    invalid: bool = False


@dataclass(frozen=True, slots=True)
class Intent:
    """What a confidential pod asks for through its ``nacre.dev/`` annotations."""

    tee: Tee
    epc_mib: int | None
    provision: bool
    secrets: tuple[SecretSpec, ...]


def object_at(parent: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any] | None:
    """``parent[key]`` if it is an object, None if absent or null; else malformed."""
    value = parent.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise MalformedReviewError(
            f"{where} is not a JSON object", field=where, expected="an object", actual=shown(value)
        )
    return value


def list_at(parent: Mapping[str, Any], key: str, where: str) -> list[Any] | None:
    """``parent[key]`` if it is an array, None if absent or null; else malformed."""
    value = parent.get(key)
    if value is None:
        return None
    if not isinstance(value, list):
        raise MalformedReviewError(
            f"{where} is not a JSON array", field=where, expected="an array", actual=shown(value)
        )
    return value


def spec_of(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    spec = object_at(pod, "spec", "spec")
    if spec is None:
        raise MalformedReviewError(
            "the pod has no spec", field="spec", expected="an object", actual="none"
        )
    return spec


def container_list(spec: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    """``spec[key]`` (a container list) with every entry checked to be an object."""
    items = list_at(spec, key, f"spec.{key}") or []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise MalformedReviewError(
                f"spec.{key}[{i}] is not a JSON object",
                field=f"spec.{key}[{i}]",
                expected="a container object",
                actual=shown(item),
            )
    return items


def _string_map(pod: Mapping[str, Any], key: str) -> Mapping[str, str]:
    metadata = object_at(pod, "metadata", "metadata") or {}
    values = object_at(metadata, key, f"metadata.{key}") or {}
    for name, value in values.items():
        if not isinstance(value, str):
            raise MalformedReviewError(
                f"metadata.{key}[{json.dumps(name)}] is not a string",
                field=f"metadata.{key}",
                expected="string values",
                actual=shown(value),
            )
    return values


def annotations_of(pod: Mapping[str, Any]) -> Mapping[str, str]:
    return _string_map(pod, "annotations")


def is_opted_in(pod: Mapping[str, Any]) -> bool:
    """The pod carries ``nacre.dev/confidential: "true"``."""
    return _string_map(pod, "labels").get(LABEL_CONFIDENTIAL) == "true"


def annotation_field(name: str) -> str:
    return f"metadata.annotations[{json.dumps(name)}]"


def _epc(value: str | None) -> tuple[int | None, Violation | None]:
    where = annotation_field(ANNOTATION_EPC_MIB)
    rule = f"a whole number of MiB from 1 to {MAX_EPC_MIB}"
    if value is None:
        return None, Violation(
            f"{where} is missing: SGX pods must say how much EPC they need ({rule})", invalid=True
        )
    text = value.strip()
    if not text.isdigit() or not text.isascii() or len(text) > _EPC_DIGITS:
        number = None
    else:
        number = int(text)
    if number is None or not 1 <= number <= MAX_EPC_MIB:
        return None, Violation(f"{where} is {shown(value)}: must be {rule}", invalid=True)
    return number, None


def read_intent(pod: Mapping[str, Any], config: WebhookConfig) -> tuple[Intent, list[Violation]]:
    """The pod's TEE, EPC, provisioning and secrets, and every annotation that is unusable.

    With violations the returned intent holds safe placeholders and must not be acted on.
    """
    notes = annotations_of(pod)
    problems: list[Violation] = []
    tee_text = notes.get(ANNOTATION_TEE, config.default_tee)
    tee: Tee = config.default_tee
    if tee_text in TEES:
        tee = next(t for t in TEES if t == tee_text)
    else:
        problems.append(
            Violation(
                f"{annotation_field(ANNOTATION_TEE)} is {shown(tee_text)}: "
                f"must be one of {', '.join(TEES)}",
                invalid=True,
            )
        )
    epc_mib: int | None = None
    # Simulated TEEs use no EPC: the annotation is optional then (and checked when given).
    if tee == "sgx" and tee_text in TEES and (not config.simulated or ANNOTATION_EPC_MIB in notes):
        epc_mib, problem = _epc(notes.get(ANNOTATION_EPC_MIB))
        if problem is not None:
            problems.append(problem)
    provision_text = notes.get(ANNOTATION_SGX_PROVISION, "false")
    if provision_text not in ("true", "false"):
        problems.append(
            Violation(
                f"{annotation_field(ANNOTATION_SGX_PROVISION)} is {shown(provision_text)}: "
                'must be "true" or "false"',
                invalid=True,
            )
        )
    secrets: tuple[SecretSpec, ...] = ()
    secrets_text = notes.get(ANNOTATION_SECRETS, "")
    if secrets_text.strip():
        items = [item for item in secrets_text.split(",") if item.strip()]
        try:
            secrets = parse_secret_list(items, SECRETS_DIR)
        except UsageError as exc:
            problems.append(
                Violation(
                    f"{annotation_field(ANNOTATION_SECRETS)} is {shown(secrets_text)}: "
                    f"{exc.message} (expected {exc.expected}, got {shown(exc.actual)})",
                    invalid=True,
                )
            )
    return Intent(tee, epc_mib, provision_text == "true", secrets), problems
