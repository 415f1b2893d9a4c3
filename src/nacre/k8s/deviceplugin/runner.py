"""The device-plugin process: discovery, one gRPC endpoint per resource, health and kubelet watch.

:func:`build_pools` sizes the EPC pool from node discovery (``nacre.node.discover``, as in
``nacre node check``) or ``--epc-mib``. :class:`DevicePluginRunner` serves each pool on
``<plugin dir>/nacre-<resource suffix>.sock``, registers it with the kubelet, and then polls every
``poll_interval`` seconds:

- health: whether /dev/sgx_enclave (EPC) and /dev/sgx_provision (provisioning) under ``--root``
  exist and are usable; a change flips every device of the pool and ListAndWatch sends a new list;
- the kubelet: a recreated ``kubelet.sock`` (new inode / change time) means the kubelet restarted
  and forgot its plugins, so each endpoint registers again; an endpoint whose own socket was removed
  (the kubelet clears the directory when it starts) is served again on a fresh socket first.

A node without SGX advertises zero EPC devices (and keeps serving) rather than failing: the
plugin runs as a DaemonSet, and a crash-looping pod on every non-SGX node helps nobody, while an
honest capacity of 0 keeps EPC pods off the node. A node *with* SGX whose EPC size cannot be read is
a configuration error (``--epc-mib`` is needed) and stops the start with a clear message.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import grpc

from nacre.errors import UsageError
from nacre.k8s.deviceplugin import api_pb2, api_pb2_grpc
from nacre.k8s.deviceplugin.devices import (
    AESM_SOCKET_DIR,
    DEFAULT_EPC_RESOURCE,
    MAX_ADVERTISED_EPC_MIB,
    PROVISION_POOL_SIZE,
    SGX_ENCLAVE_DEVICE,
    SGX_PROVISION_DEVICE,
    DevicePool,
    device_usable,
    epc_pool,
    provision_pool,
    resource_suffix,
)
from nacre.k8s.deviceplugin.plugin import (
    STREAM_WAKE_INTERVAL,
    DevicePluginService,
    PoolHealth,
    StreamCount,
)
from nacre.k8s.deviceplugin.registration import (
    DEFAULT_PLUGIN_DIR,
    KUBELET_SOCKET,
    REGISTER_TIMEOUT,
    KubeletUnavailableError,
    SocketIdentity,
    register,
)
from nacre.node import discover

__all__ = [
    "ENDPOINT_WORKERS",
    "MAX_REQUEST_BYTES",
    "MAX_SOCKET_PATH_BYTES",
    "POLL_INTERVAL",
    "STOP_GRACE",
    "DevicePluginRunner",
    "PluginConfig",
    "build_pools",
    "socket_name",
]

_log = logging.getLogger(__name__)

#: Seconds between health / kubelet checks.
POLL_INTERVAL: Final = 1.0
#: After Register the kubelet opens ListAndWatch at once and keeps it open; with no stream open
#: this long after a registration, the plugin registers again.
STREAM_GRACE: Final = 10.0
#: Seconds in-flight RPCs get to finish when an endpoint stops.
STOP_GRACE: Final = 2.0
#: gRPC worker threads per endpoint: each open ListAndWatch stream holds one.
ENDPOINT_WORKERS: Final = 8
#: Largest gRPC message an endpoint accepts (requests are lists of device IDs).
MAX_REQUEST_BYTES: Final = 4 * 1024 * 1024
#: Longest unix socket path Linux accepts (sun_path is 108 bytes with the terminating NUL).
MAX_SOCKET_PATH_BYTES: Final = 107


@dataclass(frozen=True, slots=True)
class PluginConfig:
    """What ``nacre k8s device-plugin`` was asked to do."""

    plugin_dir: Path = DEFAULT_PLUGIN_DIR
    root: Path = Path("/")
    resource_name: str = DEFAULT_EPC_RESOURCE
    epc_mib: int | None = None
    provision_devices: int = PROVISION_POOL_SIZE
    poll_interval: float = POLL_INTERVAL
    register_timeout: float = REGISTER_TIMEOUT
    stop_grace: float = STOP_GRACE
    stream_wake_interval: float = STREAM_WAKE_INTERVAL
    stream_grace: float = STREAM_GRACE
    #: Accept regular files in place of the SGX device nodes: fake ``--root`` trees in tests and
    #: demos only. Off, a node's devices must be character devices even under ``--root=/host``.
    unsafe_fake_devices: bool = False

    @property
    def allow_regular_files(self) -> bool:
        return self.unsafe_fake_devices


def socket_name(resource_name: str) -> str:
    """``nacre-<resource suffix>.sock``, the plugin's socket file name in the plugin dir."""
    return f"nacre-{resource_suffix(resource_name)}.sock"


