"""What TEE this machine offers and what is missing to use it.

Pure functions over a root directory: production reads ``/``, tests build a fake procfs / sysfs / devfs
tree under a temporary directory and pass it as ``root``. Nothing here writes, creates directories
(configfs-tsm report entries are only *looked at*, never made) or runs commands.

What is read (paths relative to ``root``):

- ``/proc/cpuinfo`` ``flags``: ``sgx``, ``sgx_lc`` (flexible launch control), ``sgx2`` (rarely listed),
  ``tdx_guest``, ``sev``, ``sev_es``, ``sev_snp`` and ``hypervisor`` (which tells a guest from a host:
  ``sev_snp`` on bare metal means an SEV-SNP *host*, which launches confidential VMs but is not one).
- ``/proc/sys/kernel/osrelease``: the kernel version, compared with the minimums below.
- SGX: ``/dev/sgx_enclave`` and ``/dev/sgx_provision`` (in-kernel driver), the legacy out-of-tree DCAP
  driver's ``/dev/sgx/enclave`` and ``/dev/sgx/provision``, the non-FLC ``/dev/isgx``; their type, mode,
  owner and group (names from ``/etc/passwd`` and ``/etc/group`` of the same root); EPC per NUMA node
  from ``/sys/devices/system/node/node*/x86/sgx_total_bytes``; the AESM socket
  ``/var/run/aesmd/aesm.socket`` (or ``/run/aesmd/aesm.socket``).
  ``/proc/cpuinfo`` carries no EPC sizes (they live in CPUID leaf 0x12 and the kernel log), so on kernels
  without ``sgx_total_bytes`` the EPC size is reported as unknown, with a pointer to where to look.
- TDX guest: the ``tdx_guest`` flag, ``/dev/tdx_guest``; SEV-SNP guest: ``sev_snp`` + ``hypervisor``,
  ``/dev/sev-guest``; both: configfs-tsm ``/sys/kernel/config/tsm/report`` and the ``provider`` of any
  entry already there (platform-anchors §5.3: the provider is an attribute of a report entry, so a check
  that creates nothing can only read it from entries other processes made). Nothing under
  ``/sys/firmware`` tells a confidential guest apart reliably, so it is not read.

Device nodes must be character devices and the AESM socket a socket. A fake tree cannot hold device
nodes without privileges, so with ``allow_regular_files`` (the default whenever ``root`` is not ``/``)
regular files stand in for them; their mode, owner and group are checked the same way.

Access is judged for an :class:`Identity` (default: this process) with the usual owner / group / other
rules; uid 0 may open anything.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from nacre.errors import LimitExceededError, UsageError

__all__ = [
    "CONFIGFS_TSM_MIN",
    "MAX_PSEUDO_FILE_BYTES",
    "SGX_DRIVER_MIN",
    "SGX_EDMM_MIN",
    "SGX_EPC_SYSFS_MIN",
    "SNP_GUEST_DEVICE_MIN",
    "TDX_GUEST_DEVICE_MIN",
    "TDX_GUEST_FLAG_MIN",
    "EpcNode",
    "Finding",
    "Identity",
    "KernelVersion",
    "NodeReport",
    "Status",
    "TeeName",
    "discover",
]

Status = Literal["ok", "missing", "warn"]
TeeName = Literal["sgx", "tdx", "snp"]
Tee = Literal["sgx", "tdx", "snp", "none"]

# Minimum kernel versions (major, minor). Sources:
#: In-kernel SGX driver (/dev/sgx_enclave, /dev/sgx_provision; needs FLC): merged in Linux 5.11
#: (arch/x86/kernel/cpu/sgx/, Documentation/x86/sgx.rst).
SGX_DRIVER_MIN: Final = (5, 11)
#: /sys/devices/system/node/nodeX/x86/sgx_total_bytes: commit 50468e431335 "x86/sgx: Add an attribute
#: for the amount of SGX memory in a NUMA node" (Documentation/ABI/stable/sysfs-devices-node, dated
#: November 2021), in Linux 5.17.
SGX_EPC_SYSFS_MIN: Final = (5, 17)
#: SGX2 / EDMM (dynamic enclave memory) support in the in-kernel driver: Linux 6.0.
SGX_EDMM_MIN: Final = (6, 0)
#: TDX guest core support and the ``tdx_guest`` cpuinfo flag (X86_FEATURE_TDX_GUEST): Linux 5.19.
TDX_GUEST_FLAG_MIN: Final = (5, 19)
#: /dev/tdx_guest (drivers/virt/coco/tdx-guest, TDX_CMD_GET_REPORT0): Linux 6.2.
TDX_GUEST_DEVICE_MIN: Final = (6, 2)
#: /dev/sev-guest (drivers/virt/coco/sev-guest, SNP_GET_REPORT): Linux 5.19.
SNP_GUEST_DEVICE_MIN: Final = (5, 19)
#: configfs-tsm report ABI (/sys/kernel/config/tsm/report): Linux 6.7 (platform-anchors §5.3,
#: Documentation/ABI/testing/configfs-tsm-report).
CONFIGFS_TSM_MIN: Final = (6, 7)

#: Largest pseudo-file read (``/proc/cpuinfo`` of a 512-CPU host is well under 2 MiB).
MAX_PSEUDO_FILE_BYTES: Final = 8 * 1024 * 1024

_MIB: Final = 1024 * 1024
_READ_CHUNK: Final = 64 * 1024
_TSM_REPORT: Final = "/sys/kernel/config/tsm/report"
_AESM_SOCKETS: Final = ("/var/run/aesmd/aesm.socket", "/run/aesmd/aesm.socket")
_TSM_PROVIDER: Final[dict[TeeName, str]] = {"tdx": "tdx_guest", "snp": "sev_guest"}
_GUEST_DEVICE: Final[dict[TeeName, str]] = {"tdx": "/dev/tdx_guest", "snp": "/dev/sev-guest"}
_TEE_FLAGS: Final = frozenset(
    {"sgx", "sgx_lc", "sgx2", "tdx_guest", "tdx_host_platform", "sev", "sev_es", "sev_snp"}
)
_FLAG_LINE: Final = re.compile(r"^flags\s*:(.*)$", re.MULTILINE)
_RELEASE: Final = re.compile(r"^(\d+)\.(\d+)")
_NUMA_NODE: Final = re.compile(r"^node(\d+)$")

# Intel's udev rules for the in-kernel driver (linux-sgx / SGXDataCenterAttestationPrimitives).
_UDEV_ENCLAVE: Final = 'SUBSYSTEM=="misc", KERNEL=="sgx_enclave", MODE="0666"'
_UDEV_PROVISION: Final = 'SUBSYSTEM=="misc", KERNEL=="sgx_provision", GROUP="sgx_prv", MODE="0660"'
_LOAD_SGX_DRIVER: Final = (
    "load the in-kernel SGX driver (Linux >= 5.11 with CONFIG_X86_SGX=y) or install the Intel "
    "SGX DCAP driver"
)


# ---------------------------------------------------------------------------------------------------
# Public types


@dataclass(frozen=True, slots=True)
class KernelVersion:
    """``/proc/sys/kernel/osrelease``, e.g. ``6.8.0-45-generic`` → 6.8."""

    release: str
    major: int
    minor: int

    @classmethod
    def parse(cls, release: str) -> KernelVersion | None:
        m = _RELEASE.match(release.strip())
        if m is None:
            return None
        return cls(release.strip(), int(m.group(1)), int(m.group(2)))

    def at_least(self, minimum: tuple[int, int]) -> bool:
        return (self.major, self.minor) >= minimum

    def __str__(self) -> str:
        return self.release


@dataclass(frozen=True, slots=True)
class Identity:
    """Whose access to device nodes and sockets is judged."""

    uid: int
    gids: frozenset[int]

    @classmethod
    def current(cls) -> Identity:
        return cls(os.geteuid(), frozenset({os.getegid(), *os.getgroups()}))


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing looked at: its ``status``, what was ``seen``, and ``advice`` when it is not ok."""

    check: str
    tee: TeeName | None
    status: Status
    seen: str
    advice: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "tee": self.tee,
            "status": self.status,
            "seen": self.seen,
            "advice": self.advice,
        }


