"""nacre's SGX device plugin for the kubelet (device-plugin API v1beta1 over gRPC).

Advertises EPC as one device per MiB (``nacre.dev/sgx-epc-mib`` by default, or
``alibabacloud.com/sgx_epc_MiB`` / ``sgx.intel.com/epc``) and ``nacre.dev/sgx-provision`` from one
process; ``nacre k8s device-plugin`` runs it. ``api.proto`` is the kubelet's API definition and
``api_pb2*`` the code generated from it (see the proto for the command).
"""

from __future__ import annotations

from nacre.k8s.deviceplugin.devices import (
    AESM_SOCKET_DIR,
    DEFAULT_EPC_RESOURCE,
    ENV_AESM_ADDR,
    ENV_EPC_MIB,
    EPC_RESOURCE_NAMES,
    HEALTHY,
    PROVISION_POOL_SIZE,
    PROVISION_RESOURCE,
    SGX_ENCLAVE_DEVICE,
    SGX_PROVISION_DEVICE,
    UNHEALTHY,
    DevicePool,
    DeviceSlot,
    epc_pool,
    preferred_allocation,
    provision_pool,
)
from nacre.k8s.deviceplugin.plugin import DevicePluginService, PoolHealth
from nacre.k8s.deviceplugin.registration import (
    API_VERSION,
    DEFAULT_PLUGIN_DIR,
    KUBELET_SOCKET,
    KubeletUnavailableError,
    RegistrationRejectedError,
    SocketIdentity,
    register,
)
from nacre.k8s.deviceplugin.runner import (
    POLL_INTERVAL,
    DevicePluginRunner,
    PluginConfig,
    build_pools,
    socket_name,
)

__all__ = [
    "AESM_SOCKET_DIR",
    "API_VERSION",
    "DEFAULT_EPC_RESOURCE",
    "DEFAULT_PLUGIN_DIR",
    "ENV_AESM_ADDR",
    "ENV_EPC_MIB",
    "EPC_RESOURCE_NAMES",
    "HEALTHY",
    "KUBELET_SOCKET",
    "POLL_INTERVAL",
    "PROVISION_POOL_SIZE",
    "PROVISION_RESOURCE",
    "SGX_ENCLAVE_DEVICE",
    "SGX_PROVISION_DEVICE",
    "UNHEALTHY",
    "DevicePluginRunner",
    "DevicePluginService",
    "DevicePool",
    "DeviceSlot",
    "KubeletUnavailableError",
    "PluginConfig",
    "PoolHealth",
    "RegistrationRejectedError",
    "SocketIdentity",
    "build_pools",
    "epc_pool",
    "preferred_allocation",
    "provision_pool",
    "register",
    "socket_name",
]
