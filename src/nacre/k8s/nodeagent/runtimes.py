"""Which sandboxed container runtimes (containerd shims) are installed on the node.

containerd finds a runtime's shim ``containerd-shim-<name>-v2`` on its PATH; the installers put
them in ``/usr/local/bin`` or ``/usr/bin`` (distribution packages) or ``/opt/kata/bin``
(kata-deploy). Kata Containers ships ``containerd-shim-kata-v2``; RunD (the Alibaba/OpenAnolis
sandboxed runtime) ``containerd-shim-rund-v2``, and the enclave runtime of inclavare-containers
``containerd-shim-rune-v2``, which is counted with it.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = ["SANDBOX_SHIMS", "SHIM_DIRS", "InstalledShim", "sandbox_runtimes"]

#: (label value, shim binary), most preferred first.
SANDBOX_SHIMS: Final = (
    ("kata", "containerd-shim-kata-v2"),
    ("rund", "containerd-shim-rund-v2"),
    ("rund", "containerd-shim-rune-v2"),
)
SHIM_DIRS: Final = ("/usr/local/bin", "/usr/bin", "/opt/kata/bin")
_ANY_EXEC: Final = stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH


@dataclass(frozen=True, slots=True)
class InstalledShim:
    runtime: str  # label value: kata | rund
    path: str  # machine path of the shim


def sandbox_runtimes(root: str | os.PathLike[str] = "/") -> tuple[InstalledShim, ...]:
    """Executable sandbox shims under ``root``, most preferred runtime first."""
    base = Path(root)
    found: list[InstalledShim] = []
    for runtime, binary in SANDBOX_SHIMS:
        for directory in SHIM_DIRS:
            machine_path = f"{directory}/{binary}"
            try:
                st = os.stat(base / machine_path.lstrip("/"))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and st.st_mode & _ANY_EXEC:
                found.append(InstalledShim(runtime, machine_path))
    return tuple(found)
