"""A fake kubelet for device-plugin tests: the kubelet's side of the device-plugin API v1beta1.

It serves ``v1beta1.Registration`` on ``<plugin dir>/kubelet.sock`` (a real gRPC server on a real
unix socket, from the same proto as the plugin). On ``Register`` it does what the kubelet's device
manager does: it checks the version, dials the plugin's endpoint in the same directory, asks for the
plugin options and opens ListAndWatch in a thread, recording every device list it receives. A new
registration for the same resource replaces the old connection (its stream is cancelled).

The helpers ``allocate`` and ``preferred`` call the plugin the way the kubelet does at pod admission.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import grpc

from nacre.k8s.deviceplugin import api_pb2, api_pb2_grpc

__all__ = ["FakeKubelet", "SeenDevice", "SeenList"]

#: Seconds a test waits for something the plugin should do at its next poll.
WAIT_TIMEOUT: Final = 10.0
#: Seconds one RPC to the plugin may take.
RPC_TIMEOUT: Final = 5.0
#: Seconds between re-checks of a condition while waiting.
RECHECK_INTERVAL: Final = 0.02


@dataclass(frozen=True, slots=True)
class SeenDevice:
    id: str
    health: str
    numa_nodes: tuple[int, ...]


SeenList = tuple[SeenDevice, ...]


class _Connection:
    """The kubelet's connection to one registered plugin endpoint."""

    def __init__(self, kubelet: FakeKubelet, request: api_pb2.RegisterRequest) -> None:
        self.request = request
        self.channel = grpc.insecure_channel(f"unix:{kubelet.plugin_dir / request.endpoint}")
        self.stub = api_pb2_grpc.DevicePluginStub(self.channel)
        self.options: api_pb2.DevicePluginOptions | None = None
        self.stream: grpc.Call | None = None
        self.stream_error: grpc.StatusCode | None = None
        self._kubelet = kubelet
        self.thread = threading.Thread(target=self._watch, daemon=True, name="fake-kubelet-law")

    def _watch(self) -> None:
        resource = self.request.resource_name
        try:
            self.options = self.stub.GetDevicePluginOptions(api_pb2.Empty(), timeout=RPC_TIMEOUT)
            stream = self.stub.ListAndWatch(api_pb2.Empty())
            self.stream = stream
            for response in stream:
                seen = tuple(
                    SeenDevice(d.ID, d.health, tuple(n.ID for n in d.topology.nodes))
                    for d in response.devices
                )
                self._kubelet._record_list(resource, seen)
        except grpc.RpcError as exc:
            self.stream_error = (
                exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
            )
        except ValueError:  # the channel was closed (connection replaced or kubelet stopped)
            self.stream_error = grpc.StatusCode.CANCELLED
        finally:
            self._kubelet._record_stream_end(resource)

    def close(self) -> None:
        if self.stream is not None:
            self.stream.cancel()
        self.channel.close()
        self.thread.join(timeout=RPC_TIMEOUT)


class _Registration(api_pb2_grpc.RegistrationServicer):
    def __init__(self, kubelet: FakeKubelet) -> None:
        self._kubelet = kubelet

    def Register(
        self, request: api_pb2.RegisterRequest, context: grpc.ServicerContext
    ) -> api_pb2.Empty:
        if self._kubelet.reject is not None:
            context.abort(grpc.StatusCode.UNKNOWN, self._kubelet.reject)
        if request.version != "v1beta1":
            context.abort(grpc.StatusCode.UNKNOWN, f"version {request.version!r} is not supported")
        self._kubelet._accept(request)
        return api_pb2.Empty()


