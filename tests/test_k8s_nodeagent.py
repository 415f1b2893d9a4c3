"""``nacre k8s node-agent`` against the in-process fake API server (tests/k8s_fake_apiserver.py).

Fake node trees come from test_node_check's builders; CPUID answers come from a sparse file standing
in for ``/dev/cpu/0/cpuid`` (the driver's offset = leaf | subleaf << 32); TDX quotes come from the
fake configfs-tsm kernel of tee_fakes, answered by a simulated platform whose collateral the sim
PCS server publishes. The official client talks plain HTTP to 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import ApiClient
from typer.testing import CliRunner

from k8s_fake_apiserver import MERGE_PATCH, FakeApiServer, merge_patch, running
from nacre.cli import app
from nacre.errors import UsageError
from nacre.k8s.apiclient import KubernetesApiError, build_api_client
from nacre.k8s.nodeagent import (
    AgentConfig,
    AttestationFacts,
    CollateralSource,
    NodeAgent,
    NodeFacts,
    desired_metadata,
)
from nacre.k8s.nodeagent.cpuid import KssProbe
from nacre.k8s.nodeagent.labels import check_label_value
from nacre.node import discover
from nacre.sim.platform import SimPlatform
from nacre.sim.serve import make_server
from tee_fakes import fake_tsm, tdx_answer
from test_node_check import base_tree, put, sgx_host

NODE = "node-1"
NODES = f"/api/v1/nodes/{NODE}"
SRC = Path(__file__).resolve().parents[1] / "src"

#: CPUID answers of an SGX CPU: max leaf 0x1f, leaf 7 EBX.SGX, leaf 0x12.1 EAX attributes.
KSS_ON = 0x000000F6  # DEBUG MODE64BIT PROVISIONKEY EINITTOKENKEY CET KSS
KSS_OFF = 0x00000076


def cpuid_file(root: Path, regs: dict[tuple[int, int], tuple[int, int, int, int]]) -> Path:
    path = root / "dev/cpu/0/cpuid"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        for (leaf, subleaf), values in regs.items():
            fh.seek(leaf | (subleaf << 32))
            fh.write(struct.pack("<4I", *values))
    return path


def sgx_cpuid(root: Path, attributes_eax: int, *, sgx_bit: bool = True) -> Path:
    return cpuid_file(
        root,
        {
            (0x0, 0): (0x1F, 0x756E6547, 0x6C65746E, 0x49656E69),
            (0x7, 0): (0, 0x4 if sgx_bit else 0, 0, 0),
            (0x12, 1): (attributes_eax, 0, 0x1F, 0),
        },
    )


def shim(root: Path, directory: str, name: str, mode: int = 0o755) -> None:
    put(root, f"{directory}/{name}", "#!/bin/sh\n", mode=mode)


@pytest.fixture
def fake() -> Iterator[FakeApiServer]:
    with running() as server:
        server.add_node(NODE, labels={"kubernetes.io/hostname": NODE})
        yield server


@pytest.fixture
def api(fake: FakeApiServer) -> Iterator[ApiClient]:
    with build_api_client(server=fake.url) as client:
        yield client


def agent(api: ApiClient, root: Path, **kwargs: Any) -> NodeAgent:
    kwargs.setdefault("environ", {})
    kwargs.setdefault("retry_initial", 0.01)
    return NodeAgent(api, AgentConfig(NODE, root=root, **kwargs))


def own_labels(fake: FakeApiServer) -> dict[str, str]:
    labels = fake.nodes[NODE]["metadata"].get("labels", {})
    return {k: v for k, v in labels.items() if k.startswith("nacre.dev/")}


def node_report(fake: FakeApiServer) -> dict[str, Any]:
    text = fake.nodes[NODE]["metadata"]["annotations"]["nacre.dev/node-report"]
    report: dict[str, Any] = json.loads(text)
    return report


def sgx_root(tmp_path: Path) -> Path:
    root = sgx_host(tmp_path / "root")
    sgx_cpuid(root, KSS_ON)
    return root


# ---------------------------------------------------------------------------------------------------
# Labels per kind of node


def test_sgx_host_labels_and_patch_content_type(
    fake: FakeApiServer, api: ApiClient, tmp_path: Path
) -> None:
    result = agent(api, sgx_root(tmp_path)).sync_once()
    assert own_labels(fake) == {
        "nacre.dev/tee": "sgx",
        "nacre.dev/sgx-flc": "true",
        "nacre.dev/sgx-kss": "true",
        "nacre.dev/epc-mib": "128",
    }
    patches = fake.calls("PATCH", NODES)
    assert len(patches) == 1
    assert patches[0].content_type == MERGE_PATCH
    assert patches[0].body == result.patch
    body = patches[0].body
    assert set(body) == {"metadata"}
    assert set(body["metadata"]) == {"labels", "annotations"}
    assert set(body["metadata"]["annotations"]) == {"nacre.dev/node-report", "nacre.dev/updated-at"}
    report = node_report(fake)
    assert report["detected"] == "sgx"
    assert report["usable"] is True
    assert report["epc_mib"] == 128
    assert "KSS bit 7 = 1" in report["sgx_kss"]
    # No backend can quote on this host (no NACRE_TEE, no Gramine, no configfs-tsm): said why.
    assert "no TEE backend can quote" in report["absent"]["nacre.dev/fmspc"]
    assert "no TEE backend can quote" in report["absent"]["nacre.dev/tcb-status"]
    assert "nacre.dev/sandbox-runtime" in report["absent"]
    updated = fake.nodes[NODE]["metadata"]["annotations"]["nacre.dev/updated-at"]
    assert datetime.strptime(updated, "%Y-%m-%dT%H:%M:%SZ")


def test_sgx_kss_false_when_cpuid_says_so(
    fake: FakeApiServer, api: ApiClient, tmp_path: Path
) -> None:
    root = sgx_host(tmp_path / "root")
    sgx_cpuid(root, KSS_OFF)
    agent(api, root).sync_once()
    assert own_labels(fake)["nacre.dev/sgx-kss"] == "false"


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        (lambda root: None, "/dev/cpu/0/cpuid is absent"),
        (lambda root: sgx_cpuid(root, KSS_ON, sgx_bit=False), "EBX.SGX[2] is 0"),
        (
            lambda root: cpuid_file(root, {(0x0, 0): (0x0D, 0, 0, 0)}),
            "max basic leaf 0xd < 0x12",
        ),
        (lambda root: put(root, "/dev/cpu/0/cpuid", "short"), "short read"),
    ],
)
def test_sgx_kss_absent_with_reason(
    fake: FakeApiServer, api: ApiClient, tmp_path: Path, setup: Any, reason: str
) -> None:
    root = sgx_host(tmp_path / "root")
    setup(root)
    agent(api, root).sync_once()
    assert "nacre.dev/sgx-kss" not in own_labels(fake)
    assert own_labels(fake)["nacre.dev/tee"] == "sgx"
    assert reason in node_report(fake)["absent"]["nacre.dev/sgx-kss"]


def test_sgx_without_flc_and_epc_size(fake: FakeApiServer, api: ApiClient, tmp_path: Path) -> None:
    root = sgx_host(tmp_path / "root", epc_nodes=())
    sgx_cpuid(root, KSS_OFF)
    report = discover(root)
    agent(api, root).sync_once()
    if report.usable:
        labels = own_labels(fake)
        assert labels["nacre.dev/tee"] == "sgx"
        assert "nacre.dev/epc-mib" not in labels
        assert "sgx_total_bytes" in node_report(fake)["absent"]["nacre.dev/epc-mib"]
    else:
        assert own_labels(fake)["nacre.dev/tee"] == "none"


def test_unusable_tee_is_labelled_none(fake: FakeApiServer, api: ApiClient, tmp_path: Path) -> None:
    # SGX CPU without any SGX device node: detected, not usable.
    root = base_tree(tmp_path / "root", ["sgx", "sgx_lc"])
    agent(api, root).sync_once()
    assert own_labels(fake) == {"nacre.dev/tee": "none"}
    report = node_report(fake)
    assert report["detected"] == "sgx"
    assert report["usable"] is False
    assert any(f["status"] == "missing" for f in report["findings"])


@pytest.fixture
def sim(tmp_path: Path) -> SimPlatform:
    return SimPlatform.init(tmp_path / "sim")


@pytest.fixture
def tdx_root(tmp_path: Path, sim: SimPlatform) -> Iterator[Path]:
    root = base_tree(tmp_path / "root", ["hypervisor", "tdx_guest"])
    put(root, "/dev/tdx_guest", mode=0o600)
    with fake_tsm(root, "tdx_guest", tdx_answer(sim)):
        yield root


def test_tdx_guest_labels_with_fmspc_from_the_quote(
    fake: FakeApiServer, api: ApiClient, tdx_root: Path, sim: SimPlatform
) -> None:
    agent(api, tdx_root).sync_once()
    assert own_labels(fake) == {"nacre.dev/tee": "tdx", "nacre.dev/fmspc": sim.fmspc.hex()}
    report = node_report(fake)
    assert report["quote_tee"] == "tdx"
    assert "no collateral source configured" in report["absent"]["nacre.dev/tcb-status"]


@pytest.fixture
def pccs(sim: SimPlatform) -> Iterator[str]:
    server = make_server(sim, "127.0.0.1", 0)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
    )
    thread.start()
    try:
        yield server.url
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_tdx_guest_tcb_status_from_configured_collateral(
    fake: FakeApiServer, api: ApiClient, tdx_root: Path, sim: SimPlatform, pccs: str
) -> None:
    source = CollateralSource(pccs, trust=sim.trust_roots())
    agent(api, tdx_root, collateral=source).sync_once()
    labels = own_labels(fake)
    assert labels["nacre.dev/tcb-status"] == "UpToDate"
    assert labels["nacre.dev/fmspc"] == sim.fmspc.hex()
    assert node_report(fake)["sim"] is True


def test_sgx_sim_backend_out_of_date_tcb(
    fake: FakeApiServer, api: ApiClient, tmp_path: Path
) -> None:
    platform = SimPlatform.init(tmp_path / "old", tcb_status="OutOfDate")
    server = make_server(platform, "127.0.0.1", 0)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
    )
    thread.start()
    try:
        env = {"NACRE_TEE": "sim", "NACRE_SIM_DIR": str(platform.dir)}
        source = CollateralSource(server.url, trust=platform.trust_roots())
        agent(api, sgx_root(tmp_path), environ=env, collateral=source).sync_once()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    labels = own_labels(fake)
    assert labels["nacre.dev/tcb-status"] == "OutOfDate"
    assert labels["nacre.dev/fmspc"] == platform.fmspc.hex()


def test_untrusted_collateral_leaves_tcb_status_absent(
    fake: FakeApiServer, api: ApiClient, tdx_root: Path, pccs: str
) -> None:
    # The default trust is Intel's root: a simulated quote must not get a TCB label.
    agent(api, tdx_root, collateral=CollateralSource(pccs)).sync_once()
    labels = own_labels(fake)
    assert "nacre.dev/tcb-status" not in labels
    assert "nacre.dev/fmspc" in labels
    assert "did not verify" in node_report(fake)["absent"]["nacre.dev/tcb-status"]


def test_no_tee_node_with_kata(fake: FakeApiServer, api: ApiClient, tmp_path: Path) -> None:
    root = base_tree(tmp_path / "root", [])
    shim(root, "/opt/kata/bin", "containerd-shim-kata-v2")
    shim(root, "/usr/bin", "containerd-shim-rund-v2")
    agent(api, root).sync_once()
    assert own_labels(fake) == {"nacre.dev/tee": "none", "nacre.dev/sandbox-runtime": "kata"}
    assert node_report(fake)["sandbox_shims"] == [
        "/opt/kata/bin/containerd-shim-kata-v2",
        "/usr/bin/containerd-shim-rund-v2",
    ]


@pytest.mark.parametrize("binary", ["containerd-shim-rund-v2", "containerd-shim-rune-v2"])
def test_rund_detected(fake: FakeApiServer, api: ApiClient, tmp_path: Path, binary: str) -> None:
    root = base_tree(tmp_path / "root", [])
    shim(root, "/usr/local/bin", binary)
    agent(api, root).sync_once()
    assert own_labels(fake)["nacre.dev/sandbox-runtime"] == "rund"


def test_non_executable_shim_is_not_a_runtime(
    fake: FakeApiServer, api: ApiClient, tmp_path: Path
) -> None:
    root = base_tree(tmp_path / "root", [])
    shim(root, "/usr/local/bin", "containerd-shim-kata-v2", mode=0o644)
    agent(api, root).sync_once()
    assert "nacre.dev/sandbox-runtime" not in own_labels(fake)


# ---------------------------------------------------------------------------------------------------
# Own keys only


def test_other_keys_untouched(fake: FakeApiServer, api: ApiClient, tmp_path: Path) -> None:
    others = {
        "kubernetes.io/hostname": NODE,
        "topology.kubernetes.io/zone": "z1",
        "nacre.dev/pool": "blue",  # our domain, but not a key the agent owns
    }
    other_annotations = {"node.alpha.kubernetes.io/ttl": "0", "nacre.dev/owner": "ops"}
    fake.add_node(NODE, labels=others, annotations=other_annotations)
    agent(api, sgx_root(tmp_path)).sync_once()
    meta = fake.nodes[NODE]["metadata"]
    assert {k: meta["labels"][k] for k in others} == others
    assert {k: meta["annotations"][k] for k in other_annotations} == other_annotations
    body = fake.calls("PATCH", NODES)[0].body
    named = set(body["metadata"]["labels"]) | set(body["metadata"]["annotations"])
    assert named.isdisjoint(others)
    assert named.isdisjoint(other_annotations)


def test_stale_own_keys_removed(fake: FakeApiServer, api: ApiClient, tmp_path: Path) -> None:
    fake.add_node(
        NODE,
        labels={
            "kubernetes.io/hostname": NODE,
            "nacre.dev/tee": "sgx",
            "nacre.dev/sgx-kss": "true",
            "nacre.dev/tcb-status": "UpToDate",
            "nacre.dev/pool": "blue",
        },
    )
    agent(api, base_tree(tmp_path / "root", [])).sync_once()
    body = fake.calls("PATCH", NODES)[0].body
    assert body["metadata"]["labels"] == {
        "nacre.dev/tee": "none",
        "nacre.dev/sgx-kss": None,
        "nacre.dev/tcb-status": None,
    }
    assert fake.nodes[NODE]["metadata"]["labels"] == {
        "kubernetes.io/hostname": NODE,
        "nacre.dev/tee": "none",
        "nacre.dev/pool": "blue",
    }


def test_no_patch_when_unchanged(fake: FakeApiServer, api: ApiClient, tmp_path: Path) -> None:
    root = sgx_root(tmp_path)
    a = agent(api, root)
    assert a.sync_once().patch is not None
    stamp = fake.nodes[NODE]["metadata"]["annotations"]["nacre.dev/updated-at"]
    assert a.sync_once().patch is None
    assert len(fake.calls("GET", NODES)) == 2
    assert len(fake.calls("PATCH", NODES)) == 1
    assert fake.nodes[NODE]["metadata"]["annotations"]["nacre.dev/updated-at"] == stamp
    # A change on the node (the kata shim appears) patches again, with only what changed.
    shim(root, "/usr/local/bin", "containerd-shim-kata-v2")
    patch = a.sync_once().patch
    assert patch is not None
    assert patch["metadata"]["labels"] == {"nacre.dev/sandbox-runtime": "kata"}


# ---------------------------------------------------------------------------------------------------
# Label values


@pytest.mark.parametrize(
    "value", ["x" * 64, "-abc", "abc-", "a b", "UpToDate!", "ä", "a/b", "a" * 62 + "."]
)
def test_invalid_label_values_refused(value: str) -> None:
    with pytest.raises(Exception, match="not a valid value for label"):
        check_label_value("nacre.dev/tcb-status", value)


@pytest.mark.parametrize(
    "value", ["", "a", "x" * 63, "ConfigurationAndSWHardeningNeeded", "a.b_c-d"]
)
def test_valid_label_values_kept(value: str) -> None:
    assert check_label_value("nacre.dev/tcb-status", value) == value


def test_invalid_computed_value_is_left_off_with_reason(tmp_path: Path) -> None:
    facts = NodeFacts(
        report=discover(sgx_root(tmp_path)),
        kss=KssProbe(True, "test"),
        shims=(),
        attestation=AttestationFacts("sgx", "00906ed50000", "Up To Date"),
    )
    meta = desired_metadata(facts)
    assert "nacre.dev/tcb-status" not in meta.labels
    assert meta.labels["nacre.dev/fmspc"] == "00906ed50000"
    report = json.loads(meta.annotations["nacre.dev/node-report"])
    assert "not a valid value" in report["absent"]["nacre.dev/tcb-status"]
    for value in meta.labels.values():
        check_label_value("k", value)


# ---------------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize("name", ["", "Node_1", "-node", "node-", "a" * 254, "node..1"])
def test_invalid_node_name(name: str, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not a valid Kubernetes node name") as info:
        AgentConfig(name, root=tmp_path)
    assert info.value.field == "--node-name"


def test_missing_node_is_a_clear_error(fake: FakeApiServer, api: ApiClient, tmp_path: Path) -> None:
    del fake.nodes[NODE]
    a = agent(api, sgx_root(tmp_path))
    with pytest.raises(KubernetesApiError, match=f"nodes '{NODE}' not found") as info:
        a.sync_once()
    assert info.value.status == 404
    assert info.value.code == "K8S_NOT_FOUND"
    assert not info.value.retryable
    # Not retried within the pass; nothing patched.
    assert a.pass_with_retries(threading.Event()) is None
    assert len(fake.calls("GET", NODES)) == 2
    assert fake.calls("PATCH") == []


@pytest.mark.parametrize(("method", "verb"), [("GET", "get"), ("PATCH", "patch")])
def test_forbidden_names_the_rbac_verb(
    fake: FakeApiServer,
    api: ApiClient,
    tmp_path: Path,
    method: str,
    verb: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake.forbid(method, NODES)
    a = agent(api, sgx_root(tmp_path))
    with pytest.raises(KubernetesApiError) as info:
        a.sync_once()
    exc = info.value
    assert exc.status == 403
    assert exc.code == "K8S_FORBIDDEN"
    assert f"RBAC verb '{verb}' on 'nodes' is missing" in exc.message
    assert exc.hint is not None
    assert f"verbs [{verb}]" in exc.hint
    assert "ClusterRole" in exc.hint
    with caplog.at_level("ERROR", logger="nacre.k8s.nodeagent"):
        assert a.run(threading.Event(), once=True) is False
    assert f"RBAC verb '{verb}'" in caplog.text


def test_transient_errors_are_retried(fake: FakeApiServer, api: ApiClient, tmp_path: Path) -> None:
    fake.fail_next(503, 429)
    result = agent(api, sgx_root(tmp_path)).pass_with_retries(threading.Event())
    assert result is not None
    assert result.patch is not None
    assert len(fake.calls("GET", NODES)) == 3
    assert own_labels(fake)["nacre.dev/tee"] == "sgx"


def test_retries_are_bounded(
    fake: FakeApiServer, api: ApiClient, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake.fail_next(*[500] * 10)
    a = agent(api, sgx_root(tmp_path), retry_attempts=3)
    with caplog.at_level("WARNING", logger="nacre.k8s.nodeagent"):
        assert a.pass_with_retries(threading.Event()) is None
    assert len(fake.calls("GET", NODES)) == 3
    assert "giving up after 3 attempts" in caplog.text


def test_unreachable_api_server_is_retryable(tmp_path: Path) -> None:
    with running() as gone:
        url = gone.url
    with build_api_client(server=url) as client:
        a = NodeAgent(client, AgentConfig(NODE, root=sgx_root(tmp_path), environ={}))
        with pytest.raises(
            KubernetesApiError, match="cannot reach the Kubernetes API server"
        ) as info:
            a.sync_once()
    assert info.value.status == 0
    assert info.value.retryable


# ---------------------------------------------------------------------------------------------------
# The loop and the CLI


def test_loop_runs_until_stopped(fake: FakeApiServer, api: ApiClient, tmp_path: Path) -> None:
    a = agent(api, sgx_root(tmp_path), interval=0.05)
    stop = threading.Event()
    outcome: list[bool] = []
    thread = threading.Thread(target=lambda: outcome.append(a.run(stop)))
    thread.start()
    deadline = time.monotonic() + 10
    while len(fake.calls("GET", NODES)) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert outcome == [True]
    assert len(fake.calls("GET", NODES)) >= 3
    assert len(fake.calls("PATCH", NODES)) == 1


def test_cli_once(fake: FakeApiServer, tmp_path: Path) -> None:
    root = sgx_root(tmp_path)
    args = ["k8s", "node-agent", "--node-name", NODE, "--root", str(root), "--once"]
    env = {"NACRE_K8S_API_SERVER": fake.url, "NACRE_TEE": ""}
    result = CliRunner().invoke(app, args, env=env)
    assert result.exit_code == 0, result.output
    assert own_labels(fake)["nacre.dev/tee"] == "sgx"
    del fake.nodes[NODE]
    result = CliRunner().invoke(app, [*args, "--json"], env=env)
    assert result.exit_code == 1
    assert "not found" in result.output


def test_cli_usage_errors(fake: FakeApiServer, tmp_path: Path) -> None:
    runner = CliRunner()
    env = {"NACRE_K8S_API_SERVER": fake.url}
    bad_name = ["k8s", "node-agent", "--node-name", "Bad_Name", "--root", str(tmp_path)]
    result = runner.invoke(app, bad_name, env=env)
    assert result.exit_code == 2
    assert "not a valid Kubernetes node name" in result.output
    no_root = ["k8s", "node-agent", "--node-name", NODE, "--root", str(tmp_path / "nope")]
    result = runner.invoke(app, no_root, env=env)
    assert result.exit_code == 2
    assert "is not a directory" in result.output
    remote_http = ["k8s", "node-agent", "--node-name", NODE, "--api-server", "http://example.com"]
    result = runner.invoke(app, remote_http, env={})
    assert result.exit_code == 2
    assert "plain http is allowed only to a loopback address" in result.output
    trust_sim = ["k8s", "node-agent", "--node-name", NODE, "--trust-sim", "--once"]
    result = runner.invoke(app, trust_sim, env=env)
    assert result.exit_code == 2
    assert "--pccs" in result.output


def test_sigterm_exits_zero(fake: FakeApiServer, tmp_path: Path) -> None:
    root = sgx_root(tmp_path)
    env = {
        **os.environ,
        "PYTHONPATH": str(SRC),
        "NODE_NAME": NODE,
        "NACRE_K8S_API_SERVER": fake.url,
        "NACRE_TEE": "",
    }
    cmd = [sys.executable, "-c", "from nacre.cli import main; main()", "k8s", "node-agent"]
    proc = subprocess.Popen(
        [*cmd, "--root", str(root), "--interval", "300", "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while not fake.calls("PATCH", NODES) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        assert fake.calls("PATCH", NODES), "the agent made no pass"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err.decode()
    lines = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    assert any(line.get("signal") == "SIGTERM" for line in lines)
    assert own_labels(fake)["nacre.dev/tee"] == "sgx"


# ---------------------------------------------------------------------------------------------------
# The fake itself applies RFC 7386 correctly (its Appendix A examples).


@pytest.mark.parametrize(
    ("target", "patch", "result"),
    [
        ({"a": "b"}, {"a": "c"}, {"a": "c"}),
        ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
        ({"a": "b"}, {"a": None}, {}),
        ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
        ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
        ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
        ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
        ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
        (["a", "b"], ["c", "d"], ["c", "d"]),
        ({"a": "b"}, ["c"], ["c"]),
        ({"a": "foo"}, None, None),
        ({"a": "foo"}, "bar", "bar"),
        ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
        ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
        ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
    ],
)
def test_fake_merge_patch_rfc7386(target: Any, patch: Any, result: Any) -> None:
    assert merge_patch(target, patch) == result


def test_fake_refuses_other_patch_content_types(fake: FakeApiServer, api: ApiClient) -> None:
    from kubernetes.client import CoreV1Api
    from kubernetes.client.exceptions import ApiException

    with pytest.raises(ApiException) as info:
        CoreV1Api(api).patch_node(
            NODE,
            {"metadata": {"labels": {"x": "y"}}},
            _content_type="application/strategic-merge-patch+json",
        )
    assert info.value.status == 415
    assert "x" not in fake.nodes[NODE]["metadata"]["labels"]


# ---------------------------------------------------------------------------------------------------
# Client configuration


def test_token_file_sends_a_bearer_token(fake: FakeApiServer, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cr3t-token\n")
    with build_api_client(server=fake.url, token_file=token) as client:
        agent(client, sgx_root(tmp_path)).sync_once()
    assert {r.authorization for r in fake.requests} == {"Bearer s3cr3t-token"}


def test_kubeconfig(fake: FakeApiServer, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": fake.url}}],
                "users": [{"name": "agent", "user": {"token": "from-kubeconfig"}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "agent"}}],
                "current-context": "fake",
            }
        )
    )
    with build_api_client(kubeconfig=kubeconfig) as client:
        agent(client, sgx_root(tmp_path)).sync_once()
    assert own_labels(fake)["nacre.dev/tee"] == "sgx"
    assert {r.authorization for r in fake.requests} == {"Bearer from-kubeconfig"}


def test_client_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no Kubernetes API server configured"):
        build_api_client(environ={})
    with pytest.raises(UsageError, match="cannot load the Kubernetes client configuration"):
        build_api_client(kubeconfig=tmp_path / "missing", environ={})
    with pytest.raises(UsageError, match="cannot read the token file"):
        build_api_client(server="http://127.0.0.1:1", token_file=tmp_path / "missing")
    with pytest.raises(UsageError, match="not an http"):
        build_api_client(server="ftp://127.0.0.1")


def test_cli_pccs_and_trust_sim(
    fake: FakeApiServer, tmp_path: Path, sim: SimPlatform, pccs: str
) -> None:
    root = sgx_root(tmp_path)
    args = ["k8s", "node-agent", "--node-name", NODE, "--root", str(root), "--once"]
    args += ["--pccs", pccs, "--trust-sim"]
    env = {
        "NACRE_K8S_API_SERVER": fake.url,
        "NACRE_TEE": "sim",
        "NACRE_SIM_DIR": str(sim.dir),
        "NACRE_SIM_TEE": "sgx",
    }
    result = CliRunner().invoke(app, args, env=env)
    assert result.exit_code == 0, result.output
    labels = own_labels(fake)
    assert labels["nacre.dev/tcb-status"] == "UpToDate"
    assert labels["nacre.dev/fmspc"] == sim.fmspc.hex()
    assert labels["nacre.dev/tee"] == "sgx"
