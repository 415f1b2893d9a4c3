"""The node agent's own label and annotation keys, and the rules their values must follow.

The agent owns exactly the keys listed here (a closed set in the ``nacre.dev/`` domain). It sets
them, and removes one only when it is on the node and no longer applies; any other key, including
other ``nacre.dev/`` keys a person or another tool sets, is never touched.

Label values follow Kubernetes' rule (``k8s.io/apimachinery`` ``IsValidLabelValue``): empty, or at
most 63 characters of ``[A-Za-z0-9._-]`` beginning and ending with an alphanumeric character.
"""

from __future__ import annotations

import re
from typing import Final

from nacre.errors import NacreError

__all__ = [
    "ANNOTATION_NODE_REPORT",
    "ANNOTATION_UPDATED_AT",
    "DOMAIN",
    "LABEL_EPC_MIB",
    "LABEL_FMSPC",
    "LABEL_SANDBOX_RUNTIME",
    "LABEL_SGX_FLC",
    "LABEL_SGX_KSS",
    "LABEL_TCB_STATUS",
    "LABEL_TEE",
    "MAX_LABEL_VALUE_CHARS",
    "OWN_ANNOTATIONS",
    "OWN_LABELS",
    "InvalidLabelValueError",
    "check_label_value",
    "check_node_name",
]

DOMAIN: Final = "nacre.dev/"
LABEL_TEE: Final = "nacre.dev/tee"
LABEL_SGX_FLC: Final = "nacre.dev/sgx-flc"
LABEL_SGX_KSS: Final = "nacre.dev/sgx-kss"
LABEL_EPC_MIB: Final = "nacre.dev/epc-mib"
LABEL_FMSPC: Final = "nacre.dev/fmspc"
LABEL_TCB_STATUS: Final = "nacre.dev/tcb-status"
LABEL_SANDBOX_RUNTIME: Final = "nacre.dev/sandbox-runtime"
ANNOTATION_NODE_REPORT: Final = "nacre.dev/node-report"
ANNOTATION_UPDATED_AT: Final = "nacre.dev/updated-at"

OWN_LABELS: Final = frozenset(
    {
        LABEL_TEE,
        LABEL_SGX_FLC,
        LABEL_SGX_KSS,
        LABEL_EPC_MIB,
        LABEL_FMSPC,
        LABEL_TCB_STATUS,
        LABEL_SANDBOX_RUNTIME,
    }
)
OWN_ANNOTATIONS: Final = frozenset({ANNOTATION_NODE_REPORT, ANNOTATION_UPDATED_AT})

#: Kubernetes' limit on a label value (and on a label key's name part).
MAX_LABEL_VALUE_CHARS: Final = 63
#: Kubernetes' limit on a DNS subdomain such as a node name.
MAX_NODE_NAME_CHARS: Final = 253

_LABEL_VALUE: Final = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_DNS_SUBDOMAIN: Final = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)


class InvalidLabelValueError(NacreError):
    """A value the agent computed is not a valid Kubernetes label value (it is left off)."""

    default_code = "K8S_LABEL_INVALID"


def check_label_value(key: str, value: str) -> str:
    """``value`` if Kubernetes accepts it as the value of label ``key``; raise otherwise."""
    if len(value) > MAX_LABEL_VALUE_CHARS or _LABEL_VALUE.match(value) is None:
        raise InvalidLabelValueError(
            f"{value[:80]!r} is not a valid value for label {key}",
            field=key,
            expected=f"<= {MAX_LABEL_VALUE_CHARS} characters of [A-Za-z0-9._-], alphanumeric "
            "at both ends",
            actual=f"{len(value)} characters: {value[:80]!r}",
        )
    return value


def check_node_name(name: str) -> str:
    """``name`` if it is a valid node name (an RFC 1123 DNS subdomain); raise UsageError otherwise."""
    from nacre.errors import UsageError

    if not name or len(name) > MAX_NODE_NAME_CHARS or _DNS_SUBDOMAIN.match(name) is None:
        raise UsageError(
            "the node name is not a valid Kubernetes node name",
            field="--node-name",
            expected=f"a DNS subdomain: <= {MAX_NODE_NAME_CHARS} characters of [a-z0-9.-], "
            "alphanumeric at both ends of each label",
            actual=repr(name[:80]),
            hint="pass the node's name from the downward API: env NODE_NAME from "
            "fieldRef spec.nodeName",
        )
    return name