class FakeKubelet:
    """The Registration service on ``plugin_dir/kubelet.sock`` plus the kubelet's plugin client.

    ``reject``: answer every Register with this error message (a kubelet that refuses).
    """

    def __init__(self, plugin_dir: Path, *, reject: str | None = None) -> None:
        self.plugin_dir = plugin_dir
        self.socket = plugin_dir / "kubelet.sock"
        self.reject = reject
        self._cond = threading.Condition()
        self.registrations: list[api_pb2.RegisterRequest] = []
        self.lists: dict[str, list[SeenList]] = {}
        self.stream_ends: dict[str, int] = {}
        self._connections: dict[str, _Connection] = {}
        self._server: grpc.Server | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> FakeKubelet:
        server = grpc.server(ThreadPoolExecutor(max_workers=4, thread_name_prefix="fake-kubelet"))
        api_pb2_grpc.add_RegistrationServicer_to_server(_Registration(self), server)
        server.add_insecure_port(f"unix:{self.socket}")
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        """Stop serving and drop every plugin connection (kubelet.sock stays, like a crash)."""
        with self._cond:
            connections = list(self._connections.values())
            self._connections.clear()
        for connection in connections:
            connection.close()
        if self._server is not None:
            self._server.stop(0).wait()
            self._server = None

    # -- called by the Registration service and the watch threads ------------------------------

    def _accept(self, request: api_pb2.RegisterRequest) -> None:
        connection = _Connection(self, request)
        with self._cond:
            old = self._connections.pop(request.resource_name, None)
            self.registrations.append(request)
            self._connections[request.resource_name] = connection
            connection.thread.start()
            self._cond.notify_all()
        if old is not None:
            old.close()

    def _record_list(self, resource: str, seen: SeenList) -> None:
        with self._cond:
            self.lists.setdefault(resource, []).append(seen)
            self._cond.notify_all()

    def _record_stream_end(self, resource: str) -> None:
        with self._cond:
            self.stream_ends[resource] = self.stream_ends.get(resource, 0) + 1
            self._cond.notify_all()

    # -- what tests use -----------------------------------------------------------------------

    def wait_for(self, what: str, check: Callable[[], bool], timeout: float = WAIT_TIMEOUT) -> None:
        """Wait until ``check()`` (called under the lock) holds; fail the test naming ``what``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not check():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"fake kubelet: timed out waiting for {what}")
                # Also re-checked on a short period: some checks look at files, not at events.
                self._cond.wait(min(left, RECHECK_INTERVAL))

    def wait_registered(self, resource: str, count: int = 1) -> api_pb2.RegisterRequest:
        """The ``count``-th registration of ``resource``."""

        def mine() -> list[api_pb2.RegisterRequest]:
            return [r for r in self.registrations if r.resource_name == resource]

        self.wait_for(f"{count} registration(s) of {resource}", lambda: len(mine()) >= count)
        with self._cond:
            return mine()[count - 1]

    def wait_list(
        self, resource: str, check: Callable[[SeenList], bool], what: str = "a device list"
    ) -> SeenList:
        """The latest device list of ``resource`` once it satisfies ``check``."""
        self.wait_for(
            f"{what} from {resource}",
            lambda: bool(self.lists.get(resource)) and check(self.lists[resource][-1]),
        )
        with self._cond:
            return self.lists[resource][-1]

    def list_count(self, resource: str) -> int:
        with self._cond:
            return len(self.lists.get(resource, []))

    def options(self, resource: str) -> api_pb2.DevicePluginOptions:
        connection = self._connection(resource)
        self.wait_for(f"options of {resource}", lambda: connection.options is not None)
        assert connection.options is not None
        return connection.options

    def _connection(self, resource: str) -> _Connection:
        with self._cond:
            return self._connections[resource]

    def allocate(self, resource: str, containers: list[list[str]]) -> api_pb2.AllocateResponse:
        """``Allocate`` with one container request per list of device IDs."""
        request = api_pb2.AllocateRequest(
            container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=c) for c in containers]
        )
        return self._connection(resource).stub.Allocate(request, timeout=RPC_TIMEOUT)

    def preferred(
        self, resource: str, available: list[str], must_include: list[str], size: int
    ) -> list[str]:
        """``GetPreferredAllocation`` for one container."""
        request = api_pb2.PreferredAllocationRequest(
            container_requests=[
                api_pb2.ContainerPreferredAllocationRequest(
                    available_deviceIDs=available,
                    must_include_deviceIDs=must_include,
                    allocation_size=size,
                )
            ]
        )
        response = self._connection(resource).stub.GetPreferredAllocation(
            request, timeout=RPC_TIMEOUT
        )
        assert len(response.container_responses) == 1
        return list(response.container_responses[0].deviceIDs)

    def pre_start(self, resource: str, ids: list[str]) -> api_pb2.PreStartContainerResponse:
        request = api_pb2.PreStartContainerRequest(devices_ids=ids)
        return self._connection(resource).stub.PreStartContainer(request, timeout=RPC_TIMEOUT)
