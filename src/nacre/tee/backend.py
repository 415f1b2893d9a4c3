"""The one interface every TEE backend offers, the identities it reports, and the errors it raises.

A backend turns 64 bytes of report data into evidence (a DCAP quote or an SEV-SNP report), says who
it is (the measurements), and seals data to that identity. Backends differ only in how they reach
their TEE: the simulator in-process, Gramine through ``/dev/attestation``, TDX and SEV-SNP guests
through Linux configfs-tsm.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal, Protocol, runtime_checkable

from nacre.errors import NacreError, UsageError
from nacre.evidence import parse_quote
from nacre.evidence.sgx import EnclaveReportBody

__all__ = [
    "REPORT_DATA_SIZE",
    "Identity",
    "SealPolicy",
    "SealingError",
    "SgxIdentity",
    "SnpIdentity",
    "TdxIdentity",
    "TeeBackend",
    "TeeError",
    "TeeKind",
    "TeeUnavailableError",
    "UnsupportedOperationError",
    "check_report_data",
    "identity_from_quote",
    "quote_report_data",
]

#: Report data is exactly 64 bytes on every TEE (SGX REPORTDATA, TDX REPORTDATA, SNP REPORT_DATA).
REPORT_DATA_SIZE: Final = 64

TeeKind = Literal["sgx", "tdx", "snp"]
SealPolicy = Literal["mrenclave", "mrsigner"]


class TeeError(NacreError):
    """The TEE interface answered badly: a device error, a racing writer, unexpected output."""

    default_code = "TEE_ERROR"


class TeeUnavailableError(TeeError):
    """No TEE (or not the one asked for) is reachable from this process."""

    default_code = "TEE_UNAVAILABLE"


class UnsupportedOperationError(TeeError):
    """The TEE exists, but cannot do what was asked (EPID attestation, TDX sealing ...)."""

    default_code = "UNSUPPORTED_OPERATION"


class SealingError(NacreError):
    """A sealed blob cannot be unsealed here: ``code`` says why, ``field`` which part differs."""

    default_code = "UNSEAL_FAILED"


@dataclass(frozen=True, slots=True)
class SgxIdentity:
    """An SGX enclave's identity, as its report body states it."""

    mrenclave: bytes
    mrsigner: bytes
    isv_prod_id: int
    isv_svn: int

    @classmethod
    def from_report_body(cls, body: EnclaveReportBody) -> SgxIdentity:
        return cls(
            mrenclave=body.mr_enclave,
            mrsigner=body.mr_signer,
            isv_prod_id=body.isv_prod_id,
            isv_svn=body.isv_svn,
        )


@dataclass(frozen=True, slots=True)
class TdxIdentity:
    """A TD's build-time measurement and its four runtime measurement registers."""

    mr_td: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]


@dataclass(frozen=True, slots=True)
class SnpIdentity:
    """An SEV-SNP guest's launch measurement, host data and guest SVN."""

    measurement: bytes
    host_data: bytes
    guest_svn: int


Identity = SgxIdentity | TdxIdentity | SnpIdentity


@runtime_checkable
class TeeBackend(Protocol):
    """What every backend offers. Get one with :func:`nacre.tee.current`."""

    @property
    def name(self) -> str:
        """``sim``, ``gramine`` or ``tsm``."""
        ...

    @property
    def tee(self) -> TeeKind:
        """The kind of evidence :meth:`quote` returns."""
        ...

    def quote(self, report_data: bytes) -> bytes:
        """Evidence carrying exactly 64 bytes of ``report_data``."""
        ...

    def identity(self) -> Identity:
        """This TEE's measurements."""
        ...

    def seal(self, data: bytes, *, policy: SealPolicy = "mrenclave", aad: bytes = b"") -> bytes:
        """Encrypt ``data`` so that only this identity (per ``policy``) can unseal it."""
        ...

    def unseal(self, blob: bytes, *, aad: bytes = b"") -> bytes:
        """Decrypt a blob from :meth:`seal`, with the same ``aad``."""
        ...


def check_report_data(report_data: bytes) -> bytes:
    """The 64-byte rule: shorter data is not padded, longer is not truncated; both are refused."""
    if not isinstance(report_data, bytes | bytearray | memoryview):
        raise UsageError(
            "report data must be bytes",
            field="report_data",
            expected=f"{REPORT_DATA_SIZE} bytes",
            actual=type(report_data).__name__,
        )
    data = bytes(report_data)
    if len(data) != REPORT_DATA_SIZE:
        raise UsageError(
            "report data must be exactly 64 bytes",
            field="report_data",
            expected=f"{REPORT_DATA_SIZE} bytes",
            actual=f"{len(data)} bytes",
            hint="hash longer data (SHA-512, or SHA-256/384 zero-padded to 64 bytes); pad short nonces yourself",
        )
    return data


def identity_from_quote(quote: bytes) -> SgxIdentity | TdxIdentity:
    """The identity stated by a DCAP quote's report body (SGX) or TD report (TDX)."""
    parsed = parse_quote(quote)
    body = parsed.body
    if isinstance(body, EnclaveReportBody):
        return SgxIdentity.from_report_body(body)
    return TdxIdentity(mr_td=body.mr_td, rtmrs=(body.rtmr0, body.rtmr1, body.rtmr2, body.rtmr3))


def quote_report_data(quote: bytes) -> bytes:
    """The report data a DCAP quote carries (SGX or TDX)."""
    return parse_quote(quote).body.report_data
