"""nacre's SGX device plugin against a fake kubelet, over real unix sockets.

The node is a fake tree under a temporary directory (device nodes are regular files, as in the
``nacre node check`` tests): two NUMA nodes with 4 and 2 MiB of EPC, /dev/sgx_enclave,
/dev/sgx_provision and /var/run/aesmd. The plugin directory is a short directory under /tmp (unix
socket paths are limited to 107 bytes; pytest's tmp_path can be longer). The fake kubelet
(tests/k8s_fake_kubelet.py) serves Registration from the same proto, then drives GetDevicePluginOptions,
ListAndWatch, Allocate and GetPreferredAllocation the way the kubelet does.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import tomllib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2
from typer.testing import CliRunner

from k8s_fake_kubelet import FakeKubelet, SeenList
from nacre.cli import app
from nacre.errors import UsageError
from nacre.k8s.deviceplugin import (
    DEFAULT_EPC_RESOURCE,
    PROVISION_RESOURCE,
    DevicePluginRunner,
    DevicePluginService,
    PluginConfig,
    PoolHealth,
    RegistrationRejectedError,
    api_pb2,
    api_pb2_grpc,
    build_pools,
    epc_pool,
    preferred_allocation,
    provision_pool,
)
from nacre.k8s.deviceplugin.devices import MAX_ADVERTISED_EPC_MIB, AllocationRequestError
from nacre.k8s.deviceplugin.registration import KubeletUnavailableError, register
from nacre.node import EpcNode

MIB = 1024 * 1024
REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "src/nacre/k8s/deviceplugin"
GENERATED = ("api_pb2.py", "api_pb2.pyi", "api_pb2_grpc.py", "api_pb2_grpc.pyi")
EPC_SOCKET = "nacre-sgx-epc-mib.sock"
PROVISION_SOCKET = "nacre-sgx-provision.sock"
#: Fast timings so every poll-driven change shows within a fraction of a second.
FAST = {
    "poll_interval": 0.05,
    "stop_grace": 0.2,
    "stream_wake_interval": 0.1,
    "stream_grace": 1.0,
    "unsafe_fake_devices": True,  # the fake trees hold regular files for device nodes
}
#: Seconds a subprocess gets to start, and to stop after SIGTERM.
PROCESS_TIMEOUT = 20.0


def put(root: Path, path: str, text: str = "", mode: int = 0o644) -> Path:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    os.chmod(target, mode)
    return target


def sgx_node(
    root: Path,
    *,
    epc: tuple[int, ...] | None = (4 * MIB, 2 * MIB),
    aesm: bool = True,
    sgx: bool = True,
) -> Path:
    """A fake SGX host (or, with ``sgx=False``, a plain one) under ``root``."""
    flags = "fpu vme sgx sgx_lc" if sgx else "fpu vme"
    put(root, "/proc/cpuinfo", f"processor\t: 0\nflags\t\t: {flags}\n\n")
    put(root, "/proc/sys/kernel/osrelease", "6.8.0-45-generic\n")
    put(root, "/etc/passwd", f"root:x:{os.getuid()}:{os.getgid()}::/root:/bin/sh\n")
    put(root, "/etc/group", f"sgx_prv:x:{os.getgid()}:\n")
    if sgx:
        put(root, "/dev/sgx_enclave", mode=0o666)
        put(root, "/dev/sgx_provision", mode=0o660)
        for i, size in enumerate(epc or ()):
            put(root, f"/sys/devices/system/node/node{i}/x86/sgx_total_bytes", f"{size}\n")
    if aesm:
        put(root, "/var/run/aesmd/aesm.socket", mode=0o777)
    return root


@pytest.fixture
def plugin_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="nacre-dp-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def node(tmp_path: Path) -> Path:
    return sgx_node(tmp_path / "node")


@pytest.fixture
def kubelet(plugin_dir: Path) -> Iterator[FakeKubelet]:
    fake = FakeKubelet(plugin_dir).start()
    try:
        yield fake
    finally:
        fake.stop()


class RunningPlugin:
    """A DevicePluginRunner running in a thread (as ``nacre k8s device-plugin`` runs it)."""

    def __init__(self, config: PluginConfig) -> None:
        self.config = config
        self.runner = DevicePluginRunner(config, build_pools(config))
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True, name="plugin-under-test")
        self.thread.start()

    def _run(self) -> None:
        try:
            self.runner.run()
        except BaseException as exc:
            self.error = exc

    def stop(self) -> None:
        self.runner.stop()
        self.thread.join(timeout=PROCESS_TIMEOUT)
        assert not self.thread.is_alive(), "the plugin did not stop"


@pytest.fixture
def start_plugin(plugin_dir: Path, node: Path) -> Iterator[Callable[..., RunningPlugin]]:
    started: list[RunningPlugin] = []

    def start(**overrides: object) -> RunningPlugin:
        settings: dict[str, object] = {"plugin_dir": plugin_dir, "root": node, **FAST}
        settings.update(overrides)
        plugin = RunningPlugin(PluginConfig(**settings))  # type: ignore[arg-type]
        started.append(plugin)
        return plugin

    yield start
    for plugin in started:
        plugin.stop()


def all_health(word: str) -> Callable[[SeenList], bool]:
    return lambda seen: bool(seen) and all(d.health == word for d in seen)


def rpc_error(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def code_and_details(exc: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    assert isinstance(exc, grpc.Call)
    return exc.code(), exc.details() or ""


# ---------------------------------------------------------------------------------------------
# The proto and the generated code


# Field numbers of k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1/api.proto (kubernetes/kubernetes).
UPSTREAM_FIELDS = {
    "DevicePluginOptions": {"pre_start_required": 1, "get_preferred_allocation_available": 2},
    "RegisterRequest": {"version": 1, "endpoint": 2, "resource_name": 3, "options": 4},
    "Empty": {},
    "ListAndWatchResponse": {"devices": 1},
    "TopologyInfo": {"nodes": 1},
    "NUMANode": {"ID": 1},
    "Device": {"ID": 1, "health": 2, "topology": 3},
    "PreStartContainerRequest": {"devices_ids": 1},
    "PreStartContainerResponse": {},
    "PreferredAllocationRequest": {"container_requests": 1},
    "ContainerPreferredAllocationRequest": {
        "available_deviceIDs": 1,
        "must_include_deviceIDs": 2,
        "allocation_size": 3,
    },
    "PreferredAllocationResponse": {"container_responses": 1},
    "ContainerPreferredAllocationResponse": {"deviceIDs": 1},
    "AllocateRequest": {"container_requests": 1},
    "ContainerAllocateRequest": {"devices_ids": 1},
    "CDIDevice": {"name": 1},
    "AllocateResponse": {"container_responses": 1},
    "ContainerAllocateResponse": {
        "envs": 1,
        "mounts": 2,
        "devices": 3,
        "annotations": 4,
        "cdi_devices": 5,
    },
    "Mount": {"container_path": 1, "host_path": 2, "read_only": 3},
    "DeviceSpec": {"container_path": 1, "host_path": 2, "permissions": 3},
}
UPSTREAM_METHODS = {
    "Registration": {"Register": ("RegisterRequest", "Empty", False)},
    "DevicePlugin": {
        "GetDevicePluginOptions": ("Empty", "DevicePluginOptions", False),
        "ListAndWatch": ("Empty", "ListAndWatchResponse", True),
        "GetPreferredAllocation": (
            "PreferredAllocationRequest",
            "PreferredAllocationResponse",
            False,
        ),
        "Allocate": ("AllocateRequest", "AllocateResponse", False),
        "PreStartContainer": ("PreStartContainerRequest", "PreStartContainerResponse", False),
    },
}


def test_proto_is_the_kubelet_api() -> None:
    proto = descriptor_pb2.FileDescriptorProto()
    api_pb2.DESCRIPTOR.CopyToProto(proto)
    assert proto.package == "v1beta1"
    assert proto.syntax == "proto3"
    assert list(proto.dependency) == []  # no gogoproto
    fields = {m.name: {f.name: f.number for f in m.field} for m in proto.message_type}
    assert fields == UPSTREAM_FIELDS
    methods = {
        s.name: {
            m.name: (
                m.input_type.removeprefix(".v1beta1."),
                m.output_type.removeprefix(".v1beta1."),
                m.server_streaming,
            )
            for m in s.method
        }
        for s in proto.service
    }
    assert methods == UPSTREAM_METHODS
    envs = api_pb2.ContainerAllocateResponse.DESCRIPTOR.fields_by_name["envs"]
    assert envs.message_type is not None
    assert envs.message_type.GetOptions().map_entry


def test_generated_code_is_current(tmp_path: Path) -> None:
    """Regenerate from api.proto with the pinned tools: the committed files must be identical."""
    from grpc_tools import protoc  # type: ignore[import-untyped]  # grpcio-tools ships no types

    plugin = Path(sys.executable).parent / "protoc-gen-mypy_grpc"
    assert plugin.exists(), "mypy-protobuf (a dev dependency) provides protoc-gen-mypy_grpc"
    src = tmp_path / "src"
    shutil.copytree(PKG, src / "nacre/k8s/deviceplugin", ignore=shutil.ignore_patterns("*.py*"))
    out = tmp_path / "out"
    out.mkdir()
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{src}",
            f"--plugin=protoc-gen-mypy_grpc={plugin}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            f"--mypy_grpc_out={out}",
            str(src / "nacre/k8s/deviceplugin/api.proto"),
        ]
    )
    assert status == 0
    for name in GENERATED:
        fresh = (out / "nacre/k8s/deviceplugin" / name).read_text()
        assert fresh == (PKG / name).read_text(), f"{name} is stale: regenerate (see api.proto)"


def test_dependency_bounds_match_generated_code() -> None:
    """pyproject's lower bounds are exactly what the committed stubs check at import time."""
    gencode = (PKG / "api_pb2.py").read_text()
    m = re.search(r"Domain\.PUBLIC,\s*(\d+),\s*(\d+),\s*(\d+),", gencode)
    assert m is not None
    protobuf_min = ".".join(m.groups())
    grpc_min = re.search(
        r"GRPC_GENERATED_VERSION = '([\d.]+)'", (PKG / "api_pb2_grpc.py").read_text()
    )
    assert grpc_min is not None
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"protobuf>={protobuf_min},<{int(m.group(1)) + 1}" in deps
    assert any(d.startswith(f"grpcio>={grpc_min.group(1)},") for d in deps)


