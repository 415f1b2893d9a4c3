"""Signed collateral of a simulated platform, in Intel PCS API v4 shapes.

* TCB info v3, id ``SGX`` and ``TDX`` (the latter with ``tdxModule``, ``tdxModuleIdentities`` and
  ``tdxtcbcomponents``): ``{"tcbInfo":{...},"signature":"<hex r||s>"}``;
* enclave identity v2, id ``QE`` and ``TD_QE``: ``{"enclaveIdentity":{...},"signature":"..."}``.

Each is signed over the exact bytes of the inner object with the TCB signing key. The TCB levels
are laid out around the platform's own SVNs so that the platform lands on the requested status:
UpToDate (the platform is the top level), or any other Intel status (a higher UpToDate level
exists, the platform's level carries the status and advisory IDs).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

from cryptography.hazmat.primitives.asymmetric import ec

from nacre.collateral.tcb_info import TCB_STATUSES
from nacre.errors import UsageError
from nacre.sim.pki import raw_signature

__all__ = [
    "SIM_QE",
    "SIM_TDX_MODULE_MRSIGNER",
    "SIM_TD_QE",
    "TCB_EVALUATION_DATA_NUMBER",
    "QeSpec",
    "TcbSpec",
    "check_tcb_status",
    "qe_identity",
    "sign_json",
    "tcb_info",
]

SimTee = Literal["sgx", "tdx"]

TCB_EVALUATION_DATA_NUMBER: Final = 17
#: Intel's TDX module is signed by an all-zero MRSIGNER_SEAM; the simulated one is too.
SIM_TDX_MODULE_MRSIGNER: Final = bytes(48)
_DATE_TOP: Final = "2025-05-14T00:00:00Z"
_DATE_PLATFORM: Final = "2024-11-13T00:00:00Z"
_DATE_LOW: Final = "2023-02-15T00:00:00Z"
_LOW_ADVISORIES: Final = ("NACRE-SIM-SA-00001", "NACRE-SIM-SA-00002")


@dataclass(frozen=True, slots=True)
class QeSpec:
    """The simulated quoting enclave (QE for SGX, TD_QE for TDX) and its identity."""

    id: str
    mrsigner: bytes  # 32
    isvprodid: int
    isv_svn: int
    attributes: bytes  # 16 (FLAGS || XFRM), as the QE report carries them
    miscselect: int = 0

    #: Intel's identities compare the FLAGS byte but ignore MODE64BIT and XFRM.
    attributes_mask: bytes = bytes.fromhex("FBFFFFFFFFFFFFFF0000000000000000")


def _qe_signer(name: str) -> bytes:
    return hashlib.sha256(f"nacre simulation {name} signer".encode()).digest()


#: The simulated SGX QE: INIT | PROVISIONKEY flags (0x11) like Intel's, MODE64BIT, XFRM x87|SSE.
SIM_QE: Final = QeSpec(
    id="QE",
    mrsigner=_qe_signer("QE"),
    isvprodid=1,
    isv_svn=8,
    attributes=bytes.fromhex("15000000000000000300000000000000"),
)
SIM_TD_QE: Final = QeSpec(
    id="TD_QE",
    mrsigner=_qe_signer("TD_QE"),
    isvprodid=2,
    isv_svn=4,
    attributes=bytes.fromhex("15000000000000000300000000000000"),
)


@dataclass(frozen=True, slots=True)
class TcbSpec:
    """The platform's TCB and the status its collateral gives it."""

    sgx_components: tuple[int, ...]  # 16, = CPUSVN
    pce_svn: int
    tdx_components: tuple[int, ...]  # 16, = TEE_TCB_SVN ([0] module SVN, [1] module version)
    status: str = "UpToDate"
    advisory_ids: tuple[str, ...] = ()


def check_tcb_status(status: str) -> str:
    if status not in TCB_STATUSES:
        raise UsageError(
            f"unknown TCB status {status!r}",
            field="--tcb-status",
            expected=" | ".join(TCB_STATUSES),
            actual=status,
        )
    return status


