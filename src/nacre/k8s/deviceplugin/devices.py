"""The devices nacre's SGX device plugin advertises, and how a set of them is chosen.

Two resources come from one process:

- **EPC** (``nacre.dev/sgx-epc-mib`` by default; ``alibabacloud.com/sgx_epc_MiB`` and
  ``sgx.intel.com/epc`` selectable): one device per MiB of EPC, so a container asking for
  ``N`` of the resource is granted ``N`` MiB. IDs are ``epc-<numa node>-<index>`` when the kernel
  says which NUMA node holds the EPC (``sgx_total_bytes``), ``epc-<index>`` otherwise. Every EPC
  allocation maps ``/dev/sgx_enclave``. EPC is scheduler bookkeeping: the kernel does not enforce it
  per container (platform-anchors §3.2/§3.3).
- **Provisioning** (``nacre.dev/sgx-provision``): a fixed pool of interchangeable devices, each
  mapping ``/dev/sgx_provision`` (the PCK-certificate provisioning key, needed only by in-process
  DCAP quoting), so a pod gets that device only when it asks for it.

Everything here is pure: no gRPC, no filesystem except :func:`device_usable`.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from nacre.errors import UsageError
from nacre.node import EpcNode

__all__ = [
    "AESM_SOCKET_DIR",
    "DEFAULT_EPC_RESOURCE",
    "DEVICE_PERMISSIONS",
    "ENV_AESM_ADDR",
    "ENV_EPC_MIB",
    "EPC_RESOURCE_NAMES",
    "HEALTHY",
    "MAX_ADVERTISED_EPC_MIB",
    "MAX_DEVICE_ID_LENGTH",
    "PROVISION_POOL_SIZE",
    "PROVISION_RESOURCE",
    "SGX_ENCLAVE_DEVICE",
    "SGX_PROVISION_DEVICE",
    "UNHEALTHY",
    "AllocationRequestError",
    "DevicePool",
    "DeviceSlot",
    "PoolKind",
    "device_usable",
    "epc_pool",
    "preferred_allocation",
    "provision_pool",
    "resource_suffix",
]

#: The resource names an EPC plugin may advertise (nacre's own, Alibaba ACK's, Intel's).
DEFAULT_EPC_RESOURCE: Final = "nacre.dev/sgx-epc-mib"
EPC_RESOURCE_NAMES: Final = (
    DEFAULT_EPC_RESOURCE,
    "alibabacloud.com/sgx_epc_MiB",
    "sgx.intel.com/epc",
)
PROVISION_RESOURCE: Final = "nacre.dev/sgx-provision"

#: Health words of the API (k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1/constants.go).
HEALTHY: Final = "Healthy"
UNHEALTHY: Final = "Unhealthy"
#: Device IDs are at most 63 characters (api.proto, Device.ID).
MAX_DEVICE_ID_LENGTH: Final = 63

#: Device nodes as the container runtime sees them on the host (``--root`` only moves discovery).
SGX_ENCLAVE_DEVICE: Final = "/dev/sgx_enclave"
SGX_PROVISION_DEVICE: Final = "/dev/sgx_provision"
#: cgroup device permissions granted: read and write, no mknod.
DEVICE_PERMISSIONS: Final = "rw"
#: AESM socket directory, the same path on the host and in the container.
AESM_SOCKET_DIR: Final = "/var/run/aesmd"
#: Environment set in EPC containers: the granted MiB, and the AESM-over-socket switch that Intel's
#: PSW client libraries read (as Intel's webhook sets it when it mounts /var/run/aesmd).
ENV_EPC_MIB: Final = "NACRE_SGX_EPC_MIB"
ENV_AESM_ADDR: Final = "SGX_AESM_ADDR"

#: Provisioning devices per node: Intel's plugin default (110 = the kubelet's default max pods).
PROVISION_POOL_SIZE: Final = 110
#: Most EPC devices advertised. One ListAndWatch message carries every device (~32 bytes each) and
#: the kubelet reads it with gRPC's default 4 MiB receive limit; 100 000 devices take about 3 MiB.
#: Larger EPCs are advertised up to this many MiB (a logged, safe under-count).
MAX_ADVERTISED_EPC_MIB: Final = 100_000

_MIB: Final = 1024 * 1024

PoolKind = Literal["epc", "provision"]


@dataclass(frozen=True, slots=True)
class DeviceSlot:
    """One advertised device: its ID and the NUMA node it belongs to (``None``: unknown)."""

    id: str
    numa_node: int | None
    index: int

    @property
    def order(self) -> tuple[int, int]:
        """Sort key: NUMA node (unknown first), then index; IDs are not zero-padded forever."""
        return (-1 if self.numa_node is None else self.numa_node, self.index)


@dataclass(frozen=True, slots=True)
class DevicePool:
    """The devices of one resource, in a fixed order."""

    resource_name: str
    kind: PoolKind
    devices: tuple[DeviceSlot, ...]

    def by_id(self) -> dict[str, DeviceSlot]:
        return {d.id: d for d in self.devices}

    @property
    def size(self) -> int:
        return len(self.devices)


def resource_suffix(resource_name: str) -> str:
    """The socket-name part of a resource name: ``nacre.dev/sgx-epc-mib`` → ``sgx-epc-mib``.

    Underscores and dots become dashes, upper case lower, so every resource gets a tidy
    ``nacre-<suffix>.sock`` (``alibabacloud.com/sgx_epc_MiB`` → ``sgx-epc-mib``: the EPC names are
    alternatives, one at a time, so sharing a socket name is intended).
    """
    domain, sep, name = resource_name.partition("/")
    if not sep or not domain or not name or "/" in name:
        raise UsageError(
            "a resource name is <domain>/<name>",
            field="--resource-name",
            expected=" or ".join(EPC_RESOURCE_NAMES),
            actual=resource_name,
        )
    return name.lower().replace("_", "-").replace(".", "-")


def _check_epc_resource(resource_name: str) -> None:
    if resource_name not in EPC_RESOURCE_NAMES:
        raise UsageError(
            "unknown EPC resource name",
            field="--resource-name",
            expected=" or ".join(EPC_RESOURCE_NAMES),
            actual=resource_name,
            hint="the webhook's --epc-resource must name the same resource",
        )


def _split_mib(total_mib: int, nodes: Sequence[EpcNode]) -> list[tuple[int, int]]:
    """``total_mib`` spread over ``nodes`` in proportion to their EPC; remainders to the first."""
    sizes = [n.size_bytes for n in nodes]
    whole = sum(sizes)
    if whole == 0:
        return [(nodes[0].node, total_mib)] if nodes else []
    shares = [total_mib * s // whole for s in sizes]
    left = total_mib - sum(shares)
    for i in range(len(shares)):
        if left == 0:
            break
        if sizes[i] > 0:
            shares[i] += 1
            left -= 1
    return [(n.node, share) for n, share in zip(nodes, shares, strict=True)]


def epc_pool(
    resource_name: str,
    epc: Sequence[EpcNode] | None,
    *,
    epc_mib: int | None = None,
    max_mib: int = MAX_ADVERTISED_EPC_MIB,
) -> DevicePool:
    """One device per MiB of EPC.

    ``epc`` is what discovery read from sysfs (per NUMA node), ``None`` when the kernel does not
    say. ``epc_mib`` (``--epc-mib``) sets the total: spread over the sysfs nodes in proportion when
    they are known, without topology otherwise. At most ``max_mib`` devices are made.
    """
    _check_epc_resource(resource_name)
    if epc_mib is not None and epc_mib < 0:
        raise UsageError(
            "EPC size cannot be negative", field="--epc-mib", expected=">= 0", actual=epc_mib
        )
    per_node: list[tuple[int | None, int]]
    known = [n for n in epc or () if n.size_bytes > 0]
    if epc_mib is not None:
        per_node = list(_split_mib(epc_mib, known)) if known else [(None, epc_mib)]
    else:
        per_node = [(n.node, n.size_bytes // _MIB) for n in known]
    devices: list[DeviceSlot] = []
    for node, mib in per_node:
        for index in range(mib):
            if len(devices) >= max_mib:
                break
            device_id = f"epc-{index:05d}" if node is None else f"epc-{node}-{index:05d}"
            devices.append(DeviceSlot(device_id, node, index))
    return DevicePool(resource_name, "epc", tuple(devices))


def provision_pool(size: int = PROVISION_POOL_SIZE) -> DevicePool:
    """``size`` interchangeable devices that each map /dev/sgx_provision."""
    if size < 0:
        raise UsageError(
            "provisioning pool size cannot be negative",
            field="--provision-devices",
            expected=">= 0",
            actual=size,
        )
    devices = tuple(DeviceSlot(f"provision-{i:03d}", None, i) for i in range(size))
    return DevicePool(PROVISION_RESOURCE, "provision", devices)


def device_usable(path: str | os.PathLike[str], *, allow_regular_file: bool) -> bool:
    """Whether the device node at ``path`` exists, is a character device, and is readable and
    writable by this process. A regular file stands in for the node in a fake ``--root`` tree."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    kind_ok = stat.S_ISCHR(st.st_mode) or (allow_regular_file and stat.S_ISREG(st.st_mode))
    return kind_ok and os.access(path, os.R_OK | os.W_OK)