@dataclass(frozen=True, slots=True)
class EpcNode:
    """SGX EPC in one NUMA node (``sgx_total_bytes``)."""

    node: int
    size_bytes: int


@dataclass(frozen=True, slots=True)
class NodeReport:
    """The answer of ``nacre node check``."""

    root: str
    tee: Tee
    usable: bool
    kernel: KernelVersion | None
    flags: frozenset[str]
    epc: tuple[EpcNode, ...] | None
    tsm_providers: tuple[str, ...]
    findings: tuple[Finding, ...]

    @property
    def epc_mib(self) -> int | None:
        """Total EPC in MiB, or ``None`` when the kernel does not say."""
        if self.epc is None:
            return None
        return sum(n.size_bytes for n in self.epc) // _MIB

    @property
    def problems(self) -> tuple[Finding, ...]:
        """Findings that are not ok, missing ones first."""
        return tuple(
            sorted(
                (f for f in self.findings if f.status != "ok"),
                key=lambda f: f.status != "missing",
            )
        )

    def finding(self, check: str) -> Finding:
        """The finding named ``check`` (``KeyError`` if there is none)."""
        for f in self.findings:
            if f.check == check:
                return f
        raise KeyError(check)

    def to_dict(self) -> dict[str, Any]:
        return {
            "tee": self.tee,
            "usable": self.usable,
            "root": self.root,
            "kernel": None if self.kernel is None else self.kernel.release,
            "flags": sorted(self.flags),
            "epc_mib": self.epc_mib,
            "epc": None
            if self.epc is None
            else [{"node": n.node, "bytes": n.size_bytes} for n in self.epc],
            "tsm_providers": list(self.tsm_providers),
            "findings": [f.to_dict() for f in self.findings],
        }


