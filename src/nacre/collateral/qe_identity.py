"""Intel QE identity (``enclaveIdentity``, version 2): the expected quoting enclave, QE or TD_QE."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from nacre.collateral.signed_json import SignedJson, parse_signed_json
from nacre.collateral.tcb_info import _bad, _Fields, isvsvn_level_fast

__all__ = ["EnclaveIdentity", "QeTcbLevel", "parse_qe_identity"]


class QeTcbLevel(NamedTuple):  # a NamedTuple, as TcbLevel (built once per level, cheaply)
    isvsvn: int
    status: str
    date: str
    advisory_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class EnclaveIdentity:
    id: str  # "QE" (SGX), "TD_QE" (TDX), "QVE"
    version: int
    issue_date: datetime
    next_update: datetime
    tcb_evaluation_data_number: int
    miscselect: int
    miscselect_mask: int
    attributes: bytes
    attributes_mask: bytes
    mrsigner: bytes
    isvprodid: int
    levels: tuple[QeTcbLevel, ...]
    signed: SignedJson


def parse_qe_identity(body: bytes) -> EnclaveIdentity:
    signed = parse_signed_json(body, "enclaveIdentity", what="QE identity")
    f = _Fields(signed.value, "enclaveIdentity")
    version = f.integer("version")
    if version != 2:
        raise _bad("enclaveIdentity.version", "2", str(version))
    qe_id = f.text("id")
    if qe_id not in ("QE", "TD_QE", "QVE"):
        raise _bad("enclaveIdentity.id", "QE, TD_QE or QVE", repr(qe_id))
    raw_levels = f.array("tcbLevels")
    fast = [_level_fast(lv) for lv in raw_levels]
    levels = [lv for lv in fast if lv is not None]
    if len(levels) != len(fast):
        levels = [_level(lv, i) for i, lv in enumerate(raw_levels)]
    if not levels:
        raise _bad("enclaveIdentity.tcbLevels", "at least one level", "none")
    return EnclaveIdentity(
        id=qe_id,
        version=version,
        issue_date=f.time("issueDate"),
        next_update=f.time("nextUpdate"),
        tcb_evaluation_data_number=f.integer("tcbEvaluationDataNumber"),
        miscselect=int.from_bytes(f.hex("miscselect", 4), "big"),
        miscselect_mask=int.from_bytes(f.hex("miscselectMask", 4), "big"),
        attributes=f.hex("attributes", 16),
        attributes_mask=f.hex("attributesMask", 16),
        mrsigner=f.hex("mrsigner", 32),
        isvprodid=f.integer("isvprodid", 0, 0xFFFF),
        levels=tuple(levels),
        signed=signed,
    )


def _level_fast(raw: Any) -> QeTcbLevel | None:
    """A well-formed level read with plain lookups, or None: :func:`_level` then names the error."""
    fields = isvsvn_level_fast(raw, 0xFFFF)
    return None if fields is None else QeTcbLevel(*fields)


def _level(raw: Any, i: int) -> QeTcbLevel:
    lf = _Fields(raw, f"enclaveIdentity.tcbLevels[{i}]")
    tcb = _Fields(lf.raw("tcb"), f"{lf.path}.tcb")
    return QeTcbLevel(
        tcb.integer("isvsvn", 0, 0xFFFF), lf.status(), lf.text("tcbDate"), lf.advisories()
    )