# ---------------------------------------------------------------------------------------------
# Devices and preferred allocation (pure)


def test_epc_pool_from_sysfs_topology() -> None:
    pool = epc_pool(DEFAULT_EPC_RESOURCE, (EpcNode(0, 3 * MIB), EpcNode(1, 2 * MIB + 5)))
    assert [(d.id, d.numa_node) for d in pool.devices] == [
        ("epc-0-00000", 0),
        ("epc-0-00001", 0),
        ("epc-0-00002", 0),
        ("epc-1-00000", 1),
        ("epc-1-00001", 1),
    ]


def test_epc_mib_override() -> None:
    no_sysfs = epc_pool(DEFAULT_EPC_RESOURCE, None, epc_mib=3)
    assert [(d.id, d.numa_node) for d in no_sysfs.devices] == [
        ("epc-00000", None),
        ("epc-00001", None),
        ("epc-00002", None),
    ]
    # With sysfs, --epc-mib sets the total, spread over the NUMA nodes in proportion.
    spread = epc_pool(DEFAULT_EPC_RESOURCE, (EpcNode(0, 64 * MIB), EpcNode(1, 32 * MIB)), epc_mib=7)
    assert [d.numa_node for d in spread.devices] == [0, 0, 0, 0, 0, 1, 1]
    with pytest.raises(UsageError) as caught:
        epc_pool(DEFAULT_EPC_RESOURCE, None, epc_mib=-1)
    assert caught.value.field == "--epc-mib"