# ---------------------------------------------------------------------------------------------------
# Reading the tree


@dataclass(frozen=True, slots=True)
class _Entry:
    """A device node, socket or directory as stat(2) saw it."""

    path: str
    kind: Literal["char", "socket", "regular", "dir", "other"]
    mode: int
    uid: int
    gid: int
    owner: str
    group: str
    filemode: str

    def describe(self) -> str:
        return f"{self.path} {self.filemode} {self.owner}:{self.group}"


def _kind(st_mode: int) -> Literal["char", "socket", "regular", "dir", "other"]:
    if stat.S_ISCHR(st_mode):
        return "char"
    if stat.S_ISSOCK(st_mode):
        return "socket"
    if stat.S_ISREG(st_mode):
        return "regular"
    if stat.S_ISDIR(st_mode):
        return "dir"
    return "other"


def _id_names(text: str | None) -> dict[int, str]:
    names: dict[int, str] = {}
    for line in (text or "").splitlines():
        parts = line.split(":")
        if len(parts) >= 3 and parts[2].isdigit():
            names.setdefault(int(parts[2]), parts[0])
    return names


class _Tree:
    """Reads under ``root``; every path argument is the machine's absolute path."""

    __slots__ = ("_groups", "_users", "allow_regular_files", "identity", "root")

    def __init__(self, root: Path, *, identity: Identity, allow_regular_files: bool) -> None:
        self.root = root
        self.identity = identity
        self.allow_regular_files = allow_regular_files
        self._users = _id_names(self.read_text("/etc/passwd"))
        self._groups = _id_names(self.read_text("/etc/group"))

    def path(self, machine_path: str) -> Path:
        return self.root / machine_path.lstrip("/")

    def read_text(self, machine_path: str) -> str | None:
        # Read in small chunks: procfs sysctl files fail with ENOMEM on a huge read(2) count.
        chunks: list[bytes] = []
        size = 0
        try:
            with self.path(machine_path).open("rb", buffering=0) as fh:
                while size <= MAX_PSEUDO_FILE_BYTES and (chunk := fh.read(_READ_CHUNK)):
                    chunks.append(chunk)
                    size += len(chunk)
        except OSError:
            return None
        data = b"".join(chunks)
        if size > MAX_PSEUDO_FILE_BYTES:
            raise LimitExceededError(
                f"{machine_path} is larger than any pseudo-file nacre reads",
                field=machine_path,
                expected=f"<= {MAX_PSEUDO_FILE_BYTES} bytes",
                actual=f"> {MAX_PSEUDO_FILE_BYTES} bytes",
            )
        return data.decode("utf-8", errors="replace")

    def is_dir(self, machine_path: str) -> bool:
        return self.path(machine_path).is_dir()

    def listdir(self, machine_path: str) -> list[str]:
        try:
            return sorted(os.listdir(self.path(machine_path)))
        except OSError:
            return []

    def entry(self, machine_path: str) -> _Entry | None:
        try:
            st = os.stat(self.path(machine_path))
        except OSError:
            return None
        return _Entry(
            path=machine_path,
            kind=_kind(st.st_mode),
            mode=stat.S_IMODE(st.st_mode),
            uid=st.st_uid,
            gid=st.st_gid,
            owner=self._users.get(st.st_uid, str(st.st_uid)),
            group=self._groups.get(st.st_gid, str(st.st_gid)),
            filemode=stat.filemode(st.st_mode),
        )

    def is_kind(self, entry: _Entry, wanted: Literal["char", "socket"]) -> bool:
        return entry.kind == wanted or (self.allow_regular_files and entry.kind == "regular")

    def _bits(self, entry: _Entry) -> int:
        if entry.uid == self.identity.uid:
            return (entry.mode >> 6) & 0o7
        if entry.gid in self.identity.gids:
            return (entry.mode >> 3) & 0o7
        return entry.mode & 0o7

    def can_read_write(self, entry: _Entry) -> bool:
        return self.identity.uid == 0 or self._bits(entry) & 0o6 == 0o6

    def can_write(self, entry: _Entry) -> bool:
        return self.identity.uid == 0 or self._bits(entry) & 0o2 == 0o2

    def can_create_in(self, directory: _Entry) -> bool:
        return self.identity.uid == 0 or self._bits(directory) & 0o3 == 0o3

    def group_grants(self, entry: _Entry, need: int) -> bool:
        return ((entry.mode >> 3) & need) == need


