"""SGX REPORTBODY (sgx_report_body_t, 384 bytes): the ISV enclave report of an SGX quote and the
QE report inside every DCAP quote's certification data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from nacre.evidence._reader import Layout, Reader

__all__ = ["ATTR_DEBUG", "REPORT_BODY_SIZE", "EnclaveReportBody", "parse_enclave_report_body"]

REPORT_BODY_SIZE: Final = 384
#: ATTRIBUTES.FLAGS bit 1: the enclave runs in debug mode (its memory is readable by the host).
ATTR_DEBUG: Final = 0x02


@dataclass(frozen=True, slots=True)
class EnclaveReportBody:
    cpu_svn: bytes  # 0x000, 16
    misc_select: int  # 0x010, u32
    reserved1: bytes  # 0x014, 12
    isv_ext_prod_id: bytes  # 0x020, 16
    attributes: bytes  # 0x030, 16 (FLAGS u64 || XFRM u64)
    mr_enclave: bytes  # 0x040, 32
    reserved2: bytes  # 0x060, 32
    mr_signer: bytes  # 0x080, 32
    reserved3: bytes  # 0x0A0, 32
    config_id: bytes  # 0x0C0, 64
    isv_prod_id: int  # 0x100, u16
    isv_svn: int  # 0x102, u16
    config_svn: int  # 0x104, u16
    reserved4: bytes  # 0x106, 42
    isv_family_id: bytes  # 0x130, 16
    report_data: bytes  # 0x140, 64

    @property
    def debug(self) -> bool:
        return bool(self.attributes[0] & ATTR_DEBUG)

    def to_bytes(self) -> bytes:
        return b"".join(
            (
                self.cpu_svn,
                self.misc_select.to_bytes(4, "little"),
                self.reserved1,
                self.isv_ext_prod_id,
                self.attributes,
                self.mr_enclave,
                self.reserved2,
                self.mr_signer,
                self.reserved3,
                self.config_id,
                self.isv_prod_id.to_bytes(2, "little"),
                self.isv_svn.to_bytes(2, "little"),
                self.config_svn.to_bytes(2, "little"),
                self.reserved4,
                self.isv_family_id,
                self.report_data,
            )
        )


# The REPORTBODY layout, field by field (offsets in the dataclass above).
_LAYOUT: Final = Layout("<16sI12s16s16s32s32s32s32s64sHHH42s16s64s", EnclaveReportBody)
assert _LAYOUT.size == REPORT_BODY_SIZE


def parse_enclave_report_body(r: Reader, name: str = "report body") -> EnclaveReportBody:
    return EnclaveReportBody(*r.record(_LAYOUT, name))