def test_epc_pool_is_capped_so_one_list_fits_a_default_grpc_message() -> None:
    pool = epc_pool(DEFAULT_EPC_RESOURCE, (EpcNode(0, 4 * MAX_ADVERTISED_EPC_MIB * MIB),))
    assert pool.size == MAX_ADVERTISED_EPC_MIB
    service = DevicePluginService(pool, PoolHealth(False), aesm_available=lambda: True)
    # "Unhealthy" is the longer health word; 4 MiB is gRPC's default receive limit (the kubelet's).
    assert service.device_list(False).ByteSize() < 4 * MIB
    assert all(len(d.id) <= 63 for d in pool.devices[-3:])


def test_unknown_resource_name_is_a_usage_error() -> None:
    with pytest.raises(UsageError) as caught:
        epc_pool("example.com/epc", None, epc_mib=1)
    assert caught.value.field == "--resource-name"
    assert caught.value.actual == "example.com/epc"


def test_preferred_allocation_prefers_one_numa_node_and_lowest_ids() -> None:
    pool = epc_pool(DEFAULT_EPC_RESOURCE, (EpcNode(0, 4 * MIB), EpcNode(1, 2 * MIB)))
    every = [d.id for d in reversed(pool.devices)]  # order of the request does not matter
    assert preferred_allocation(pool, every, [], 3) == ["epc-0-00000", "epc-0-00001", "epc-0-00002"]
    # The must-include device's node, when it has room.
    assert preferred_allocation(pool, every, ["epc-1-00001"], 2) == ["epc-1-00000", "epc-1-00001"]
    # Node 0 has only 2 free: node 1 (lowest node with room) is taken whole instead.
    free = ["epc-0-00002", "epc-0-00003", "epc-1-00000", "epc-1-00001"]
    assert preferred_allocation(pool, free, [], 2) == ["epc-0-00002", "epc-0-00003"]
    assert preferred_allocation(pool, free[1:], [], 2) == ["epc-1-00000", "epc-1-00001"]
    # No node has room for 5: the fullest node first, then the rest.
    assert preferred_allocation(pool, every, [], 5) == [
        "epc-0-00000",
        "epc-0-00001",
        "epc-0-00002",
        "epc-0-00003",
        "epc-1-00000",
    ]
    with pytest.raises(AllocationRequestError, match="'epc-9-00000'"):
        preferred_allocation(pool, ["epc-9-00000"], [], 1)
    with pytest.raises(AllocationRequestError, match="cannot choose 7"):
        preferred_allocation(pool, every, [], 7)