def build_pools(config: PluginConfig) -> tuple[DevicePool, DevicePool]:
    """The EPC pool (sized by discovery or ``--epc-mib``) and the provisioning pool."""
    report = discover(config.root, allow_regular_files=config.allow_regular_files)
    enclave_seen = (config.root / SGX_ENCLAVE_DEVICE.lstrip("/")).exists()
    if config.epc_mib is None and report.epc is None:
        if "sgx" in report.flags or enclave_seen:
            finding = report.finding("sgx.epc")
            raise UsageError(
                "SGX is present but the EPC size is unknown",
                field="--epc-mib",
                expected="the node's EPC size in MiB (from sysfs sgx_total_bytes or --epc-mib)",
                actual=finding.seen,
                hint=(finding.advice or "") + "; then pass --epc-mib N",
            )
        _log.warning(
            "no SGX on this node: advertising 0 EPC devices",
            extra={"root": str(config.root), "tee": report.tee},
        )
    pool = epc_pool(config.resource_name, report.epc, epc_mib=config.epc_mib)
    total = config.epc_mib if config.epc_mib is not None else (report.epc_mib or 0)
    if total > MAX_ADVERTISED_EPC_MIB:
        _log.warning(
            "EPC larger than one device list can carry: advertising the first part only",
            extra={"epc_mib": total, "advertised_mib": pool.size},
        )
    return pool, provision_pool(config.provision_devices)


@dataclass(slots=True)
class _Endpoint:
    """One resource: its gRPC server on its own socket and its registration state."""

    pool: DevicePool
    health: PoolHealth
    device_path: Path
    socket: Path
    server: grpc.Server | None = None
    registered_with: SocketIdentity | None = None
    registered_at: float = 0.0
    streams: StreamCount = field(default_factory=StreamCount)
    last_failure: str | None = field(default=None)