def _cpu_flags(text: str | None) -> frozenset[str]:
    flags: set[str] = set()
    for m in _FLAG_LINE.finditer(text or ""):
        flags.update(m.group(1).split())
    return frozenset(flags)


def _epc(tree: _Tree) -> tuple[EpcNode, ...] | None:
    """EPC per NUMA node, or ``None`` when no node exposes ``x86/sgx_total_bytes``."""
    base = "/sys/devices/system/node"
    nodes: list[EpcNode] = []
    seen_attribute = False
    for name in tree.listdir(base):
        m = _NUMA_NODE.match(name)
        if m is None:
            continue
        text = tree.read_text(f"{base}/{name}/x86/sgx_total_bytes")
        if text is None:
            continue
        seen_attribute = True
        value = text.strip()
        if value.isdigit():
            nodes.append(EpcNode(int(m.group(1)), int(value)))
    if not seen_attribute:
        return None
    return tuple(sorted(nodes, key=lambda n: n.node))


def _tsm_providers(tree: _Tree) -> tuple[str, ...]:
    """Providers named by report entries that already exist (none are created here)."""
    providers: set[str] = set()
    for name in tree.listdir(_TSM_REPORT):
        text = tree.read_text(f"{_TSM_REPORT}/{name}/provider")
        if text is not None and text.strip():
            providers.add(text.strip())
    return tuple(sorted(providers))


# ---------------------------------------------------------------------------------------------------
# Assessing each TEE


@dataclass(frozen=True, slots=True)
class _Facts:
    tree: _Tree
    flags: frozenset[str]
    kernel: KernelVersion | None
    epc: tuple[EpcNode, ...] | None
    tsm_present: bool
    tsm_providers: tuple[str, ...]

    @property
    def guest(self) -> bool:
        return "hypervisor" in self.flags

    def kernel_below(self, minimum: tuple[int, int]) -> bool:
        return self.kernel is not None and not self.kernel.at_least(minimum)


@dataclass(frozen=True, slots=True)
class _Assessment:
    tee: TeeName
    present: bool
    findings: tuple[Finding, ...]

    @property
    def usable(self) -> bool:
        return self.present and all(f.status != "missing" for f in self.findings)


def _flag_list(flags: frozenset[str], names: Iterable[str]) -> str:
    shown = [n for n in names if n in flags]
    return "flags: " + (" ".join(shown) if shown else "none of " + " ".join(names))


def _access_advice(tree: _Tree, entry: _Entry, udev_rule: str) -> str:
    if tree.group_grants(entry, 0o6) and entry.gid not in tree.identity.gids:
        return (
            f"add the user to the {entry.group} group for {entry.path} "
            f"(sudo usermod -aG {entry.group} $USER, then log in again)"
        )
    return (
        f"{entry.path} grants this user no read/write access: install the udev rule "
        f"'{udev_rule}' (e.g. /etc/udev/rules.d/91-sgx.rules; udevadm trigger) "
        "and add the user to the device's group"
    )


