"""The ``DevicePlugin`` gRPC service for one resource (kubelet device-plugin API v1beta1).

One :class:`DevicePluginService` serves one :class:`~nacre.k8s.deviceplugin.devices.DevicePool`.
Health is per pool (every EPC device stands for the same /dev/sgx_enclave): a :class:`PoolHealth`
shared with the poller in :mod:`nacre.k8s.deviceplugin.runner`, which flips it when the device node
disappears or returns; every change wakes the ListAndWatch streams, which send the new list.

Requests the kubelet should never send (unknown or repeated device IDs, empty container requests)
are answered with ``INVALID_ARGUMENT`` naming what was wrong; the service never crashes on input.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Final

import grpc

from nacre.k8s.deviceplugin import api_pb2, api_pb2_grpc
from nacre.k8s.deviceplugin.devices import (
    AESM_SOCKET_DIR,
    DEVICE_PERMISSIONS,
    ENV_AESM_ADDR,
    ENV_EPC_MIB,
    HEALTHY,
    SGX_ENCLAVE_DEVICE,
    SGX_PROVISION_DEVICE,
    UNHEALTHY,
    AllocationRequestError,
    DevicePool,
    preferred_allocation,
)

__all__ = ["STREAM_WAKE_INTERVAL", "DevicePluginService", "PoolHealth"]

_log = logging.getLogger(__name__)

#: How often an idle ListAndWatch stream checks that the kubelet is still listening (seconds).
STREAM_WAKE_INTERVAL: Final = 1.0


class StreamCount:
    """How many ListAndWatch streams are open on an endpoint (the kubelet keeps one open for as
    long as it uses the plugin: none for a while after Register means it is not listening)."""

    __slots__ = ("_lock", "_open")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open = 0

    @property
    def open(self) -> int:
        with self._lock:
            return self._open

    def add(self, delta: int) -> None:
        with self._lock:
            self._open += delta


class PoolHealth:
    """The health of one pool, with a generation counter that ListAndWatch streams wait on."""

    __slots__ = ("_closed", "_cond", "_generation", "_healthy")

    def __init__(self, healthy: bool) -> None:
        self._cond = threading.Condition()
        self._healthy = healthy
        self._generation = 0
        self._closed = False

    @property
    def healthy(self) -> bool:
        with self._cond:
            return self._healthy

    def set(self, healthy: bool) -> bool:
        """Record the health; wake the streams and return ``True`` when it changed."""
        with self._cond:
            if healthy == self._healthy:
                return False
            self._healthy = healthy
            self._generation += 1
            self._cond.notify_all()
            return True

    def snapshot(self) -> tuple[int, bool, bool]:
        """``(generation, healthy, closed)`` now."""
        with self._cond:
            return self._generation, self._healthy, self._closed

    def wait_change(self, generation: int, timeout: float) -> tuple[int, bool, bool]:
        """Wait up to ``timeout`` seconds for a generation other than ``generation``."""
        with self._cond:
            self._cond.wait_for(
                lambda: self._closed or self._generation != generation, timeout=timeout
            )
            return self._generation, self._healthy, self._closed

    def close(self) -> None:
        """End every stream waiting on this pool (shutdown)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class DevicePluginService(api_pb2_grpc.DevicePluginServicer):
    """``v1beta1.DevicePlugin`` for one pool.

    ``aesm_available`` says, at Allocate time, whether the host has the AESM socket directory: it is
    mounted (read-only: connecting to a unix socket needs no writable mount) and ``SGX_AESM_ADDR``
    set only then, since a bind mount of a missing host path would fail the container's creation.
    """

    def __init__(
        self,
        pool: DevicePool,
        health: PoolHealth,
        *,
        aesm_available: Callable[[], bool],
        stream_wake_interval: float = STREAM_WAKE_INTERVAL,
        streams: StreamCount | None = None,
    ) -> None:
        self._streams = streams if streams is not None else StreamCount()
        self._pool = pool
        self._health = health
        self._aesm_available = aesm_available
        self._wake = stream_wake_interval
        self._known = pool.by_id()
        self._lists: dict[bool, api_pb2.ListAndWatchResponse] = {}
        self._lists_lock = threading.Lock()

    # -- helpers ------------------------------------------------------------------------------

    def device_list(self, healthy: bool) -> api_pb2.ListAndWatchResponse:
        """Every device of the pool with one health (built once per health and kept)."""
        with self._lists_lock:
            cached = self._lists.get(healthy)
            if cached is not None:
                return cached
            word = HEALTHY if healthy else UNHEALTHY
            response = api_pb2.ListAndWatchResponse()
            for slot in self._pool.devices:
                device = response.devices.add(ID=slot.id, health=word)
                if slot.numa_node is not None:
                    device.topology.nodes.add(ID=slot.numa_node)
            self._lists[healthy] = response
            return response

    def _check_ids(self, ids: list[str], context: grpc.ServicerContext, where: str) -> None:
        if not ids:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{where} asks for no devices")
        seen: set[str] = set()
        for device_id in ids:
            if device_id not in self._known:
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"{where}: unknown device ID {device_id!r} for {self._pool.resource_name}",
                )
            if device_id in seen:
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"{where}: device ID {device_id!r} is listed twice",
                )
            seen.add(device_id)

    def _container_response(self, ids: list[str]) -> api_pb2.ContainerAllocateResponse:
        out = api_pb2.ContainerAllocateResponse()
        if self._pool.kind == "provision":
            out.devices.add(
                container_path=SGX_PROVISION_DEVICE,
                host_path=SGX_PROVISION_DEVICE,
                permissions=DEVICE_PERMISSIONS,
            )
            return out
        out.devices.add(
            container_path=SGX_ENCLAVE_DEVICE,
            host_path=SGX_ENCLAVE_DEVICE,
            permissions=DEVICE_PERMISSIONS,
        )
        out.envs[ENV_EPC_MIB] = str(len(ids))
        if self._aesm_available():
            out.mounts.add(
                container_path=AESM_SOCKET_DIR, host_path=AESM_SOCKET_DIR, read_only=True
            )
            out.envs[ENV_AESM_ADDR] = "1"
        return out

    # -- RPCs ---------------------------------------------------------------------------------

    def GetDevicePluginOptions(  # noqa: N802 - the RPC's name in api.proto
        self, request: api_pb2.Empty, context: grpc.ServicerContext
    ) -> api_pb2.DevicePluginOptions:
        return api_pb2.DevicePluginOptions(
            pre_start_required=False, get_preferred_allocation_available=True
        )

    def ListAndWatch(  # noqa: N802 - the RPC's name in api.proto
        self, request: api_pb2.Empty, context: grpc.ServicerContext
    ) -> Iterator[api_pb2.ListAndWatchResponse]:
        generation, healthy, closed = self._health.snapshot()
        _log.info(
            "ListAndWatch opened",
            extra={"resource": self._pool.resource_name, "devices": self._pool.size},
        )
        self._streams.add(1)
        try:
            yield self.device_list(healthy)
            while not closed and context.is_active():
                now, healthy, closed = self._health.wait_change(generation, self._wake)
                if closed or now == generation:
                    continue
                generation = now
                yield self.device_list(healthy)
        finally:
            self._streams.add(-1)

    def GetPreferredAllocation(  # noqa: N802 - the RPC's name in api.proto
        self, request: api_pb2.PreferredAllocationRequest, context: grpc.ServicerContext
    ) -> api_pb2.PreferredAllocationResponse:
        response = api_pb2.PreferredAllocationResponse()
        for n, container in enumerate(request.container_requests):
            try:
                chosen = preferred_allocation(
                    self._pool,
                    container.available_deviceIDs,
                    container.must_include_deviceIDs,
                    container.allocation_size,
                )
            except AllocationRequestError as exc:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"container request {n}: {exc}")
            response.container_responses.add(deviceIDs=chosen)
        return response

    def Allocate(  # noqa: N802 - the RPC's name in api.proto
        self, request: api_pb2.AllocateRequest, context: grpc.ServicerContext
    ) -> api_pb2.AllocateResponse:
        if not request.container_requests:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the request has no container requests")
        for n, container in enumerate(request.container_requests):
            self._check_ids(list(container.devices_ids), context, f"container request {n}")
        if not self._health.healthy:
            device = SGX_PROVISION_DEVICE if self._pool.kind == "provision" else SGX_ENCLAVE_DEVICE
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{device} is not usable on this node; the devices are reported Unhealthy",
            )
        response = api_pb2.AllocateResponse()
        for container in request.container_requests:
            response.container_responses.append(
                self._container_response(list(container.devices_ids))
            )
        _log.info(
            "allocated",
            extra={
                "resource": self._pool.resource_name,
                "containers": [len(c.devices_ids) for c in request.container_requests],
            },
        )
        return response

    def PreStartContainer(  # noqa: N802 - the RPC's name in api.proto
        self, request: api_pb2.PreStartContainerRequest, context: grpc.ServicerContext
    ) -> api_pb2.PreStartContainerResponse:
        # Not required (pre_start_required is false); harmless if a kubelet calls it anyway.
        return api_pb2.PreStartContainerResponse()