def test_provision_pool() -> None:
    pool = provision_pool()
    assert pool.resource_name == PROVISION_RESOURCE
    assert pool.size == 110
    assert pool.devices[0].id == "provision-000"
    assert all(d.numa_node is None for d in pool.devices)


# ---------------------------------------------------------------------------------------------
# Discovery


def test_no_sgx_advertises_zero_epc_devices(tmp_path: Path, plugin_dir: Path) -> None:
    root = sgx_node(tmp_path / "plain", sgx=False, aesm=False)
    epc, provision = build_pools(PluginConfig(plugin_dir=plugin_dir, root=root))
    assert epc.size == 0
    assert provision.size == 110


def test_sgx_without_epc_size_needs_epc_mib(tmp_path: Path, plugin_dir: Path) -> None:
    root = sgx_node(tmp_path / "old-kernel", epc=None)
    with pytest.raises(UsageError) as caught:
        build_pools(PluginConfig(plugin_dir=plugin_dir, root=root))
    assert caught.value.field == "--epc-mib"
    assert "--epc-mib" in (caught.value.hint or "")
    epc, _ = build_pools(PluginConfig(plugin_dir=plugin_dir, root=root, epc_mib=8))
    assert epc.size == 8
    assert epc.devices[0].numa_node is None


def test_missing_plugin_dir_is_a_usage_error(tmp_path: Path, node: Path) -> None:
    config = PluginConfig(plugin_dir=tmp_path / "nope", root=node)
    with pytest.raises(UsageError) as caught:
        DevicePluginRunner(config, build_pools(config))
    assert caught.value.field == "--plugin-dir"


# ---------------------------------------------------------------------------------------------
# Against the fake kubelet