def _sgx_device(
    tree: _Tree,
    check: str,
    names: tuple[str, str],
    udev_rule: str,
    facts: _Facts,
) -> tuple[Finding, _Entry | None, bool]:
    """``(finding, entry, accessible)`` for /dev/sgx_<x> with the legacy /dev/sgx/<x> fallback."""
    modern, legacy = names
    entry = tree.entry(modern)
    if entry is not None and not tree.is_kind(entry, "char"):
        return (
            Finding(
                check,
                "sgx",
                "missing",
                f"{entry.describe()} is not a character device",
                f"remove the stray file {modern} and {_LOAD_SGX_DRIVER}",
            ),
            None,
            False,
        )
    is_legacy = False
    if entry is None:
        entry = tree.entry(legacy)
        is_legacy = entry is not None and tree.is_kind(entry, "char")
        if not is_legacy:
            entry = None
    if entry is None:
        advice = _LOAD_SGX_DRIVER
        if facts.kernel_below(SGX_DRIVER_MIN):
            advice = (
                f"kernel {facts.kernel} predates the in-kernel SGX driver: upgrade to "
                "Linux >= 5.11, or install the Intel SGX DCAP driver"
            )
        if tree.entry("/dev/isgx") is not None:
            advice = (
                "only /dev/isgx (the out-of-tree driver for CPUs without flexible launch control) "
                f"is present; DCAP attestation needs FLC: {_LOAD_SGX_DRIVER}"
            )
        return Finding(check, "sgx", "missing", f"no {modern} (nor {legacy})", advice), None, False
    accessible = tree.can_read_write(entry)
    if is_legacy:
        upgrade = (
            "this is the legacy out-of-tree DCAP driver: move to the in-kernel driver "
            "(Linux >= 5.11) and uninstall the DCAP driver"
        )
        if accessible:
            return Finding(check, "sgx", "warn", entry.describe(), upgrade), entry, True
        return (
            Finding(
                check,
                "sgx",
                "missing",
                f"{entry.describe()} (no read/write access for uid {tree.identity.uid})",
                f"{_access_advice(tree, entry, udev_rule)}; {upgrade}",
            ),
            entry,
            False,
        )
    if accessible:
        return Finding(check, "sgx", "ok", entry.describe()), entry, True
    return (
        Finding(
            check,
            "sgx",
            "missing",
            f"{entry.describe()} (no read/write access for uid {tree.identity.uid})",
            _access_advice(tree, entry, udev_rule),
        ),
        entry,
        False,
    )