def _time(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def sign_json(name: str, obj: dict[str, Any], key: ec.EllipticCurvePrivateKey) -> bytes:
    """``{"<name>":<obj>,"signature":"<hex r||s>"}``, signed over the exact bytes of ``obj``."""
    body = json.dumps(obj, separators=(",", ":")).encode()
    sig = raw_signature(key, body)
    return b'{"' + name.encode() + b'":' + body + b',"signature":"' + sig.hex().encode() + b'"}'


def _svn_list(svns: tuple[int, ...]) -> list[dict[str, int]]:
    return [{"svn": s} for s in svns]


def _level(
    sgx: tuple[int, ...],
    pce_svn: int,
    tdx: tuple[int, ...] | None,
    status: str,
    date: str,
    advisories: tuple[str, ...],
) -> dict[str, Any]:
    tcb: dict[str, Any] = {"sgxtcbcomponents": _svn_list(sgx), "pcesvn": pce_svn}
    if tdx is not None:
        tcb["tdxtcbcomponents"] = _svn_list(tdx)
    level: dict[str, Any] = {"tcb": tcb, "tcbDate": date, "tcbStatus": status}
    if advisories:
        level["advisoryIDs"] = list(advisories)
    return level


def _lower(svns: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(max(s - 1, 0) for s in svns)


def _levels(spec: TcbSpec, tdx: bool) -> list[dict[str, Any]]:
    """Highest first, as Intel lists them; the platform matches the first it is at or above."""
    tdx_now = spec.tdx_components if tdx else None
    tdx_low = _lower(spec.tdx_components) if tdx else None
    advisories = spec.advisory_ids
    if spec.status != "UpToDate" and not advisories:
        advisories = ("NACRE-SIM-SA-00003",)
    low = _level(
        _lower(spec.sgx_components),
        max(spec.pce_svn - 1, 0),
        tdx_low,
        "OutOfDate",
        _DATE_LOW,
        _LOW_ADVISORIES,
    )
    if spec.status == "UpToDate":
        return [
            _level(spec.sgx_components, spec.pce_svn, tdx_now, "UpToDate", _DATE_TOP, advisories),
            low,
        ]
    # A level above the platform (first component and PCESVN one higher), then the platform's.
    higher = (min(spec.sgx_components[0] + 1, 255), *spec.sgx_components[1:])
    return [
        _level(higher, spec.pce_svn + 1, tdx_now, "UpToDate", _DATE_TOP, ()),
        _level(spec.sgx_components, spec.pce_svn, tdx_now, spec.status, _DATE_PLATFORM, advisories),
        low,
    ]


def tcb_info(
    tee: SimTee,
    spec: TcbSpec,
    *,
    fmspc: bytes,
    pce_id: bytes,
    issue_date: datetime,
    next_update: datetime,
) -> dict[str, Any]:
    """The ``tcbInfo`` object (v3) for ``tee``, before signing."""
    is_tdx = tee == "tdx"
    info: dict[str, Any] = {
        "id": "TDX" if is_tdx else "SGX",
        "version": 3,
        "issueDate": _time(issue_date),
        "nextUpdate": _time(next_update),
        "fmspc": fmspc.hex().upper(),
        "pceId": pce_id.hex().upper(),
        "tcbType": 0,
        "tcbEvaluationDataNumber": TCB_EVALUATION_DATA_NUMBER,
    }
    if is_tdx:
        module = {
            "mrsigner": SIM_TDX_MODULE_MRSIGNER.hex().upper(),
            "attributes": "0000000000000000",
            "attributesMask": "FFFFFFFFFFFFFFFF",
        }
        module_svn, module_version = spec.tdx_components[0], spec.tdx_components[1]
        module_levels: list[dict[str, Any]] = [
            {"tcb": {"isvsvn": module_svn}, "tcbDate": _DATE_TOP, "tcbStatus": "UpToDate"}
        ]
        if module_svn > 0:
            module_levels.append(
                {
                    "tcb": {"isvsvn": module_svn - 1},
                    "tcbDate": _DATE_LOW,
                    "tcbStatus": "OutOfDate",
                    "advisoryIDs": list(_LOW_ADVISORIES),
                }
            )
        info["tdxModule"] = module
        info["tdxModuleIdentities"] = [
            {"id": f"TDX_{module_version:02X}", **module, "tcbLevels": module_levels}
        ]
    info["tcbLevels"] = _levels(spec, is_tdx)
    return info


def qe_identity(qe: QeSpec, *, issue_date: datetime, next_update: datetime) -> dict[str, Any]:
    """The ``enclaveIdentity`` object (v2) for the simulated QE / TD_QE, before signing."""
    levels: list[dict[str, Any]] = [
        {"tcb": {"isvsvn": qe.isv_svn}, "tcbDate": _DATE_TOP, "tcbStatus": "UpToDate"}
    ]
    if qe.isv_svn > 0:
        levels.append(
            {
                "tcb": {"isvsvn": qe.isv_svn - 1},
                "tcbDate": _DATE_LOW,
                "tcbStatus": "OutOfDate",
                "advisoryIDs": list(_LOW_ADVISORIES[:1]),
            }
        )
    return {
        "id": qe.id,
        "version": 2,
        "issueDate": _time(issue_date),
        "nextUpdate": _time(next_update),
        "tcbEvaluationDataNumber": TCB_EVALUATION_DATA_NUMBER,
        "miscselect": qe.miscselect.to_bytes(4, "big").hex().upper(),
        "miscselectMask": "FFFFFFFF",
        "attributes": bytes(a & m for a, m in zip(qe.attributes, qe.attributes_mask, strict=True))
        .hex()
        .upper(),
        "attributesMask": qe.attributes_mask.hex().upper(),
        "mrsigner": qe.mrsigner.hex().upper(),
        "isvprodid": qe.isvprodid,
        "tcbLevels": levels,
    }
