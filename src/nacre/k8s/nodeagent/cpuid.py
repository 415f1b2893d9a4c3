"""SGX Key Separation and Sharing (KSS) support, read from CPUID through Linux's cpuid driver.

``/proc/cpuinfo`` has no KSS flag. The Intel SDM (Vol. 2A, CPUID leaf 12H) enumerates, in
``CPUID.(EAX=12H, ECX=1)``, the bits of ``SECS.ATTRIBUTES`` that software may set with ECREATE
(EAX holds bits 31:0); ``ATTRIBUTES.KSS`` is bit 7 (SDM Vol. 3D, "Layout of ATTRIBUTES Structure";
Linux: ``SGX_ATTR_KSS BIT_ULL(7)``, and KVM masks the same bit of leaf 12H.1 EAX for guests). Leaf
12H is valid only when ``CPUID.(EAX=07H, ECX=0):EBX.SGX[bit 2]`` is set and the maximum basic leaf
(``CPUID.0:EAX``) is at least 12H, so both are checked first.

The cpuid driver (``arch/x86/kernel/cpuid.c``, ``/dev/cpu/N/cpuid``) answers a 16-byte read at file
offset ``leaf | (subleaf << 32)`` with EAX, EBX, ECX, EDX as little-endian 32-bit words. The device
exists only with the ``cpuid`` module loaded and is root-only by default; when it cannot be read,
KSS is unknown and :func:`sgx_kss` says why.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = ["CPUID_DEVICE", "CpuidRegisters", "KssProbe", "read_cpuid", "sgx_kss"]

#: The cpuid device of CPU 0 (SGX capabilities are the same on every core).
CPUID_DEVICE: Final = "/dev/cpu/0/cpuid"
_REGISTERS: Final = struct.Struct("<4I")
_LEAF_BASIC: Final = 0x0
_LEAF_EXTENDED_FEATURES: Final = 0x7
_SGX_FEATURE_EBX_BIT: Final = 2
_LEAF_SGX: Final = 0x12
_SUBLEAF_SGX_ATTRIBUTES: Final = 1
_ATTRIBUTE_KSS_BIT: Final = 7


@dataclass(frozen=True, slots=True)
class CpuidRegisters:
    eax: int
    ebx: int
    ecx: int
    edx: int


@dataclass(frozen=True, slots=True)
class KssProbe:
    """``supported`` is None when unknown; ``reason`` says what was read or why nothing was."""

    supported: bool | None
    reason: str


def read_cpuid(fd: int, leaf: int, subleaf: int = 0) -> CpuidRegisters:
    """CPUID(``leaf``, ``subleaf``) through an open cpuid device (raises OSError, ValueError)."""
    data = os.pread(fd, _REGISTERS.size, leaf | (subleaf << 32))
    if len(data) != _REGISTERS.size:
        raise ValueError(f"short read of CPUID leaf {leaf:#x}.{subleaf}: {len(data)} bytes")
    return CpuidRegisters(*_REGISTERS.unpack(data))


def _probe(fd: int) -> KssProbe:
    max_leaf = read_cpuid(fd, _LEAF_BASIC).eax
    if max_leaf < _LEAF_SGX:
        return KssProbe(None, f"CPUID max basic leaf {max_leaf:#x} < 0x12: no SGX leaf")
    if not read_cpuid(fd, _LEAF_EXTENDED_FEATURES).ebx >> _SGX_FEATURE_EBX_BIT & 1:
        return KssProbe(None, "CPUID.(EAX=7,ECX=0):EBX.SGX[2] is 0: leaf 0x12 is not valid")
    eax = read_cpuid(fd, _LEAF_SGX, _SUBLEAF_SGX_ATTRIBUTES).eax
    supported = bool(eax >> _ATTRIBUTE_KSS_BIT & 1)
    return KssProbe(
        supported, f"CPUID.(EAX=0x12,ECX=1):EAX={eax:#010x}, KSS bit 7 = {int(supported)}"
    )


def sgx_kss(root: str | os.PathLike[str] = "/") -> KssProbe:
    """Whether the CPU under ``root`` lets enclaves set ``ATTRIBUTES.KSS``."""
    path = Path(root) / CPUID_DEVICE.lstrip("/")
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return KssProbe(None, f"{CPUID_DEVICE} is absent (load the cpuid module: modprobe cpuid)")
    except OSError as exc:
        return KssProbe(
            None,
            f"{CPUID_DEVICE} is not readable ({exc.strerror}); it is root-only by default",
        )
    try:
        return _probe(fd)
    except (OSError, ValueError) as exc:
        return KssProbe(None, f"cannot read CPUID through {CPUID_DEVICE}: {exc}")
    finally:
        os.close(fd)
