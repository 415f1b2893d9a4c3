"""Intel TCB info, versions 2 (SGX, PCS API v3) and 3 (SGX and TDX, PCS API v4), parsed strictly."""

from __future__ import annotations

import operator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, NamedTuple

from nacre.collateral.signed_json import SignedJson, parse_signed_json
from nacre.errors import CollateralError

__all__ = [
    "TCB_STATUSES",
    "TcbInfo",
    "TcbLevel",
    "TdxModule",
    "TdxModuleIdentity",
    "TdxModuleLevel",
    "isvsvn_level_fast",
    "level_status_fast",
    "may_hold_bools",
    "parse_iso_time",
    "parse_tcb_info",
]

TCB_STATUSES: Final = (
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
    "Revoked",
)


# Levels are NamedTuples: immutable like the frozen dataclasses around them and several times
# cheaper to build; a cold verification builds one per level of the TCB info and QE identity.
class TcbLevel(NamedTuple):
    sgx_components: tuple[int, ...]
    pce_svn: int
    tdx_components: tuple[int, ...] | None
    status: str
    date: str
    advisory_ids: tuple[str, ...]


class TdxModuleLevel(NamedTuple):
    isvsvn: int
    status: str
    date: str
    advisory_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TdxModule:
    mrsigner: bytes
    attributes: bytes
    attributes_mask: bytes


@dataclass(frozen=True, slots=True)
class TdxModuleIdentity:
    id: str
    module: TdxModule
    levels: tuple[TdxModuleLevel, ...]


@dataclass(frozen=True, slots=True)
class TcbInfo:
    id: str  # "SGX" or "TDX" (v2 has no id: SGX)
    version: int
    issue_date: datetime
    next_update: datetime
    fmspc: bytes
    pce_id: bytes
    tcb_type: int
    tcb_evaluation_data_number: int
    levels: tuple[TcbLevel, ...]
    tdx_module: TdxModule | None
    tdx_module_identities: tuple[TdxModuleIdentity, ...]
    signed: SignedJson


class _Fields:
    """Typed access to a JSON object, naming the path in every error."""

    def __init__(self, obj: Any, path: str) -> None:
        if not isinstance(obj, dict):
            raise _bad(path, "an object", type(obj).__name__)
        self.obj: dict[str, Any] = obj
        self.path = path

    def raw(self, key: str) -> Any:
        if key not in self.obj:
            raise _bad(f"{self.path}.{key}", "present", "missing")
        return self.obj[key]

    def integer(self, key: str, lo: int = 0, hi: int = 2**32 - 1) -> int:
        v = self.raw(key)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise _bad(f"{self.path}.{key}", f"an integer in {lo}..{hi}", repr(v))
        return v

    def text(self, key: str) -> str:
        v = self.raw(key)
        if not isinstance(v, str):
            raise _bad(f"{self.path}.{key}", "a string", repr(v))
        return v

    def hex(self, key: str, size: int) -> bytes:
        v = self.text(key)
        try:
            out = bytes.fromhex(v)
        except ValueError:
            raise _bad(f"{self.path}.{key}", f"{2 * size} hex digits", repr(v)) from None
        if len(out) != size:
            raise _bad(f"{self.path}.{key}", f"{2 * size} hex digits", repr(v))
        return out

    def time(self, key: str) -> datetime:
        return parse_iso_time(self.text(key), f"{self.path}.{key}")

    def array(self, key: str, *, required: bool = True) -> list[Any]:
        if not required and key not in self.obj:
            return []
        v = self.raw(key)
        if not isinstance(v, list):
            raise _bad(f"{self.path}.{key}", "a list", type(v).__name__)
        return v

    def status(self, key: str = "tcbStatus") -> str:
        v = self.text(key)
        if v not in TCB_STATUSES:
            raise _bad(f"{self.path}.{key}", " | ".join(TCB_STATUSES), repr(v))
        return v

    def advisories(self) -> tuple[str, ...]:
        items = self.array("advisoryIDs", required=False)
        if not all(isinstance(a, str) for a in items):
            raise _bad(f"{self.path}.advisoryIDs", "a list of strings", repr(items))
        return tuple(items)


def _bad(field: str, expected: str, actual: str) -> CollateralError:
    return CollateralError(
        "collateral JSON does not have the form Intel publishes",
        code="COLLATERAL_MALFORMED",
        field=field,
        expected=expected,
        actual=actual[:80],
        hint="fetch it again from Intel PCS or your PCCS",
    )


