"""The baseline appraisal ``nacre verify`` applies: fail closed on workloads no one should trust.

Rejects debug enclaves, TDs and SNP guests; TDs without SEPT_VE_DISABLE, with reserved TD attribute
bits or with a non-zero MRSERVICETD; and a Revoked TCB. Other TCB statuses are accepted and reported
with their advisories. Each escape hatch has a loud name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from nacre.errors import PolicyViolationError
from nacre.verify.result import VerifiedEvidence

__all__ = ["BaselinePolicy", "appraise_baseline"]

_TD_ATTR_KNOWN: Final = (1 << 0) | (1 << 28) | (1 << 30) | (1 << 31) | (1 << 63)


@dataclass(frozen=True, slots=True)
class BaselinePolicy:
    allow_debug: bool = False
    unsafe_allow_sept_ve: bool = False
    allow_service_td: bool = False
    unsafe_allow_revoked_tcb: bool = False


def _deny(
    v: VerifiedEvidence, code: str, message: str, field: str, expected: str, actual: str, flag: str
) -> PolicyViolationError:
    return PolicyViolationError(
        message,
        verified=v,
        code=code,
        step="appraisal",
        field=field,
        expected=expected,
        actual=actual,
        hint=f"if this is intended (never in production), pass {flag}",
    )


def appraise_baseline(v: VerifiedEvidence, policy: BaselinePolicy | None = None) -> None:
    """Raise :class:`PolicyViolationError` when ``v`` breaks the baseline policy."""
    p = policy or BaselinePolicy()
    c = v.claims
    if not isinstance(v, VerifiedEvidence):  # appraisal accepts nothing else
        raise TypeError("appraise_baseline takes VerifiedEvidence")
    if c.get("debug") and not p.allow_debug:
        code, what, field = {
            "sgx": ("DEBUG_ENCLAVE", "a debug enclave", "ATTRIBUTES.DEBUG"),
            "tdx": ("DEBUG_TD", "a debug TD", "TDATTRIBUTES.DEBUG"),
            "snp": ("DEBUG_GUEST", "an SNP guest whose policy allows debugging", "POLICY.DEBUG"),
        }[v.tee]
        raise _deny(
            v,
            code,
            f"the evidence comes from {what}: its memory is open to the host",
            field,
            "0 (production)",
            "1 (debug)",
            "--allow-debug",
        )
    if v.tee == "tdx":
        attrs = int.from_bytes(bytes.fromhex(str(c["td_attributes"])), "little")
        if attrs & ~_TD_ATTR_KNOWN:
            raise _deny(
                v,
                "TD_ATTRIBUTES_RESERVED",
                "the TD sets reserved TD attribute bits",
                "TDATTRIBUTES",
                f"only bits 0, 28, 30, 31, 63 (mask {_TD_ATTR_KNOWN:#018x})",
                f"{attrs:#018x}",
                "(no flag: reserved bits are never accepted)",
            )
        if not c.get("sept_ve_disable") and not p.unsafe_allow_sept_ve:
            raise _deny(
                v,
                "SEPT_VE_DISABLE_NOT_SET",
                "the TD does not set SEPT_VE_DISABLE: the host can inject #VE on EPT violations",
                "TDATTRIBUTES.SEPT_VE_DISABLE",
                "1",
                "0",
                "--unsafe-allow-sept-ve",
            )
        servicetd = c.get("mr_service_td")
        if servicetd is not None and int(str(servicetd), 16) != 0 and not p.allow_service_td:
            raise _deny(
                v,
                "MR_SERVICETD_NONZERO",
                "the TD is bound to a service TD",
                "MRSERVICETD",
                "all zero",
                str(servicetd),
                "--allow-service-td",
            )
    if v.tcb_status == "Revoked" and not p.unsafe_allow_revoked_tcb:
        raise _deny(
            v,
            "TCB_REVOKED",
            "the platform's TCB level is Revoked",
            "tcb_status",
            "not Revoked",
            f"Revoked ({', '.join(v.advisory_ids) or 'no advisories'})",
            "--unsafe-allow-revoked-tcb",
        )