def test_registration(
    kubelet: FakeKubelet, start_plugin: Callable[..., RunningPlugin], plugin_dir: Path
) -> None:
    start_plugin()
    epc = kubelet.wait_registered(DEFAULT_EPC_RESOURCE)
    provision = kubelet.wait_registered(PROVISION_RESOURCE)
    assert (epc.version, epc.endpoint) == ("v1beta1", EPC_SOCKET)
    assert (provision.version, provision.endpoint) == ("v1beta1", PROVISION_SOCKET)
    for request in (epc, provision):
        assert request.options.get_preferred_allocation_available
        assert not request.options.pre_start_required
        assert (plugin_dir / request.endpoint).is_socket()
    options = kubelet.options(DEFAULT_EPC_RESOURCE)
    assert options.get_preferred_allocation_available
    assert not options.pre_start_required
    kubelet.pre_start(DEFAULT_EPC_RESOURCE, ["epc-0-00000"])


def test_list_and_watch_initial_lists(
    kubelet: FakeKubelet, start_plugin: Callable[..., RunningPlugin]
) -> None:
    start_plugin()
    epc = kubelet.wait_list(DEFAULT_EPC_RESOURCE, bool)
    assert [(d.id, d.health, d.numa_nodes) for d in epc] == [
        *((f"epc-0-{i:05d}", "Healthy", (0,)) for i in range(4)),
        *((f"epc-1-{i:05d}", "Healthy", (1,)) for i in range(2)),
    ]
    provision = kubelet.wait_list(PROVISION_RESOURCE, bool)
    assert len(provision) == 110
    assert all(d.health == "Healthy" and d.numa_nodes == () for d in provision)


def test_device_loss_and_return_update_the_stream(
    kubelet: FakeKubelet, start_plugin: Callable[..., RunningPlugin], node: Path
) -> None:
    start_plugin()
    kubelet.wait_list(DEFAULT_EPC_RESOURCE, all_health("Healthy"))
    kubelet.wait_list(PROVISION_RESOURCE, all_health("Healthy"))
    enclave = node / "dev/sgx_enclave"
    enclave.unlink()
    lost = kubelet.wait_list(DEFAULT_EPC_RESOURCE, all_health("Unhealthy"), "an Unhealthy list")
    assert len(lost) == 6
    with pytest.raises(grpc.RpcError) as caught:
        kubelet.allocate(DEFAULT_EPC_RESOURCE, [["epc-0-00000"]])
    assert code_and_details(caught.value)[0] == grpc.StatusCode.FAILED_PRECONDITION
    put(node, "/dev/sgx_enclave", mode=0o666)
    back = kubelet.wait_list(DEFAULT_EPC_RESOURCE, all_health("Healthy"), "a Healthy list")
    assert [d.id for d in back] == [d.id for d in lost]
    assert kubelet.list_count(DEFAULT_EPC_RESOURCE) == 3
    # The provisioning device never went away: its stream saw only the first list.
    assert kubelet.list_count(PROVISION_RESOURCE) == 1
    # The provisioning pool follows its own device node.
    (node / "dev/sgx_provision").unlink()
    kubelet.wait_list(PROVISION_RESOURCE, all_health("Unhealthy"), "an Unhealthy provision list")


def test_allocate_one_and_n_mib(
    kubelet: FakeKubelet, start_plugin: Callable[..., RunningPlugin]
) -> None:
    start_plugin()
    kubelet.wait_list(DEFAULT_EPC_RESOURCE, bool)
    one = kubelet.allocate(DEFAULT_EPC_RESOURCE, [["epc-1-00001"]])
    assert len(one.container_responses) == 1
    c = one.container_responses[0]
    assert [(d.container_path, d.host_path, d.permissions) for d in c.devices] == [
        ("/dev/sgx_enclave", "/dev/sgx_enclave", "rw")
    ]
    assert [(m.container_path, m.host_path, m.read_only) for m in c.mounts] == [
        ("/var/run/aesmd", "/var/run/aesmd", True)
    ]
    assert dict(c.envs) == {"NACRE_SGX_EPC_MIB": "1", "SGX_AESM_ADDR": "1"}
    assert not c.annotations
    assert not c.cdi_devices
    # N MiB, and two containers in one request.
    many = kubelet.allocate(
        DEFAULT_EPC_RESOURCE,
        [["epc-0-00000", "epc-0-00001", "epc-0-00002", "epc-0-00003"], ["epc-1-00000"]],
    )
    assert [r.envs["NACRE_SGX_EPC_MIB"] for r in many.container_responses] == ["4", "1"]
    for r in many.container_responses:
        assert [d.host_path for d in r.devices] == ["/dev/sgx_enclave"]  # never sgx_provision