def _assess_sgx(facts: _Facts) -> _Assessment:
    tree, flags = facts.tree, facts.flags
    findings: list[Finding] = []

    # 1. CPU: SGX enabled, flexible launch control, SGX2.
    if "sgx" in flags:
        findings.append(Finding("sgx.cpu", "sgx", "ok", _flag_list(flags, ("sgx",))))
    else:
        findings.append(
            Finding(
                "sgx.cpu",
                "sgx",
                "missing",
                "no 'sgx' in /proc/cpuinfo flags",
                "enable SGX in BIOS (set it to Enabled, not Software Controlled) and set the "
                "PRMRR size; in a VM, pick an SGX-capable instance type",
            )
        )
    if "sgx_lc" in flags:
        findings.append(Finding("sgx.flc", "sgx", "ok", _flag_list(flags, ("sgx_lc",))))
    else:
        findings.append(
            Finding(
                "sgx.flc",
                "sgx",
                "missing",
                "no 'sgx_lc' (flexible launch control) in /proc/cpuinfo flags",
                "enable SGX Launch Control (unlocked / 'SGX LE Public Key Hash' writable) in BIOS; "
                "the in-kernel driver and DCAP attestation need FLC",
            )
        )
    if "sgx2" in flags:
        findings.append(Finding("sgx.sgx2", "sgx", "ok", "flags: sgx2 (EDMM)"))
    else:
        findings.append(
            Finding(
                "sgx.sgx2",
                "sgx",
                "warn",
                "'sgx2' not listed in /proc/cpuinfo flags (most kernels do not list it)",
                "only enclaves using EDMM (e.g. Gramine sgx.edmm_enable) need SGX2: confirm "
                "with CPUID leaf 0x12 EAX bit 1 (cpuid -1 -l 0x12); EDMM needs Linux >= "
                f"{SGX_EDMM_MIN[0]}.{SGX_EDMM_MIN[1]}",
            )
        )

    # 2. Device nodes: enclave (to run enclaves), provision (for the PCE/QE to get quotes).
    enclave, _, _ = _sgx_device(
        tree, "sgx.enclave_device", ("/dev/sgx_enclave", "/dev/sgx/enclave"), _UDEV_ENCLAVE, facts
    )
    findings.append(enclave)
    aesm = next(
        (
            e
            for e in (tree.entry(p) for p in _AESM_SOCKETS)
            if e is not None and tree.is_kind(e, "socket")
        ),
        None,
    )
    provision, provision_entry, provision_ok = _sgx_device(
        tree,
        "sgx.provision_device",
        ("/dev/sgx_provision", "/dev/sgx/provision"),
        _UDEV_PROVISION,
        facts,
    )
    aesm_ok = aesm is not None and tree.can_write(aesm)
    if provision_entry is not None and not provision_ok and aesm_ok:
        # aesmd (in group sgx_prv) quotes for this user: direct access is only for in-process QE.
        provision = Finding(
            provision.check,
            "sgx",
            "warn",
            provision.seen,
            f"aesmd quotes for this user, so this is needed only for in-process quoting: "
            f"{provision.advice}",
        )
    findings.append(provision)

    # 3. EPC.
    if facts.epc is None:
        if facts.kernel_below(SGX_EPC_SYSFS_MIN):
            why = f"kernel {facts.kernel} predates sgx_total_bytes (Linux >= 5.17)"
        else:
            why = "no NUMA node exposes x86/sgx_total_bytes (is the SGX driver loaded?)"
        findings.append(
            Finding(
                "sgx.epc",
                "sgx",
                "warn",
                f"EPC size unknown: {why}",
                "read the EPC sections from the kernel log (dmesg | grep 'sgx: EPC section') "
                "or CPUID leaf 0x12 sub-leaves 2+",
            )
        )
    else:
        total = sum(n.size_bytes for n in facts.epc)
        per_node = ", ".join(f"node{n.node} {n.size_bytes // _MIB} MiB" for n in facts.epc)
        if total == 0:
            findings.append(
                Finding(
                    "sgx.epc",
                    "sgx",
                    "missing",
                    f"EPC 0 bytes ({per_node or 'no readable node'})",
                    "enable SGX and set PRMRR size in BIOS (e.g. 'PRMRR size' / "
                    "'SGX Reserved Memory Size' >= 128 MiB)",
                )
            )
        else:
            findings.append(
                Finding(
                    "sgx.epc",
                    "sgx",
                    "ok",
                    f"EPC {total // _MIB} MiB in {len(facts.epc)} NUMA node(s): {per_node}",
                )
            )

    # 4. Quote path: the AESM socket (Gramine, the nacre quote service) or in-process QE.
    start_aesm = (
        "start aesmd (systemctl start aesmd, package sgx-aesm-service with "
        "libsgx-dcap-ql and the ECDSA quote plugin) / mount /var/run/aesmd into the pod from "
        "the AESM DaemonSet"
    )
    if aesm is not None:
        if tree.can_write(aesm):
            findings.append(Finding("sgx.aesm", "sgx", "ok", aesm.describe()))
        else:
            findings.append(
                Finding(
                    "sgx.aesm",
                    "sgx",
                    "missing" if not provision_ok else "warn",
                    f"{aesm.describe()} (not writable for uid {tree.identity.uid})",
                    "let the user connect to the AESM socket (aesmd makes it mode 0777)",
                )
            )
    else:
        absent = f"no AESM socket at {' or '.join(_AESM_SOCKETS)}"
        if provision_ok:
            findings.append(
                Finding(
                    "sgx.aesm",
                    "sgx",
                    "warn",
                    absent,
                    "in-process DCAP quoting can use /dev/sgx_provision, but Gramine and nacre's "
                    f"quote service talk to AESM: {start_aesm}",
                )
            )
        else:
            findings.append(Finding("sgx.aesm", "sgx", "missing", absent, start_aesm))

    present = "sgx" in flags or any(
        tree.entry(p) is not None for p in ("/dev/sgx_enclave", "/dev/sgx/enclave", "/dev/isgx")
    )
    return _Assessment("sgx", present, tuple(findings))


def _tsm_finding(facts: _Facts, tee: TeeName, device_present: bool) -> Finding:
    provider = _TSM_PROVIDER[tee]
    tree = facts.tree
    module = provider  # the tdx_guest / sev_guest modules register the provider of that name
    if not facts.tsm_present:
        if facts.kernel_below(CONFIGFS_TSM_MIN):
            return Finding(
                "tsm.report",
                tee,
                "missing",
                f"no {_TSM_REPORT}; kernel {facts.kernel} predates configfs-tsm",
                "upgrade the guest kernel to Linux >= 6.7 (CONFIG_TSM_REPORTS) for configfs-tsm "
                "attestation reports",
            )
        if not tree.listdir("/sys/kernel/config"):
            advice = (
                "mount configfs (mount -t configfs none /sys/kernel/config) and load the "
                f"tsm and {module} modules"
            )
        else:
            advice = (
                f"configfs is mounted but has no tsm/report: load the tsm and {module} modules "
                "(kernel >= 6.7 with CONFIG_TSM_REPORTS)"
            )
        return Finding("tsm.report", tee, "missing", f"no {_TSM_REPORT}", advice)
    report_dir = tree.entry(_TSM_REPORT)
    if facts.tsm_providers:
        seen = f"{_TSM_REPORT}, provider {', '.join(facts.tsm_providers)}"
        if provider not in facts.tsm_providers:
            return Finding(
                "tsm.report",
                tee,
                "missing",
                seen,
                f"the report provider is not {provider}: load the {module} module "
                f"(modprobe {module})",
            )
    elif device_present:
        seen = (
            f"{_TSM_REPORT} (no entries to read the provider from; "
            f"{_GUEST_DEVICE[tee]} shows {module} is loaded)"
        )
    else:
        return Finding(
            "tsm.report",
            tee,
            "warn",
            f"{_TSM_REPORT} (no entries, and no {_GUEST_DEVICE[tee]}): provider unknown",
            f"load the {module} module (modprobe {module}) so it registers as the report provider",
        )
    if report_dir is not None and not tree.can_create_in(report_dir):
        return Finding(
            "tsm.report",
            tee,
            "warn",
            f"{seen}; {report_dir.filemode} {report_dir.owner}:{report_dir.group}",
            "creating report entries (mkdir) needs write access to "
            f"{_TSM_REPORT}: run the attester as root",
        )
    return Finding("tsm.report", tee, "ok", seen)