class DevicePluginRunner:
    """Serves the pools, registers them, and keeps them registered until :meth:`stop`."""

    def __init__(self, config: PluginConfig, pools: tuple[DevicePool, ...]) -> None:
        self._config = config
        self._stop = threading.Event()
        self._closed = False
        self._polled = False
        self._kubelet: SocketIdentity | None = None
        self._endpoints: list[_Endpoint] = []
        for pool in pools:
            device = SGX_PROVISION_DEVICE if pool.kind == "provision" else SGX_ENCLAVE_DEVICE
            device_path = config.root / device.lstrip("/")
            healthy = device_usable(device_path, allow_regular_file=config.allow_regular_files)
            self._endpoints.append(
                _Endpoint(
                    pool=pool,
                    health=PoolHealth(healthy),
                    device_path=device_path,
                    socket=config.plugin_dir / socket_name(pool.resource_name),
                )
            )
        if not config.plugin_dir.is_dir():
            raise UsageError(
                "the device-plugin directory does not exist",
                field="--plugin-dir",
                expected="the kubelet's device-plugin directory (hostPath-mounted)",
                actual=str(config.plugin_dir),
            )
        sockets = [e.socket for e in self._endpoints]
        for path in sockets:
            if len(str(path).encode()) > MAX_SOCKET_PATH_BYTES:
                raise UsageError(
                    "the plugin socket path is too long for a unix socket",
                    field="--plugin-dir",
                    expected=f"socket paths of at most {MAX_SOCKET_PATH_BYTES} bytes",
                    actual=f"{path} ({len(str(path).encode())} bytes)",
                )
        if len(set(sockets)) != len(sockets):
            raise UsageError(
                "two resources would share one plugin socket",
                field="--resource-name",
                expected="an EPC resource name other than the provisioning resource",
                actual=", ".join(p.resource_name for p in pools),
            )

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def sockets(self) -> tuple[Path, ...]:
        return tuple(e.socket for e in self._endpoints)

    def stop(self) -> None:
        """Ask :meth:`run` to return (safe from signal handlers and other threads)."""
        self._stop.set()

    def run(self) -> None:
        """Serve, register and watch until :meth:`stop`; then shut every endpoint down."""
        try:
            for endpoint in self._endpoints:
                self._serve(endpoint)
            while not self._stop.is_set():
                self.poll_once()
                self._stop.wait(self._config.poll_interval)
        finally:
            self.close()

    def close(self) -> None:
        """Stop the gRPC servers (in-flight RPCs get ``stop_grace``) and remove the sockets."""
        if self._closed:
            return
        self._closed = True
        for endpoint in self._endpoints:
            endpoint.health.close()
        for endpoint in self._endpoints:
            self._shutdown(endpoint)
        _log.info("device plugin stopped", extra={"sockets": [str(s) for s in self.sockets]})

    # -- one round of checks ------------------------------------------------------------------

    def poll_once(self) -> None:
        """Check device health and the kubelet once (the body of :meth:`run`'s loop)."""
        for endpoint in self._endpoints:
            self._check_health(endpoint)
        kubelet_socket = self._config.plugin_dir / KUBELET_SOCKET
        kubelet = SocketIdentity.of(kubelet_socket)
        if self._polled and kubelet != self._kubelet:
            _log.info(
                "kubelet socket appeared (kubelet (re)started): registering"
                if kubelet is not None
                else "kubelet socket gone: waiting for the kubelet",
                extra={"socket": str(kubelet_socket)},
            )
        elif not self._polled and kubelet is None:
            _log.warning("no kubelet socket yet: waiting", extra={"socket": str(kubelet_socket)})
        self._polled, self._kubelet = True, kubelet
        for endpoint in self._endpoints:
            if SocketIdentity.of(endpoint.socket) is None:
                _log.warning(
                    "plugin socket removed (kubelet restart?): serving it again",
                    extra={"socket": str(endpoint.socket)},
                )
                self._shutdown(endpoint)
                self._serve(endpoint)
                endpoint.registered_with = None
            if kubelet is None:
                endpoint.registered_with = None
            elif (
                endpoint.registered_with is not None
                and endpoint.streams.open == 0
                and time.monotonic() - endpoint.registered_at > self._config.stream_grace
            ):
                # Registered, yet no kubelet lists the devices: the registration went to a
                # kubelet that was going away (its socket replaced by one that looks the same).
                _log.warning(
                    "registered but the kubelet opened no ListAndWatch: registering again",
                    extra={"resource": endpoint.pool.resource_name},
                )
                self._register(endpoint, kubelet)
            elif endpoint.registered_with != kubelet:
                self._register(endpoint, kubelet)

    def _check_health(self, endpoint: _Endpoint) -> None:
        healthy = device_usable(
            endpoint.device_path, allow_regular_file=self._config.allow_regular_files
        )
        if endpoint.health.set(healthy):
            log = _log.info if healthy else _log.warning
            log(
                "device node returned: devices Healthy"
                if healthy
                else "device node gone or unusable: devices Unhealthy",
                extra={
                    "resource": endpoint.pool.resource_name,
                    "device": str(endpoint.device_path),
                },
            )

    def _register(self, endpoint: _Endpoint, kubelet: SocketIdentity) -> None:
        options = api_pb2.DevicePluginOptions(
            pre_start_required=False, get_preferred_allocation_available=True
        )
        try:
            register(
                self._config.plugin_dir,
                endpoint=endpoint.socket.name,
                resource_name=endpoint.pool.resource_name,
                options=options,
                timeout=self._config.register_timeout,
            )
        except KubeletUnavailableError as exc:
            # Logged once per distinct failure: the kubelet may be down for a while.
            if exc.message != endpoint.last_failure:
                _log.warning("kubelet not reachable, will retry", extra={"error": str(exc)})
            endpoint.last_failure = exc.message
            return
        endpoint.registered_with = kubelet
        endpoint.registered_at = time.monotonic()
        endpoint.last_failure = None
        _log.info(
            "registered with the kubelet",
            extra={
                "resource": endpoint.pool.resource_name,
                "endpoint": endpoint.socket.name,
                "devices": endpoint.pool.size,
            },
        )

    # -- gRPC servers -------------------------------------------------------------------------

    def _aesm_available(self) -> bool:
        return (self._config.root / AESM_SOCKET_DIR.lstrip("/")).is_dir()

    def _serve(self, endpoint: _Endpoint) -> None:
        # A socket left by an earlier run (or another process) would make bind() fail.
        if endpoint.socket.is_socket():
            endpoint.socket.unlink()
        server = grpc.server(
            ThreadPoolExecutor(
                max_workers=ENDPOINT_WORKERS,
                thread_name_prefix=f"nacre-dp-{endpoint.pool.kind}",
            ),
            options=[("grpc.max_receive_message_length", MAX_REQUEST_BYTES)],
        )
        api_pb2_grpc.add_DevicePluginServicer_to_server(
            DevicePluginService(
                endpoint.pool,
                endpoint.health,
                aesm_available=self._aesm_available,
                stream_wake_interval=self._config.stream_wake_interval,
                streams=endpoint.streams,
            ),
            server,
        )
        try:
            server.add_insecure_port(f"unix:{endpoint.socket}")
        except RuntimeError as exc:  # grpc's way of saying bind() failed
            raise UsageError(
                "cannot serve the plugin socket",
                field="--plugin-dir",
                expected=f"a writable directory where {endpoint.socket.name} can be created",
                actual=f"{endpoint.socket}: {exc}",
            ) from None
        server.start()
        endpoint.server = server
        _log.info(
            "serving",
            extra={"resource": endpoint.pool.resource_name, "socket": str(endpoint.socket)},
        )

    def _shutdown(self, endpoint: _Endpoint) -> None:
        server, endpoint.server = endpoint.server, None
        if server is not None:
            server.stop(self._config.stop_grace).wait()
        # Only a socket is ours to remove; anything else at that path is left alone.
        if endpoint.socket.is_socket():
            endpoint.socket.unlink(missing_ok=True)
