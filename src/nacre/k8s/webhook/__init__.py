"""nacre's Kubernetes admission webhook (AdmissionReview v1) for confidential sandboxed pods.

    from nacre.k8s.webhook import WebhookConfig, create_app
    app = create_app(WebhookConfig(runtime_class="kata", kbs_url="https://kbs.example"))

The mutating paths give a confidential pod its sandboxed RuntimeClass, EPC, AESM socket, KBS
environment, node affinity and secrets init container (:mod:`.mutate`); the validating paths
refuse risky pod settings with a message naming each field (:mod:`.validate`).
:class:`ReloadingCertificate` serves TLS and picks up a rotated certificate without a restart.
"""

from __future__ import annotations

from nacre.k8s.webhook.app import PATHS, Mode, create_app, decide
from nacre.k8s.webhook.config import (
    DEFAULT_INIT_IMAGE,
    DEFAULT_KBS_URL,
    DEFAULT_RUNTIME_CLASS,
    DEFAULT_SANDBOXED_CLASSES,
    EPC_FLAVOURS,
    WebhookConfig,
)
from nacre.k8s.webhook.mutate import mutate_pod
from nacre.k8s.webhook.review import (
    MAX_REVIEW_BYTES,
    AdmissionRequest,
    MalformedReviewError,
    parse_review,
)
from nacre.k8s.webhook.validate import confidential_violations, untrusted_violations
from nacre.tlsfiles import RELOAD_CHECK_SECONDS, ReloadingCertificate

__all__ = [
    "DEFAULT_INIT_IMAGE",
    "DEFAULT_KBS_URL",
    "DEFAULT_RUNTIME_CLASS",
    "DEFAULT_SANDBOXED_CLASSES",
    "EPC_FLAVOURS",
    "MAX_REVIEW_BYTES",
    "PATHS",
    "RELOAD_CHECK_SECONDS",
    "AdmissionRequest",
    "MalformedReviewError",
    "Mode",
    "ReloadingCertificate",
    "WebhookConfig",
    "confidential_violations",
    "create_app",
    "decide",
    "mutate_pod",
    "parse_review",
    "untrusted_violations",
]