def _guest_device_finding(facts: _Facts, tee: TeeName, tsm_ok: bool) -> tuple[Finding, bool]:
    tree = facts.tree
    path = _GUEST_DEVICE[tee]
    module = _TSM_PROVIDER[tee]
    check = f"{tee}.device"
    minimum = TDX_GUEST_DEVICE_MIN if tee == "tdx" else SNP_GUEST_DEVICE_MIN
    entry = tree.entry(path)
    if entry is None or not tree.is_kind(entry, "char"):
        seen = f"no {path}" if entry is None else f"{entry.describe()} is not a character device"
        if facts.kernel_below(minimum):
            advice = (
                f"kernel {facts.kernel} predates {path} (Linux >= {minimum[0]}.{minimum[1]}): "
                "upgrade the guest kernel"
            )
        else:
            advice = f"load the {module} module (modprobe {module})"
        status: Status = "warn" if tsm_ok else "missing"
        if tsm_ok:
            advice = f"configfs-tsm works without it; for the ioctl interface, {advice}"
        return Finding(check, tee, status, seen, advice), False
    if tree.can_read_write(entry):
        return Finding(check, tee, "ok", entry.describe()), True
    return (
        Finding(
            check,
            tee,
            "warn",
            f"{entry.describe()} (no read/write access for uid {tree.identity.uid})",
            f"the ioctl interface needs root or access to {path}; configfs-tsm reports "
            "are created as root as well",
        ),
        True,
    )


def _assess_guest(facts: _Facts, tee: TeeName) -> _Assessment:
    flags = facts.flags
    device = facts.tree.entry(_GUEST_DEVICE[tee])
    provider_seen = _TSM_PROVIDER[tee] in facts.tsm_providers
    findings: list[Finding] = []

    if tee == "tdx":
        if "tdx_guest" in flags:
            cpu = Finding("tdx.cpu", "tdx", "ok", _flag_list(flags, ("tdx_guest",)))
        elif device is not None or provider_seen:
            cpu = Finding(
                "tdx.cpu",
                "tdx",
                "warn",
                "no 'tdx_guest' in /proc/cpuinfo flags, but TDX guest interfaces exist",
                "a guest kernel >= 5.19 lists tdx_guest; check that this really is a TD",
            )
        elif "tdx_host_platform" in flags:
            cpu = Finding(
                "tdx.cpu",
                "tdx",
                "missing",
                "flags: tdx_host_platform (a TDX host, not a trust domain)",
                "workloads attest from inside TDs: run them in TDX guests (e.g. Kata with TDX) "
                "and run `nacre node check` there",
            )
        else:
            cpu = Finding(
                "tdx.cpu",
                "tdx",
                "missing",
                "no 'tdx_guest' in /proc/cpuinfo flags",
                "run inside an Intel TDX trust domain (a TDX confidential VM, or a Kata TDX pod)"
                " with a guest kernel >= 5.19",
            )
        present = "tdx_guest" in flags or device is not None or provider_seen
    else:
        snp_flags = _flag_list(flags, ("sev", "sev_es", "sev_snp"))
        if "sev_snp" in flags and facts.guest:
            cpu = Finding("snp.cpu", "snp", "ok", f"{snp_flags} hypervisor (SEV-SNP guest)")
        elif device is not None or provider_seen:
            cpu = Finding(
                "snp.cpu",
                "snp",
                "warn",
                f"{snp_flags}; SEV-SNP guest interfaces exist",
                "the guest kernel does not list sev_snp: check the guest's memory encryption "
                "(dmesg | grep 'Memory Encryption Features active')",
            )
        elif "sev_snp" in flags:
            cpu = Finding(
                "snp.cpu",
                "snp",
                "missing",
                f"{snp_flags} without 'hypervisor' (an SEV-SNP host, not a guest)",
                "workloads attest from inside SEV-SNP guests: run them in SNP VMs (e.g. Kata "
                "with SNP) and run `nacre node check` there",
            )
        else:
            cpu = Finding(
                "snp.cpu",
                "snp",
                "missing",
                f"no 'sev_snp' guest in /proc/cpuinfo ({snp_flags})",
                "run inside an AMD SEV-SNP confidential VM (or a Kata SNP pod) with a guest "
                "kernel >= 5.19",
            )
        present = ("sev_snp" in flags and facts.guest) or device is not None or provider_seen
    findings.append(cpu)
    if not present:
        return _Assessment(tee, False, tuple(findings))

    tsm = _tsm_finding(facts, tee, device_present=device is not None)
    # Without the device node, only a report entry naming the provider shows the module is loaded.
    dev, _ = _guest_device_finding(facts, tee, tsm_ok=provider_seen and tsm.status != "missing")
    findings.extend((dev, tsm))
    return _Assessment(tee, True, tuple(findings))