def parse_iso_time(text: str, field: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise _bad(field, "an ISO-8601 UTC time", repr(text)) from None
    if value.tzinfo is None:
        raise _bad(field, "a time with a zone (Z)", repr(text))
    return value


def _module(f: _Fields) -> TdxModule:
    return TdxModule(f.hex("mrsigner", 48), f.hex("attributes", 8), f.hex("attributesMask", 8))


def _svns(tcb: _Fields, key: str) -> tuple[int, ...]:
    """16 component SVNs from ``[{"svn": n, ...}, ...]``, validated in one pass."""
    comps = tcb.array(key)
    svns = tuple(c.get("svn") if isinstance(c, dict) else None for c in comps)
    if len(svns) != 16 or not all(type(v) is int and 0 <= v <= 255 for v in svns):
        raise _bad(
            f"{tcb.path}.{key}",
            "16 components, each with an integer svn 0..255",
            repr(list(svns))[:80],
        )
    return svns  # type: ignore[return-value]


_STATUS_SET: Final = frozenset(TCB_STATUSES)
_INT_ONLY: Final = {int}
_svn_of = operator.itemgetter("svn")


def may_hold_bools(text: bytes) -> bool:
    """Whether parsed JSON ``text`` can hold a boolean: only the literals ``true`` and ``false``
    produce one, so without either substring no value is a bool (a cheap scan of the bytes)."""
    return b"true" in text or b"false" in text


def _byte_svns(comps: Any, bools: bool) -> tuple[int, ...] | None:
    """16 ``{"svn": 0..255}`` components as a tuple, or None when anything is off.

    ``bytes()`` refuses anything but integers 0..255, except booleans; ``bools`` False (the JSON
    text holds no boolean, see :func:`may_hold_bools`) skips the test for those."""
    if type(comps) is not list or len(comps) != 16:
        return None
    try:
        svns = tuple(map(_svn_of, comps))
        if bools and set(map(type, svns)) != _INT_ONLY:  # int, not bool
            return None
        bytes(svns)  # TypeError unless each is an int (or a bool), ValueError unless 0..255
    except (KeyError, TypeError, IndexError, ValueError):
        return None
    return svns


def _level_fast(raw: Any, is_tdx: bool, bools: bool) -> TcbLevel | None:
    """A v3 level read with plain lookups: the common well-formed case, about 3x faster than the
    field-by-field path. Returns None for anything unusual; :func:`_level` then re-reads it and
    names the exact field that is wrong."""
    if type(raw) is not dict:
        return None
    tcb = raw.get("tcb")
    if type(tcb) is not dict:
        return None
    sgx = _byte_svns(tcb.get("sgxtcbcomponents"), bools)
    tdx = _byte_svns(tcb.get("tdxtcbcomponents"), bools) if is_tdx else None
    pce_svn = tcb.get("pcesvn")
    common = level_status_fast(raw)
    if (
        sgx is None
        or (is_tdx and tdx is None)
        or type(pce_svn) is not int
        or not 0 <= pce_svn <= 0xFFFF
        or common is None
    ):
        return None
    return TcbLevel(sgx, pce_svn, tdx, *common)


def level_status_fast(raw: dict[str, Any]) -> tuple[str, str, tuple[str, ...]] | None:
    """``(tcbStatus, tcbDate, advisoryIDs)`` of a TCB info or QE identity level when all three
    are well-formed (plain lookups), else None (the field readers then name what is wrong)."""
    status, date = raw.get("tcbStatus"), raw.get("tcbDate")
    advisories = raw.get("advisoryIDs", [])
    if (
        type(status) is not str
        or status not in _STATUS_SET
        or type(date) is not str
        or type(advisories) is not list
    ):
        return None
    try:
        "".join(advisories)  # TypeError unless every item is a str (JSON makes no subclasses)
    except TypeError:
        return None
    return status, date, tuple(advisories)


def isvsvn_level_fast(raw: Any, max_svn: int) -> tuple[int, str, str, tuple[str, ...]] | None:
    """``(tcb.isvsvn, tcbStatus, tcbDate, advisoryIDs)`` of a level keyed by one ISVSVN (QE
    identity, TDX module identity) read with plain lookups (no field paths built), or None: the
    field readers then read it and name what is wrong."""
    if type(raw) is not dict:
        return None
    tcb = raw.get("tcb")
    if type(tcb) is not dict:
        return None
    isvsvn = tcb.get("isvsvn")
    common = level_status_fast(raw)
    if type(isvsvn) is not int or not 0 <= isvsvn <= max_svn or common is None:
        return None
    return (isvsvn, *common)


def _module_level_fast(raw: Any) -> TdxModuleLevel | None:
    fields = isvsvn_level_fast(raw, 255)
    return None if fields is None else TdxModuleLevel(*fields)


def _levels(raw: list[Any], version: int, is_tdx: bool, bools: bool) -> tuple[TcbLevel, ...]:
    """Every level: the fast reading when all are well-formed v3, else field by field."""
    if version == 3:
        fast = []
        for lv in raw:
            level = _level_fast(lv, is_tdx, bools)
            if level is None:
                break
            fast.append(level)
        else:
            return tuple(fast)
    return tuple(_level(lv, f"tcbInfo.tcbLevels[{i}]", version, is_tdx) for i, lv in enumerate(raw))


def _level(raw: Any, path: str, version: int, is_tdx: bool) -> TcbLevel:
    f = _Fields(raw, path)
    tcb = _Fields(f.raw("tcb"), f"{path}.tcb")
    tdx = None
    if version == 2:
        sgx = tuple(tcb.integer(f"sgxtcbcomp{i:02d}svn", 0, 255) for i in range(1, 17))
    else:
        sgx = _svns(tcb, "sgxtcbcomponents")
        if is_tdx:
            tdx = _svns(tcb, "tdxtcbcomponents")
    return TcbLevel(
        sgx_components=sgx,
        pce_svn=tcb.integer("pcesvn", 0, 0xFFFF),
        tdx_components=tdx,
        status=f.status(),
        date=f.text("tcbDate"),
        advisory_ids=f.advisories(),
    )


def parse_tcb_info(body: bytes) -> TcbInfo:
    """Parse a PCS ``/tcb`` response body. Signature checking is :mod:`nacre.verify`'s job."""
    signed = parse_signed_json(body, "tcbInfo", what="TCB info")
    f = _Fields(signed.value, "tcbInfo")
    version = f.integer("version")
    if version not in (2, 3):
        raise _bad("tcbInfo.version", "2 or 3", str(version))
    tcb_id = "SGX" if version == 2 else f.text("id")
    if tcb_id not in ("SGX", "TDX"):
        raise _bad("tcbInfo.id", "SGX or TDX", repr(tcb_id))
    is_tdx = tcb_id == "TDX"
    levels = _levels(f.array("tcbLevels"), version, is_tdx, may_hold_bools(signed.signed_bytes))
    if not levels:
        raise _bad("tcbInfo.tcbLevels", "at least one level", "none")
    module = None
    identities: list[TdxModuleIdentity] = []
    if is_tdx:
        module = _module(_Fields(f.raw("tdxModule"), "tcbInfo.tdxModule"))
        for i, raw in enumerate(f.array("tdxModuleIdentities", required=False)):
            mf = _Fields(raw, f"tcbInfo.tdxModuleIdentities[{i}]")
            mlevels = []
            for j, lv in enumerate(mf.array("tcbLevels")):
                if (fast := _module_level_fast(lv)) is not None:
                    mlevels.append(fast)
                    continue
                lf = _Fields(lv, f"{mf.path}.tcbLevels[{j}]")
                tcb = _Fields(lf.raw("tcb"), f"{lf.path}.tcb")
                mlevels.append(
                    TdxModuleLevel(
                        tcb.integer("isvsvn", 0, 255),
                        lf.status(),
                        lf.text("tcbDate"),
                        lf.advisories(),
                    )
                )
            identities.append(TdxModuleIdentity(mf.text("id"), _module(mf), tuple(mlevels)))
    return TcbInfo(
        id=tcb_id,
        version=version,
        issue_date=f.time("issueDate"),
        next_update=f.time("nextUpdate"),
        fmspc=f.hex("fmspc", 6),
        pce_id=f.hex("pceId", 2),
        tcb_type=f.integer("tcbType"),
        tcb_evaluation_data_number=f.integer("tcbEvaluationDataNumber"),
        levels=levels,
        tdx_module=module,
        tdx_module_identities=tuple(identities),
        signed=signed,
    )
