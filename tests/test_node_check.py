"""``nacre node check`` on fake procfs / sysfs / devfs trees built under tmp_path.

Device nodes and the AESM socket are regular files here (a fake tree cannot hold device nodes without
privileges); their modes are real and checked. Files belong to the test runner, whose uid and gid the
fake /etc/passwd and /etc/group name ``root`` and ``sgx_prv``. Access is judged for an explicit
:class:`Identity` in the library tests and for the runner itself in the CLI tests.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nacre.cli import app
from nacre.errors import UsageError
from nacre.node import Identity, KernelVersion, NodeReport, discover

RUNNER_UID = os.getuid()
RUNNER_GID = os.getgid()
MIB = 1024 * 1024

#: An unprivileged user who is not the owner of the fake device nodes but is in their group.
MEMBER = Identity(uid=RUNNER_UID + 1000, gids=frozenset({RUNNER_GID}))
#: The same user outside the device nodes' group.
OUTSIDER = Identity(uid=RUNNER_UID + 1000, gids=frozenset({RUNNER_GID + 1000}))
ROOT = Identity(uid=0, gids=frozenset({0}))


def put(root: Path, path: str, text: str = "", mode: int | None = None) -> Path:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    if mode is not None:
        os.chmod(target, mode)
    return target


def base_tree(root: Path, flags: Iterable[str], release: str = "6.8.0-45-generic") -> Path:
    """/proc/cpuinfo for two CPUs, osrelease, passwd and group."""
    line = " ".join(["fpu", "vme", "de", "pse", *flags])
    cpuinfo = "".join(
        f"processor\t: {i}\nvendor_id\t: GenuineIntel\nflags\t\t: {line}\nbugs\t\t:\n\n"
        for i in range(2)
    )
    put(root, "/proc/cpuinfo", cpuinfo)
    put(root, "/proc/sys/kernel/osrelease", release + "\n")
    put(root, "/etc/passwd", f"root:x:{RUNNER_UID}:{RUNNER_GID}::/root:/bin/sh\n")
    put(root, "/etc/group", f"sgx_prv:x:{RUNNER_GID}:\n")
    (root / "sys/kernel/config").mkdir(parents=True, exist_ok=True)
    return root


def sgx_host(
    root: Path,
    *,
    provision_mode: int = 0o660,
    aesm: bool = True,
    epc_nodes: tuple[int, ...] = (64 * MIB, 64 * MIB),
    flags: tuple[str, ...] = ("sgx", "sgx_lc"),
) -> Path:
    base_tree(root, flags)
    put(root, "/dev/sgx_enclave", mode=0o666)
    put(root, "/dev/sgx_provision", mode=provision_mode)
    for i, size in enumerate(epc_nodes):
        put(root, f"/sys/devices/system/node/node{i}/x86/sgx_total_bytes", f"{size}\n")
        put(root, f"/sys/devices/system/node/node{i}/meminfo", "")
    if aesm:
        put(root, "/var/run/aesmd/aesm.socket", mode=0o777)
    return root


def tdx_guest(root: Path, *, entry: bool = True, release: str = "6.8.0-45-generic") -> Path:
    base_tree(root, ["hypervisor", "tdx_guest"], release)
    put(root, "/dev/tdx_guest", mode=0o600)
    report = root / "sys/kernel/config/tsm/report"
    report.mkdir(parents=True)
    if entry:
        put(root, "/sys/kernel/config/tsm/report/attest0/provider", "tdx_guest\n")
    return root


def snp_guest(root: Path) -> Path:
    base_tree(root, ["hypervisor", "sev", "sev_es", "sev_snp"])
    put(root, "/dev/sev-guest", mode=0o600)
    put(root, "/sys/kernel/config/tsm/report/r/provider", "sev_guest\n")
    return root


def statuses(report: NodeReport) -> dict[str, str]:
    return {f.check: f.status for f in report.findings}


def assert_advice_on_problems(report: NodeReport) -> None:
    for f in report.findings:
        if f.status == "ok":
            assert f.advice is None, f
        else:
            assert f.advice, f"{f.check} is {f.status} without advice"


# ---------------------------------------------------------------------------------------------------
# SGX host


def test_sgx_host_usable(tmp_path: Path) -> None:
    report = discover(sgx_host(tmp_path), identity=MEMBER)
    assert report.tee == "sgx"
    assert report.usable is True
    assert statuses(report) == {
        "kernel": "ok",
        "sgx.cpu": "ok",
        "sgx.flc": "ok",
        "sgx.sgx2": "warn",
        "sgx.enclave_device": "ok",
        "sgx.provision_device": "ok",
        "sgx.epc": "ok",
        "sgx.aesm": "ok",
    }
    assert report.epc_mib == 128
    assert [(n.node, n.size_bytes) for n in report.epc or ()] == [(0, 64 * MIB), (1, 64 * MIB)]
    assert report.finding("sgx.epc").seen.startswith("EPC 128 MiB in 2 NUMA node(s)")
    assert report.finding("sgx.provision_device").seen == (
        "/dev/sgx_provision -rw-rw---- root:sgx_prv"
    )
    assert report.kernel == KernelVersion("6.8.0-45-generic", 6, 8)
    assert {"sgx", "sgx_lc"} <= report.flags
    assert_advice_on_problems(report)


def test_sgx_host_missing_provision_access_and_aesm(tmp_path: Path) -> None:
    report = discover(sgx_host(tmp_path, aesm=False), identity=OUTSIDER)
    assert report.tee == "sgx"
    assert report.usable is False
    assert statuses(report) == {
        "kernel": "ok",
        "sgx.cpu": "ok",
        "sgx.flc": "ok",
        "sgx.sgx2": "warn",
        "sgx.enclave_device": "ok",
        "sgx.provision_device": "missing",
        "sgx.epc": "ok",
        "sgx.aesm": "missing",
    }
    provision = report.finding("sgx.provision_device")
    assert provision.advice is not None
    assert "add the user to the sgx_prv group for /dev/sgx_provision" in provision.advice
    aesm = report.finding("sgx.aesm")
    assert aesm.advice is not None
    assert "start aesmd" in aesm.advice
    assert "/var/run/aesmd" in aesm.advice
    assert [f.check for f in report.problems][:2] == ["sgx.provision_device", "sgx.aesm"]
    assert_advice_on_problems(report)


def test_sgx_provision_without_group_bits_gets_udev_advice(tmp_path: Path) -> None:
    report = discover(sgx_host(tmp_path, provision_mode=0o600, aesm=False), identity=MEMBER)
    provision = report.finding("sgx.provision_device")
    assert provision.status == "missing"
    assert provision.advice is not None
    assert 'GROUP="sgx_prv", MODE="0660"' in provision.advice


def test_sgx_aesm_covers_inaccessible_provision(tmp_path: Path) -> None:
    report = discover(sgx_host(tmp_path, aesm=True), identity=OUTSIDER)
    assert report.usable is True
    assert report.finding("sgx.provision_device").status == "warn"
    assert report.finding("sgx.aesm").status == "ok"


def test_sgx_in_process_quoting_without_aesm_is_a_warning(tmp_path: Path) -> None:
    report = discover(sgx_host(tmp_path, aesm=False), identity=MEMBER)
    assert report.usable is True
    aesm = report.finding("sgx.aesm")
    assert aesm.status == "warn"
    assert aesm.advice is not None
    assert "start aesmd" in aesm.advice


def test_sgx_without_flc_or_epc(tmp_path: Path) -> None:
    report = discover(sgx_host(tmp_path, flags=("sgx",), epc_nodes=(0, 0)), identity=MEMBER)
    assert report.tee == "sgx"
    assert report.usable is False
    assert report.finding("sgx.flc").status == "missing"
    epc = report.finding("sgx.epc")
    assert epc.status == "missing"
    assert epc.advice is not None
    assert "enable SGX and set PRMRR size in BIOS" in epc.advice


def test_sgx_without_epc_sysfs_on_old_kernel(tmp_path: Path) -> None:
    root = sgx_host(tmp_path, epc_nodes=())
    put(root, "/proc/sys/kernel/osrelease", "5.15.0-91-generic\n")
    report = discover(root, identity=MEMBER)
    epc = report.finding("sgx.epc")
    assert epc.status == "warn"
    assert "5.17" in epc.seen
    assert report.epc_mib is None
    assert report.usable is True


def test_sgx_no_driver_on_old_kernel(tmp_path: Path) -> None:
    root = base_tree(tmp_path, ["sgx", "sgx_lc"], release="5.4.0-150-generic")
    report = discover(root, identity=MEMBER)
    assert report.tee == "sgx"
    assert report.usable is False
    enclave = report.finding("sgx.enclave_device")
    assert enclave.status == "missing"
    assert enclave.advice is not None
    assert "5.11" in enclave.advice
    assert report.finding("kernel").status == "warn"


def test_sgx_legacy_isgx_only(tmp_path: Path) -> None:
    root = base_tree(tmp_path, ["sgx"])
    put(root, "/dev/isgx", mode=0o666)
    report = discover(root, identity=MEMBER)
    assert report.tee == "sgx"
    enclave = report.finding("sgx.enclave_device")
    assert enclave.status == "missing"
    assert enclave.advice is not None
    assert "/dev/isgx" in enclave.advice


def test_sgx_legacy_dcap_driver_is_a_warning(tmp_path: Path) -> None:
    root = sgx_host(tmp_path)
    (root / "dev/sgx_enclave").unlink()
    put(root, "/dev/sgx/enclave", mode=0o666)
    report = discover(root, identity=MEMBER)
    assert report.finding("sgx.enclave_device").status == "warn"
    assert report.usable is True


def test_strict_mode_refuses_regular_files_as_devices(tmp_path: Path) -> None:
    report = discover(sgx_host(tmp_path), identity=MEMBER, allow_regular_files=False)
    enclave = report.finding("sgx.enclave_device")
    assert enclave.status == "missing"
    assert "not a character device" in enclave.seen
    assert report.finding("sgx.aesm").status == "missing"
    assert report.usable is False


# ---------------------------------------------------------------------------------------------------
# TDX and SEV-SNP guests


def test_tdx_guest(tmp_path: Path) -> None:
    report = discover(tdx_guest(tmp_path), identity=ROOT)
    assert report.tee == "tdx"
    assert report.usable is True
    assert statuses(report) == {
        "kernel": "ok",
        "tdx.cpu": "ok",
        "tdx.device": "ok",
        "tsm.report": "ok",
    }
    assert report.tsm_providers == ("tdx_guest",)
    assert "provider tdx_guest" in report.finding("tsm.report").seen
    assert report.epc_mib is None
    assert_advice_on_problems(report)


def test_tdx_guest_without_entries_relies_on_device(tmp_path: Path) -> None:
    report = discover(tdx_guest(tmp_path, entry=False), identity=ROOT)
    assert report.usable is True
    assert report.tsm_providers == ()
    assert report.finding("tsm.report").status == "ok"


def test_tdx_guest_on_kernel_without_configfs_tsm(tmp_path: Path) -> None:
    root = tdx_guest(tmp_path, release="6.2.0-tdx")
    for p in sorted((root / "sys/kernel/config/tsm").rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    (root / "sys/kernel/config/tsm").rmdir()
    report = discover(root, identity=ROOT)
    assert report.tee == "tdx"
    assert report.usable is False
    assert statuses(report) == {
        "kernel": "warn",
        "tdx.cpu": "ok",
        "tdx.device": "ok",
        "tsm.report": "missing",
    }
    tsm = report.finding("tsm.report")
    assert tsm.advice is not None
    assert "6.7" in tsm.advice
    assert_advice_on_problems(report)


def test_tdx_guest_as_unprivileged_user_warns(tmp_path: Path) -> None:
    report = discover(tdx_guest(tmp_path), identity=OUTSIDER)
    assert report.usable is True
    assert report.finding("tdx.device").status == "warn"
    assert report.finding("tsm.report").status == "warn"
    assert_advice_on_problems(report)


def test_snp_guest(tmp_path: Path) -> None:
    report = discover(snp_guest(tmp_path), identity=ROOT)
    assert report.tee == "snp"
    assert report.usable is True
    assert statuses(report) == {
        "kernel": "ok",
        "snp.cpu": "ok",
        "snp.device": "ok",
        "tsm.report": "ok",
    }
    assert report.tsm_providers == ("sev_guest",)
    assert_advice_on_problems(report)


def test_snp_guest_without_sev_guest_module(tmp_path: Path) -> None:
    root = snp_guest(tmp_path)
    (root / "dev/sev-guest").unlink()
    (root / "sys/kernel/config/tsm/report/r/provider").unlink()
    (root / "sys/kernel/config/tsm/report/r").rmdir()
    report = discover(root, identity=ROOT)
    assert report.tee == "snp"
    assert report.usable is False
    assert statuses(report) == {
        "kernel": "ok",
        "snp.cpu": "ok",
        "snp.device": "missing",
        "tsm.report": "warn",
    }
    device = report.finding("snp.device")
    assert device.advice == "load the sev_guest module (modprobe sev_guest)"
    assert_advice_on_problems(report)


def test_snp_guest_with_another_provider(tmp_path: Path) -> None:
    root = snp_guest(tmp_path)
    put(root, "/sys/kernel/config/tsm/report/r/provider", "svsm\n")
    report = discover(root, identity=ROOT)
    assert report.tee == "snp"
    assert report.usable is False
    tsm = report.finding("tsm.report")
    assert tsm.status == "missing"
    assert tsm.advice is not None
    assert "modprobe sev_guest" in tsm.advice


def test_snp_host_is_not_a_guest(tmp_path: Path) -> None:
    root = base_tree(tmp_path, ["sev", "sev_es", "sev_snp"])
    report = discover(root, identity=ROOT)
    assert report.tee == "none"
    snp = report.finding("snp.cpu")
    assert snp.status == "missing"
    assert "SEV-SNP host" in snp.seen
    assert snp.advice is not None


# ---------------------------------------------------------------------------------------------------
# Bare VM, robustness


def test_bare_vm(tmp_path: Path) -> None:
    report = discover(base_tree(tmp_path, ["hypervisor"], "6.1.0-18-cloud-amd64"), identity=ROOT)
    assert report.tee == "none"
    assert report.usable is False
    assert statuses(report) == {
        "kernel": "ok",
        "sgx.cpu": "missing",
        "tdx.cpu": "missing",
        "snp.cpu": "missing",
    }
    assert_advice_on_problems(report)
    sgx = report.finding("sgx.cpu")
    assert sgx.advice is not None
    assert "BIOS" in sgx.advice


def test_empty_root(tmp_path: Path) -> None:
    report = discover(tmp_path, identity=ROOT)
    assert report.tee == "none"
    assert report.finding("kernel").status == "warn"
    assert report.kernel is None


def test_check_creates_nothing(tmp_path: Path) -> None:
    root = tdx_guest(tmp_path, entry=False)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    discover(root, identity=ROOT)
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before


def test_root_must_be_a_directory(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as info:
        discover(tmp_path / "missing")
    assert info.value.field == "--root"


@pytest.mark.parametrize(
    ("release", "expected"),
    [
        ("6.8.0-45-generic", (6, 8)),
        ("5.11.0", (5, 11)),
        ("6.18.44-fc-v782\n", (6, 18)),
    ],
)
def test_kernel_version_parse(release: str, expected: tuple[int, int]) -> None:
    version = KernelVersion.parse(release)
    assert version is not None
    assert (version.major, version.minor) == expected
    assert version.at_least((5, 11))


def test_kernel_version_garbage() -> None:
    assert KernelVersion.parse("not-a-version") is None


# ---------------------------------------------------------------------------------------------------
# CLI


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["node", "check", *args])
    return result.exit_code, " ".join(result.stdout.split())  # immune to table wrapping


def test_cli_sgx_host_json(tmp_path: Path) -> None:
    code, out = run("--json", "--root", str(sgx_host(tmp_path)))
    assert code == 0
    obj = json.loads(out)
    assert obj["tee"] == "sgx"
    assert obj["usable"] is True
    assert obj["epc_mib"] == 128
    assert obj["error"] is None
    assert {f["check"]: f["status"] for f in obj["findings"]}["sgx.provision_device"] == "ok"


def test_cli_tdx_guest_json(tmp_path: Path) -> None:
    code, out = run("--json", "--root", str(tdx_guest(tmp_path)))
    assert code == 0
    obj = json.loads(out)
    assert (obj["tee"], obj["usable"], obj["tsm_providers"]) == ("tdx", True, ["tdx_guest"])


def test_cli_bare_vm_exit_1_with_advice(tmp_path: Path) -> None:
    code, out = run("--json", "--root", str(base_tree(tmp_path, ["hypervisor"])))
    assert code == 1
    obj = json.loads(out)
    assert obj["tee"] == "none"
    assert obj["usable"] is False
    missing = [f for f in obj["findings"] if f["status"] == "missing"]
    assert [f["check"] for f in missing] == ["sgx.cpu", "tdx.cpu", "snp.cpu"]
    assert all(f["advice"] for f in missing)


def test_cli_sgx_missing_aesm_human(tmp_path: Path) -> None:
    root = sgx_host(tmp_path, aesm=False, provision_mode=0o000)
    code, out = run("--root", str(root))
    if RUNNER_UID == 0:  # root opens any device node: only AESM is then missing, as a warning
        assert code == 0
        assert "USABLE" in out
    else:
        assert code == 1
        assert "NOT USABLE" in out
    assert "sgx.aesm" in out
    assert "start aesmd" in out


def test_cli_root_not_a_directory(tmp_path: Path) -> None:
    file = tmp_path / "file"
    file.write_text("")
    code, out = run("--json", "--root", str(file))
    assert code == 2
    obj = json.loads(out)
    assert obj["error"]["code"] == "USAGE"
    assert obj["error"]["field"] == "--root"
    code, _ = run("--root", str(tmp_path / "nope"))
    assert code == 2