def _kernel_finding(facts: _Facts, tee: Tee) -> Finding:
    if facts.kernel is None:
        return Finding(
            "kernel",
            None,
            "warn",
            "cannot read /proc/sys/kernel/osrelease",
            "run on Linux with /proc mounted (or pass --root a tree that has it)",
        )
    minimum: tuple[int, int] | None = None
    reason = ""
    if tee == "sgx":
        minimum, reason = SGX_DRIVER_MIN, "the in-kernel SGX driver"
    elif tee in ("tdx", "snp"):
        minimum, reason = CONFIGFS_TSM_MIN, "configfs-tsm attestation reports"
    if minimum is not None and not facts.kernel.at_least(minimum):
        return Finding(
            "kernel",
            None,
            "warn",
            f"Linux {facts.kernel}",
            f"upgrade to Linux >= {minimum[0]}.{minimum[1]} for {reason}",
        )
    return Finding("kernel", None, "ok", f"Linux {facts.kernel}")


# ---------------------------------------------------------------------------------------------------
# Entry point


def discover(
    root: str | os.PathLike[str] = "/",
    *,
    identity: Identity | None = None,
    allow_regular_files: bool | None = None,
) -> NodeReport:
    """Look at the machine under ``root`` and say which TEE it offers and what is missing.

    ``tee`` is the first usable TEE (SGX, then TDX, then SNP), else the first one with any sign of
    being present (so its findings say what is missing), else ``"none"``. ``usable`` is true when
    that TEE has no finding with status ``missing``.

    Raises :class:`~nacre.errors.UsageError` when ``root`` is not a directory.
    """
    root_path = Path(root)
    if not root_path.is_dir():
        raise UsageError(
            f"{root_path} is not a directory",
            field="--root",
            expected="a directory holding the machine's /proc, /sys and /dev (default /)",
            actual=str(root_path),
        )
    if allow_regular_files is None:
        allow_regular_files = root_path.resolve() != Path("/")
    tree = _Tree(
        root_path,
        identity=identity if identity is not None else Identity.current(),
        allow_regular_files=allow_regular_files,
    )
    flags = _cpu_flags(tree.read_text("/proc/cpuinfo"))
    release = tree.read_text("/proc/sys/kernel/osrelease")
    facts = _Facts(
        tree=tree,
        flags=flags,
        kernel=None if release is None else KernelVersion.parse(release),
        epc=_epc(tree),
        tsm_present=tree.is_dir(_TSM_REPORT),
        tsm_providers=_tsm_providers(tree),
    )
    assessments = (_assess_sgx(facts), _assess_guest(facts, "tdx"), _assess_guest(facts, "snp"))
    chosen = next((a for a in assessments if a.usable), None) or next(
        (a for a in assessments if a.present), None
    )
    if chosen is None:
        tee: Tee = "none"
        usable = False
        findings = tuple(a.findings[0] for a in assessments)
    else:
        tee, usable, findings = chosen.tee, chosen.usable, chosen.findings
    return NodeReport(
        root=str(root_path),
        tee=tee,
        usable=usable,
        kernel=facts.kernel,
        flags=flags & (_TEE_FLAGS | {"hypervisor"}),
        epc=facts.epc,
        tsm_providers=facts.tsm_providers,
        findings=(_kernel_finding(facts, tee), *findings),
    )