class AllocationRequestError(ValueError):
    """A preferred-allocation request that cannot be satisfied; the message says why."""


def preferred_allocation(
    pool: DevicePool,
    available: Iterable[str],
    must_include: Iterable[str],
    size: int,
) -> list[str]:
    """A deterministic choice of ``size`` devices from ``available`` including ``must_include``.

    Prefers one NUMA node (the node of the ``must_include`` devices when they share one and it has
    room, else the lowest node with room), then the lowest IDs; when no single node has room, takes
    nodes with the most free devices first. Raises :class:`AllocationRequestError` naming an
    unknown device ID, or when the request is impossible.
    """
    known = pool.by_id()
    avail_ids = list(dict.fromkeys(available))
    must_ids = list(dict.fromkeys(must_include))
    for device_id in [*avail_ids, *must_ids]:
        if device_id not in known:
            raise AllocationRequestError(
                f"unknown device ID {device_id!r} for {pool.resource_name}"
            )
    if size < len(must_ids) or size > len(set(avail_ids) | set(must_ids)):
        raise AllocationRequestError(
            f"cannot choose {size} devices from {len(avail_ids)} available "
            f"with {len(must_ids)} that must be included"
        )
    chosen = sorted((known[i] for i in must_ids), key=lambda d: d.order)
    free_ids = set(avail_ids) - set(must_ids)
    free = sorted((known[i] for i in free_ids), key=lambda d: d.order)
    need = size - len(chosen)
    by_node: dict[int, list[DeviceSlot]] = {}
    for d in free:
        by_node.setdefault(d.order[0], []).append(d)
    must_nodes = {d.order[0] for d in chosen}
    candidates = sorted(by_node) if not must_nodes else sorted(must_nodes & by_node.keys())
    if len(must_nodes) <= 1:
        for node in candidates:
            if len(by_node[node]) >= need:
                return [d.id for d in sorted(chosen + by_node[node][:need], key=lambda d: d.order)]
    # No single node has room: nodes already holding must-include devices first, then the fullest.
    ranked = sorted(by_node, key=lambda n: (n not in must_nodes, -len(by_node[n]), n))
    for node in ranked:
        take = by_node[node][:need]
        chosen.extend(take)
        need -= len(take)
        if need == 0:
            break
    return [d.id for d in sorted(chosen, key=lambda d: d.order)]
