"""TDX TD report bodies in DCAP quotes: TDREPORT 1.0 (584 bytes) and 1.5 (648 bytes)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from nacre.evidence._reader import Layout, Reader

__all__ = [
    "TD_ATTR_DEBUG",
    "TD_ATTR_SEPT_VE_DISABLE",
    "TD_REPORT10_SIZE",
    "TD_REPORT15_SIZE",
    "TdReport10",
    "TdReport15",
    "parse_td_report",
]

TD_REPORT10_SIZE: Final = 584
TD_REPORT15_SIZE: Final = 648

#: TDATTRIBUTES bit 0 (TUD.DEBUG): the TD is debuggable by the host.
TD_ATTR_DEBUG: Final = 1 << 0
#: TDATTRIBUTES bit 28 (SEC.SEPT_VE_DISABLE): EPT violations are not converted to #VE.
TD_ATTR_SEPT_VE_DISABLE: Final = 1 << 28
#: Bits a TD may set: DEBUG(0), SEPT_VE_DISABLE(28), PKS(30), KL(31), PERFMON(63).
TD_ATTR_KNOWN: Final = TD_ATTR_DEBUG | TD_ATTR_SEPT_VE_DISABLE | (1 << 30) | (1 << 31) | (1 << 63)


@dataclass(frozen=True, slots=True)
class TdReport10:
    tee_tcb_svn: bytes  # 0x000, 16
    mr_seam: bytes  # 0x010, 48
    mr_signer_seam: bytes  # 0x040, 48
    seam_attributes: bytes  # 0x070, 8
    td_attributes: bytes  # 0x078, 8
    xfam: bytes  # 0x080, 8
    mr_td: bytes  # 0x088, 48
    mr_config_id: bytes  # 0x0B8, 48
    mr_owner: bytes  # 0x0E8, 48
    mr_owner_config: bytes  # 0x118, 48
    rtmr0: bytes  # 0x148, 48
    rtmr1: bytes  # 0x178, 48
    rtmr2: bytes  # 0x1A8, 48
    rtmr3: bytes  # 0x1D8, 48
    report_data: bytes  # 0x208, 64

    @property
    def td_attributes_int(self) -> int:
        return int.from_bytes(self.td_attributes, "little")

    @property
    def debug(self) -> bool:
        return bool(self.td_attributes_int & TD_ATTR_DEBUG)

    @property
    def sept_ve_disable(self) -> bool:
        return bool(self.td_attributes_int & TD_ATTR_SEPT_VE_DISABLE)

    def to_bytes(self) -> bytes:
        return b"".join(
            (
                self.tee_tcb_svn,
                self.mr_seam,
                self.mr_signer_seam,
                self.seam_attributes,
                self.td_attributes,
                self.xfam,
                self.mr_td,
                self.mr_config_id,
                self.mr_owner,
                self.mr_owner_config,
                self.rtmr0,
                self.rtmr1,
                self.rtmr2,
                self.rtmr3,
                self.report_data,
            )
        )


@dataclass(frozen=True, slots=True)
class TdReport15(TdReport10):
    tee_tcb_svn2: bytes = b""  # 0x248, 16
    mr_servicetd: bytes = b""  # 0x258, 48

    def to_bytes(self) -> bytes:
        return TdReport10.to_bytes(self) + self.tee_tcb_svn2 + self.mr_servicetd


_FMT10: Final = "<16s48s48s8s8s8s48s48s48s48s48s48s48s48s64s"
_LAYOUT10: Final = Layout(_FMT10, TdReport10)
_LAYOUT15: Final = Layout(_FMT10 + "16s48s", TdReport15)
assert (_LAYOUT10.size, _LAYOUT15.size) == (TD_REPORT10_SIZE, TD_REPORT15_SIZE)


def parse_td_report(r: Reader, *, v15: bool, name: str = "td report") -> TdReport10:
    if v15:
        return TdReport15(*r.record(_LAYOUT15, name))
    return TdReport10(*r.record(_LAYOUT10, name))
