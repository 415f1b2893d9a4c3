"""What the admission webhook is configured with, and the fixed names it writes into pods.

The defaults match the deployment in ``nacre-system``: RuntimeClass ``kata``, the key broker at
the ``nacre`` Service, the nacre image as the init container, and nacre's own EPC device-plugin
resource. Every value is checked when the configuration is made, so a webhook with a bad setting
never starts (fail closed) instead of writing bad pods.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final, Literal

from nacre.errors import UsageError
from nacre.k8s.webhook.kbsca import KbsCaFile
from nacre.sdk import check_kbs_url

__all__ = [
    "AESM_DIR",
    "AESM_VOLUME",
    "ANNOTATION_EPC_MIB",
    "ANNOTATION_SECRETS",
    "ANNOTATION_SGX_PROVISION",
    "ANNOTATION_TEE",
    "DEFAULT_INIT_IMAGE",
    "DEFAULT_KBS_URL",
    "DEFAULT_RUNTIME_CLASS",
    "DEFAULT_SANDBOXED_CLASSES",
    "ENV_KBS_URL",
    "ENV_SIM_DIR",
    "ENV_SIM_TEE",
    "ENV_TEE",
    "EPC_FLAVOURS",
    "INIT_CONTAINER",
    "INIT_CONTAINER_UID",
    "LABEL_CONFIDENTIAL",
    "MAX_EPC_MIB",
    "NODE_LABEL_SANDBOX",
    "NODE_LABEL_TEE",
    "SECRETS_DIR",
    "SECRETS_VOLUME",
    "SECRETS_VOLUME_SIZE",
    "SIM_DIR",
    "SIM_VOLUME",
    "TEES",
    "TEE_BACKENDS",
    "EpcFlavour",
    "Tee",
    "WebhookConfig",
]

Tee = Literal["sgx", "tdx", "snp"]
TEES: Final[tuple[Tee, ...]] = ("sgx", "tdx", "snp")

#: Pod label (and namespace label) that asks for confidential computing.
LABEL_CONFIDENTIAL: Final = "nacre.dev/confidential"
ANNOTATION_TEE: Final = "nacre.dev/tee"
ANNOTATION_EPC_MIB: Final = "nacre.dev/epc-mib"
ANNOTATION_SGX_PROVISION: Final = "nacre.dev/sgx-provision"
ANNOTATION_SECRETS: Final = "nacre.dev/secrets"
#: Node labels published by the node agent; the webhook's node affinity selects on them.
NODE_LABEL_TEE: Final = "nacre.dev/tee"
NODE_LABEL_SANDBOX: Final = "nacre.dev/sandbox-runtime"

#: Environment the SDK reads (``nacre.sdk`` / ``nacre.tee.current``).
ENV_KBS_URL: Final = "NACRE_KBS_URL"
ENV_TEE: Final = "NACRE_TEE"
ENV_SIM_TEE: Final = "NACRE_SIM_TEE"

#: The AESM daemon's socket directory on the host, mounted at the same path in SGX containers.
AESM_DIR: Final = "/var/run/aesmd"
AESM_VOLUME: Final = "nacre-aesmd"
#: Where the init container writes secrets (an in-memory emptyDir, read-only in app containers).
SECRETS_DIR: Final = "/run/nacre/secrets"
SECRETS_VOLUME: Final = "nacre-secrets"
#: Size limit of the secrets emptyDir (memory-backed, so it counts against the pod's memory).
SECRETS_VOLUME_SIZE: Final = "16Mi"
INIT_CONTAINER: Final = "nacre-init-secrets"
#: Development clusters (``--tee-backend sim``): the simulated platform, from a Secret in the
#: pod's namespace, mounted read-only where ``NACRE_SIM_DIR`` points.
SIM_DIR: Final = "/var/run/nacre/sim"
SIM_VOLUME: Final = "nacre-sim-platform"
ENV_SIM_DIR: Final = "NACRE_SIM_DIR"
#: The init container's user when the pod names none (the conventional "nonroot" uid).
INIT_CONTAINER_UID: Final = 65532

DEFAULT_RUNTIME_CLASS: Final = "kata"
#: RuntimeClasses that run a pod in its own VM or enclave sandbox (Kata Containers with its
#: hypervisor and CoCo variants, Alibaba's rund, enclave-cc).
DEFAULT_SANDBOXED_CLASSES: Final = frozenset(
    {
        "kata",
        "kata-qemu",
        "kata-clh",
        "kata-fc",
        "kata-dragonball",
        "kata-qemu-tdx",
        "kata-qemu-snp",
        "kata-qemu-sev",
        "kata-qemu-nvidia-gpu-tdx",
        "kata-qemu-nvidia-gpu-snp",
        "kata-clh-tdx",
        "kata-qemu-coco-dev",
        "rund",
        "enclave-cc",
    }
)
DEFAULT_KBS_URL: Final = "https://nacre.nacre-system.svc:8080"
DEFAULT_INIT_IMAGE: Final = "ghcr.io/nacre-dev/nacre:0.1.0"
#: Largest EPC request accepted from the annotation (1 TiB; today's parts have at most 512 GiB).
MAX_EPC_MIB: Final = 1024 * 1024

#: ``NACRE_TEE`` (the :func:`nacre.tee.current` backend) for each TEE: SGX workloads run under
#: Gramine, TDX and SEV-SNP guests quote through configfs-tsm.
TEE_BACKENDS: Final[dict[Tee, str]] = {"sgx": "gramine", "tdx": "tdx", "snp": "snp"}
_BACKEND_CHOICES: Final = ("sim", "gramine", "tdx", "snp")

_DNS_SUBDOMAIN: Final = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
_IMAGE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,511}")


@dataclass(frozen=True, slots=True)
class EpcFlavour:
    """How one EPC resource is requested: the quantity's unit and its companion resources.

    ``mib_quantity`` formats N MiB as the resource's quantity. ``enclave_resource`` is requested
    as 1 alongside the EPC (Intel maps /dev/sgx_enclave through it); ``provision_resource`` is
    what ``nacre.dev/sgx-provision: "true"`` requests (None: the plugin mounts every SGX device).
    """

    name: str
    unit_suffix: str
    enclave_resource: str | None
    provision_resource: str | None

    def mib_quantity(self, mib: int) -> str:
        return f"{mib}{self.unit_suffix}"


#: The EPC resources the webhook can request: nacre's device plugin (1 device = 1 MiB), Alibaba
#: Cloud's sgx-device-plugin (also MiB), and Intel's node extended resource (bytes, so "Mi").
EPC_FLAVOURS: Final[dict[str, EpcFlavour]] = {
    f.name: f
    for f in (
        EpcFlavour("nacre.dev/sgx-epc-mib", "", None, "nacre.dev/sgx-provision"),
        EpcFlavour("alibabacloud.com/sgx_epc_MiB", "", None, None),
        EpcFlavour("sgx.intel.com/epc", "Mi", "sgx.intel.com/enclave", "sgx.intel.com/provision"),
    )
}


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    """The webhook's settings (see ``nacre k8s webhook --help``).

    ``runtime_class`` is written into confidential pods that name none; ``sandboxed_classes`` is
    the set validation accepts (``runtime_class`` is always in it). ``tee_backend`` overrides the
    ``NACRE_TEE`` written into containers (``sim`` for development clusters without a TEE; None:
    :data:`TEE_BACKENDS`).
    """

    runtime_class: str = DEFAULT_RUNTIME_CLASS
    sandboxed_classes: frozenset[str] = DEFAULT_SANDBOXED_CLASSES
    kbs_url: str = DEFAULT_KBS_URL
    init_image: str = DEFAULT_INIT_IMAGE
    epc_resource: str = "nacre.dev/sgx-epc-mib"
    tee_backend: str | None = None
    default_tee: Tee = "sgx"
    #: The KBS's CA certificates for the init container (None: the KBS has a publicly trusted
    #: certificate, or the pods are given the CA otherwise).
    kbs_ca: KbsCaFile | None = field(default=None, compare=False)
    #: With ``tee_backend="sim"``: the Secret (in each pod's namespace) holding the simulated
    #: platform the KBS trusts (``nacre sim init``), mounted into every container.
    sim_platform_secret: str | None = None
    _flavour: EpcFlavour = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not _DNS_SUBDOMAIN.fullmatch(self.runtime_class):
            raise UsageError(
                "the RuntimeClass name is not a DNS subdomain",
                field="runtime_class",
                expected="lower-case letters, digits, '-' and '.' (e.g. kata, rund)",
                actual=self.runtime_class,
            )
        bad = sorted(c for c in self.sandboxed_classes if not _DNS_SUBDOMAIN.fullmatch(c))
        if bad:
            raise UsageError(
                "a sandboxed RuntimeClass name is not a DNS subdomain",
                field="sandboxed_classes",
                expected="RuntimeClass names such as kata, kata-qemu-tdx, rund",
                actual=", ".join(bad),
            )
        object.__setattr__(
            self, "sandboxed_classes", frozenset(self.sandboxed_classes) | {self.runtime_class}
        )
        object.__setattr__(self, "kbs_url", check_kbs_url(self.kbs_url))
        if not _IMAGE.fullmatch(self.init_image):
            raise UsageError(
                "the init container image is not an image reference",
                field="init_image",
                expected="e.g. ghcr.io/nacre-dev/nacre:0.1.0",
                actual=self.init_image[:200],
            )
        flavour = EPC_FLAVOURS.get(self.epc_resource)
        if flavour is None:
            raise UsageError(
                "unknown EPC resource name",
                field="epc_resource",
                expected=", ".join(EPC_FLAVOURS),
                actual=self.epc_resource,
            )
        object.__setattr__(self, "_flavour", flavour)
        if self.tee_backend is not None and self.tee_backend not in _BACKEND_CHOICES:
            raise UsageError(
                "unknown TEE backend for NACRE_TEE",
                field="tee_backend",
                expected=", ".join(_BACKEND_CHOICES),
                actual=self.tee_backend,
            )
        if self.sim_platform_secret is not None and (
            self.tee_backend != "sim" or not _DNS_SUBDOMAIN.fullmatch(self.sim_platform_secret)
        ):
            raise UsageError(
                "a simulated-platform Secret applies only to --tee-backend sim",
                field="sim_platform_secret",
                expected="a Secret name, with --tee-backend sim",
                actual=f"{self.sim_platform_secret} with --tee-backend {self.tee_backend}",
            )
        if self.default_tee not in TEES:
            raise UsageError(
                "unknown default TEE",
                field="default_tee",
                expected=", ".join(TEES),
                actual=str(self.default_tee),
            )

    @property
    def epc(self) -> EpcFlavour:
        """The EPC resource flavour selected by :attr:`epc_resource`."""
        return self._flavour

    @property
    def simulated(self) -> bool:
        """Pods get the simulated TEE: no EPC, AESM or TEE node affinity (no TEE hardware)."""
        return self.tee_backend == "sim"

    def backend_for(self, tee: Tee) -> str:
        """The ``NACRE_TEE`` value for pods of ``tee``."""
        return self.tee_backend if self.tee_backend is not None else TEE_BACKENDS[tee]

    def sandboxed_list(self) -> str:
        """The sandboxed classes as messages show them (sorted, comma-separated)."""
        return ", ".join(sorted(self.sandboxed_classes))