def test_allocate_without_aesm_mounts_nothing(
    tmp_path: Path,
    plugin_dir: Path,
    kubelet: FakeKubelet,
    start_plugin: Callable[..., RunningPlugin],
) -> None:
    start_plugin(root=sgx_node(tmp_path / "no-aesm", aesm=False))
    kubelet.wait_list(DEFAULT_EPC_RESOURCE, bool)
    c = kubelet.allocate(DEFAULT_EPC_RESOURCE, [["epc-0-00000"]]).container_responses[0]
    assert not c.mounts
    assert dict(c.envs) == {"NACRE_SGX_EPC_MIB": "1"}


def test_provision_only_on_the_provision_resource(
    kubelet: FakeKubelet, start_plugin: Callable[..., RunningPlugin]
) -> None:
    start_plugin()
    kubelet.wait_list(PROVISION_RESOURCE, bool)
    c = kubelet.allocate(PROVISION_RESOURCE, [["provision-007"]]).container_responses[0]
    assert [(d.container_path, d.host_path, d.permissions) for d in c.devices] == [
        ("/dev/sgx_provision", "/dev/sgx_provision", "rw")
    ]
    assert not c.envs
    assert not c.mounts
    # Each resource knows only its own devices.
    exc = rpc_error(lambda: kubelet.allocate(DEFAULT_EPC_RESOURCE, [["provision-007"]]))
    assert code_and_details(exc)[0] == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("containers", "needle"),
    [
        ([["epc-0-00000", "epc-7-00000"]], "'epc-7-00000'"),
        ([["../../etc/passwd"]], "'../../etc/passwd'"),
        ([["epc-0-00000", "epc-0-00000"]], "listed twice"),
        ([[]], "asks for no devices"),
        ([], "no container requests"),
    ],
)
def test_allocate_rejects_bad_requests(
    kubelet: FakeKubelet,
    start_plugin: Callable[..., RunningPlugin],
    containers: list[list[str]],
    needle: str,
) -> None:
    start_plugin()
    kubelet.wait_list(DEFAULT_EPC_RESOURCE, bool)
    code, details = code_and_details(
        rpc_error(lambda: kubelet.allocate(DEFAULT_EPC_RESOURCE, containers))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in details
    # The plugin still serves.
    assert kubelet.allocate(DEFAULT_EPC_RESOURCE, [["epc-0-00000"]]).container_responses


def test_preferred_allocation_over_grpc(
    kubelet: FakeKubelet, start_plugin: Callable[..., RunningPlugin]
) -> None:
    start_plugin()
    every = [d.id for d in kubelet.wait_list(DEFAULT_EPC_RESOURCE, bool)]
    assert kubelet.preferred(DEFAULT_EPC_RESOURCE, every, [], 2) == ["epc-0-00000", "epc-0-00001"]
    assert kubelet.preferred(DEFAULT_EPC_RESOURCE, every, ["epc-1-00000"], 2) == [
        "epc-1-00000",
        "epc-1-00001",
    ]
    assert kubelet.preferred(PROVISION_RESOURCE, ["provision-009", "provision-003"], [], 1) == [
        "provision-003"
    ]
    code, details = code_and_details(
        rpc_error(lambda: kubelet.preferred(DEFAULT_EPC_RESOURCE, ["nope"], [], 1))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "'nope'" in details


def test_reregisters_after_kubelet_restart(
    plugin_dir: Path, kubelet: FakeKubelet, start_plugin: Callable[..., RunningPlugin]
) -> None:
    start_plugin()
    kubelet.wait_list(DEFAULT_EPC_RESOURCE, bool)
    kubelet.wait_list(PROVISION_RESOURCE, bool)
    kubelet.stop()
    (plugin_dir / "kubelet.sock").unlink(missing_ok=True)
    restarted = FakeKubelet(plugin_dir).start()
    try:
        for resource in (DEFAULT_EPC_RESOURCE, PROVISION_RESOURCE):
            restarted.wait_registered(resource)
            assert len(restarted.wait_list(resource, all_health("Healthy"))) in (6, 110)
        assert restarted.allocate(DEFAULT_EPC_RESOURCE, [["epc-0-00000"]]).container_responses
    finally:
        restarted.stop()


def test_recreates_its_socket_when_the_kubelet_clears_the_directory(
    plugin_dir: Path, kubelet: FakeKubelet, start_plugin: Callable[..., RunningPlugin]
) -> None:
    """A starting kubelet removes every socket of the directory, then serves a new kubelet.sock."""
    start_plugin()
    kubelet.wait_registered(DEFAULT_EPC_RESOURCE)
    kubelet.stop()
    for sock in plugin_dir.iterdir():
        # The plugin may be replacing its own sockets at this very moment (it noticed the
        # kubelet go): one gone since the listing is fine, as it is for a kubelet.
        sock.unlink(missing_ok=True)
    restarted = FakeKubelet(plugin_dir).start()
    try:
        request = restarted.wait_registered(DEFAULT_EPC_RESOURCE)
        assert (plugin_dir / request.endpoint).is_socket()
        restarted.wait_list(DEFAULT_EPC_RESOURCE, all_health("Healthy"))
        assert restarted.allocate(DEFAULT_EPC_RESOURCE, [["epc-1-00000"]]).container_responses
    finally:
        restarted.stop()


def test_waits_for_a_kubelet_that_is_not_up_yet(
    plugin_dir: Path, start_plugin: Callable[..., RunningPlugin]
) -> None:
    plugin = start_plugin()
    late = FakeKubelet(plugin_dir)
    try:
        # The plugin serves while no kubelet listens, and registers once one appears.
        for name in (EPC_SOCKET, PROVISION_SOCKET):
            late.wait_for(name, (plugin_dir / name).is_socket)
        late.start()
        late.wait_registered(DEFAULT_EPC_RESOURCE)
        assert plugin.error is None
    finally:
        late.stop()


def test_registration_rejected_stops_the_plugin(
    plugin_dir: Path, node: Path, start_plugin: Callable[..., RunningPlugin]
) -> None:
    refusing = FakeKubelet(plugin_dir, reject="resource already registered").start()
    try:
        plugin = start_plugin()
        plugin.thread.join(timeout=PROCESS_TIMEOUT)
        assert isinstance(plugin.error, RegistrationRejectedError)
        assert "resource already registered" in str(plugin.error)
        assert not (plugin_dir / EPC_SOCKET).exists()
    finally:
        refusing.stop()


def test_stop_ends_streams_and_removes_sockets(
    plugin_dir: Path, kubelet: FakeKubelet, start_plugin: Callable[..., RunningPlugin]
) -> None:
    plugin = start_plugin()
    kubelet.wait_list(DEFAULT_EPC_RESOURCE, bool)
    kubelet.wait_list(PROVISION_RESOURCE, bool)
    plugin.stop()
    kubelet.wait_for(
        "both streams to end",
        lambda: (
            kubelet.stream_ends.get(DEFAULT_EPC_RESOURCE) == 1
            and kubelet.stream_ends.get(PROVISION_RESOURCE) == 1
        ),
    )
    assert sorted(p.name for p in plugin_dir.iterdir()) == ["kubelet.sock"]


@pytest.mark.parametrize(
    ("resource", "socket"),
    [
        ("alibabacloud.com/sgx_epc_MiB", EPC_SOCKET),
        ("sgx.intel.com/epc", "nacre-epc.sock"),
    ],
)
def test_alternative_resource_names(
    kubelet: FakeKubelet,
    start_plugin: Callable[..., RunningPlugin],
    resource: str,
    socket: str,
) -> None:
    start_plugin(resource_name=resource)
    request = kubelet.wait_registered(resource)
    assert request.endpoint == socket
    assert len(kubelet.wait_list(resource, bool)) == 6
    c = kubelet.allocate(resource, [["epc-0-00000", "epc-0-00001"]]).container_responses[0]
    assert c.envs["NACRE_SGX_EPC_MIB"] == "2"
    kubelet.wait_registered(PROVISION_RESOURCE)
    assert all(r.resource_name != DEFAULT_EPC_RESOURCE for r in kubelet.registrations)


# ---------------------------------------------------------------------------------------------
# The CLI


def test_cli_rejects_unknown_resource_name(node: Path, plugin_dir: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "k8s",
            "device-plugin",
            "--resource-name",
            "example.com/epc",
            "--root",
            str(node),
            "--unsafe-fake-devices",
            "--plugin-dir",
            str(plugin_dir),
        ],
    )
    assert result.exit_code == 2
    assert "example.com/epc" in result.output
    assert "--resource-name" in result.output


def test_cli_exits_cleanly_on_sigterm(node: Path, plugin_dir: Path, kubelet: FakeKubelet) -> None:
    nacre = Path(sys.executable).parent / "nacre"
    assert nacre.exists(), "the nacre entry point is installed with the package"
    process = subprocess.Popen(
        [
            str(nacre),
            "k8s",
            "device-plugin",
            "--root",
            str(node),
            "--unsafe-fake-devices",
            "--plugin-dir",
            str(plugin_dir),
            "--poll-interval",
            "0.05",
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        kubelet.wait_for(
            "the CLI's registrations", lambda: len(kubelet.registrations) >= 2, PROCESS_TIMEOUT
        )
        kubelet.wait_list(DEFAULT_EPC_RESOURCE, bool)
        assert (plugin_dir / EPC_SOCKET).is_socket()
        assert (plugin_dir / PROVISION_SOCKET).is_socket()
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=PROCESS_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr
    assert not (plugin_dir / EPC_SOCKET).exists()
    assert not (plugin_dir / PROVISION_SOCKET).exists()
    assert "stopping" in stderr
    assert "SIGTERM" in stderr


def test_regular_files_are_not_devices_unless_asked(
    kubelet: FakeKubelet, start_plugin: Callable[..., RunningPlugin]
) -> None:
    """On a node (the default) a regular file at /dev/sgx_enclave is not an SGX device: the
    plugin advertises the EPC the sysfs reports but every device is Unhealthy."""
    start_plugin(unsafe_fake_devices=False)
    kubelet.wait_registered(DEFAULT_EPC_RESOURCE)
    kubelet.wait_list(DEFAULT_EPC_RESOURCE, all_health("Unhealthy"))


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (grpc.StatusCode.CANCELLED, KubeletUnavailableError),  # a kubelet stopping mid-call
        (grpc.StatusCode.UNAVAILABLE, KubeletUnavailableError),
        (grpc.StatusCode.UNKNOWN, RegistrationRejectedError),  # how the kubelet refuses
    ],
)
def test_a_kubelet_going_away_mid_call_is_retried_not_a_refusal(
    plugin_dir: Path, code: grpc.StatusCode, error: type[Exception]
) -> None:
    class Answer(api_pb2_grpc.RegistrationServicer):
        def Register(
            self, request: api_pb2.RegisterRequest, context: grpc.ServicerContext
        ) -> api_pb2.Empty:
            context.abort(code, "going away")
            raise AssertionError("abort returned")

    server = grpc.server(ThreadPoolExecutor(max_workers=1))
    api_pb2_grpc.add_RegistrationServicer_to_server(Answer(), server)
    server.add_insecure_port(f"unix:{plugin_dir / 'kubelet.sock'}")
    server.start()
    try:
        with pytest.raises(error):
            register(
                plugin_dir,
                endpoint=EPC_SOCKET,
                resource_name=DEFAULT_EPC_RESOURCE,
                options=api_pb2.DevicePluginOptions(),
            )
    finally:
        server.stop(0).wait()
