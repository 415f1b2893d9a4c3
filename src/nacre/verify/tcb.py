"""TCB level matching and status convergence, as Intel's Quote Verification Library defines them."""

from __future__ import annotations

from operator import ge
from typing import Final, NamedTuple

from nacre.collateral.qe_identity import EnclaveIdentity
from nacre.collateral.tcb_info import TcbInfo, TcbLevel
from nacre.errors import VerificationError
from nacre.evidence.tdx import TdReport10

__all__ = ["StatusWithAdvisories", "converge", "match_platform_level", "match_qe_level"]

_OUT_OF_DATE: Final = "OutOfDate"
_REVOKED: Final = "Revoked"


class StatusWithAdvisories(NamedTuple):
    status: str
    advisory_ids: tuple[str, ...]
    date: str | None = None


def _not_supported(what: str, expected: str, actual: str) -> VerificationError:
    return VerificationError(
        f"no TCB level in the collateral matches this {what}",
        code="TCB_NOT_SUPPORTED",
        step="tcb",
        field=what,
        expected=expected,
        actual=actual,
        hint="the platform's TCB is older than every level Intel lists: update its firmware "
        "(BIOS/microcode) and TDX module, or check that the collateral is for this FMSPC",
    )


def _tdx_components_ok(level: TcbLevel, tee_tcb_svn: bytes) -> bool:
    assert level.tdx_components is not None
    # Intel QVL: with a TDX module version (TEE_TCB_SVN[1]) > 0, the module's SVNs are judged by
    # the TDX module identities, so components 0 and 1 are not compared here.
    if tee_tcb_svn[1] > 0:
        return all(map(ge, tee_tcb_svn[2:], level.tdx_components[2:]))
    return all(map(ge, tee_tcb_svn, level.tdx_components))


def match_platform_level(
    tcb_info: TcbInfo,
    cpu_svn_components: tuple[int, ...],
    pce_svn: int,
    td_report: TdReport10 | None,
) -> TcbLevel:
    """The first level (Intel lists them highest first) the platform is at or above."""
    if len(cpu_svn_components) != 16:
        raise _not_supported("platform TCB", "16 SGX TCB components", str(len(cpu_svn_components)))
    for level in tcb_info.levels:
        if pce_svn < level.pce_svn or not all(map(ge, cpu_svn_components, level.sgx_components)):
            continue
        if td_report is not None and not _tdx_components_ok(level, td_report.tee_tcb_svn):
            continue
        return level
    lowest = tcb_info.levels[-1]
    actual = f"CPUSVN {list(cpu_svn_components)}, PCESVN {pce_svn}"
    if td_report is not None:
        actual += f", TEE_TCB_SVN {td_report.tee_tcb_svn.hex()}"
    raise _not_supported(
        "platform TCB",
        f">= the lowest listed level (SGX {list(lowest.sgx_components)}, PCESVN {lowest.pce_svn})",
        actual,
    )


def match_qe_level(identity: EnclaveIdentity, isv_svn: int) -> StatusWithAdvisories:
    for level in identity.levels:
        if isv_svn >= level.isvsvn:
            return StatusWithAdvisories(level.status, level.advisory_ids, level.date)
    raise _not_supported("QE ISVSVN", f">= {identity.levels[-1].isvsvn}", str(isv_svn))


def converge(platform: StatusWithAdvisories, other: StatusWithAdvisories) -> StatusWithAdvisories:
    """Fold a QE (or TDX module) status into the platform status, as Intel's QVL does.

    Revoked wins; an OutOfDate QE/module makes an up-to-date platform OutOfDate and a platform
    needing configuration OutOfDateConfigurationNeeded. Advisory IDs are the union, in order.
    """
    ids = list(platform.advisory_ids)
    ids += [a for a in other.advisory_ids if a not in ids]
    status = platform.status
    if other.status == _REVOKED:
        status = _REVOKED
    elif other.status == _OUT_OF_DATE:
        if platform.status in ("UpToDate", "SWHardeningNeeded"):
            status = _OUT_OF_DATE
        elif platform.status in ("ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded"):
            status = "OutOfDateConfigurationNeeded"
    return StatusWithAdvisories(status, tuple(ids), platform.date)
