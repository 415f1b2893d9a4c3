"""Intel DCAP ECDSA quotes: SGX v3, TDX v4 and v5 (and SGX in the v4/v5 layouts).

Layout (Intel SGX ECDSA Quote Library API, "Quote Format"; TDX DCAP Quoting Library API, appendix A):

    v3/v4: header(48) | body | u32 sig_data_len | signature data
    v5:    header(48) | u16 body_type | u32 body_size | body | u32 sig_data_len | signature data

Signature data (ECDSA-256-with-P-256):

    v3:    sig(64) | att_key(64) | QE report(384) | QE sig(64) | u16 auth_len | auth | cert data
    v4/5:  sig(64) | att_key(64) | cert data type 6 { QE report | QE sig | auth | cert data type 5 }

Bytes after the declared signature data are not part of the quote: some published quotes sit in a
larger zero-padded buffer. They are kept (``trailing``) only so that serialisation is byte-exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from nacre.errors import MalformedEvidenceError, UnsupportedEvidenceError
from nacre.evidence._reader import Layout, Reader
from nacre.evidence.sgx import REPORT_BODY_SIZE, EnclaveReportBody, parse_enclave_report_body
from nacre.evidence.tdx import TD_REPORT10_SIZE, TD_REPORT15_SIZE, TdReport10, parse_td_report

__all__ = [
    "ATT_KEY_TYPE_ECDSA_P256",
    "CERT_TYPE_PCK_CHAIN",
    "CERT_TYPE_QE_REPORT",
    "HEADER_SIZE",
    "INTEL_QE_VENDOR_ID",
    "TEE_TYPE_SGX",
    "TEE_TYPE_TDX",
    "CertificationData",
    "DcapQuote",
    "QeReportCertificationData",
    "QuoteHeader",
    "QuoteSignatureData",
    "parse_quote",
]

HEADER_SIZE: Final = 48
ATT_KEY_TYPE_ECDSA_P256: Final = 2
TEE_TYPE_SGX: Final = 0x00000000
TEE_TYPE_TDX: Final = 0x00000081
INTEL_QE_VENDOR_ID: Final = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
#: Certification data type 5: the PCK leaf, intermediate CA and root CA as concatenated PEM.
CERT_TYPE_PCK_CHAIN: Final = 5
#: Certification data type 6: QE report certification data (v4/v5 outer container).
CERT_TYPE_QE_REPORT: Final = 6
#: v5 body types.
BODY_TYPE_SGX: Final = 1
BODY_TYPE_TD10: Final = 2
BODY_TYPE_TD15: Final = 3

_ECDSA_SIG_SIZE: Final = 64
_ATT_KEY_SIZE: Final = 64


def _unsupported_cert_type(kind: int, where: str) -> UnsupportedEvidenceError:
    return UnsupportedEvidenceError(
        f"unsupported certification data type {kind}: this quote needs a PCK certificate lookup",
        code="QUOTE_UNSUPPORTED",
        field=where,
        expected=f"{CERT_TYPE_PCK_CHAIN} (PCK certificate chain)",
        actual=str(kind),
        hint="nacre verifies quotes that embed their PCK chain; configure the quoting library "
        "to embed it (PCK_CERT_CHAIN, type 5)",
    )


@dataclass(frozen=True, slots=True)
class QuoteHeader:
    version: int  # 0x00 u16
    att_key_type: int  # 0x02 u16
    tee_type: int  # 0x04 u32 (v3: reserved, 0 for SGX)
    qe_svn: int  # 0x08 u16 (v4+: reserved)
    pce_svn: int  # 0x0A u16 (v4+: reserved)
    qe_vendor_id: bytes  # 0x0C 16
    user_data: bytes  # 0x1C 20

    def to_bytes(self) -> bytes:
        return b"".join(
            (
                self.version.to_bytes(2, "little"),
                self.att_key_type.to_bytes(2, "little"),
                self.tee_type.to_bytes(4, "little"),
                self.qe_svn.to_bytes(2, "little"),
                self.pce_svn.to_bytes(2, "little"),
                self.qe_vendor_id,
                self.user_data,
            )
        )


@dataclass(frozen=True, slots=True)
class CertificationData:
    cert_type: int
    data: bytes

    @property
    def pck_chain_pem(self) -> bytes:
        """The PEM chain of a type-5 entry (a trailing NUL, present in some quotes, removed)."""
        if self.cert_type != CERT_TYPE_PCK_CHAIN:
            raise _unsupported_cert_type(self.cert_type, "certification data type")
        return self.data.rstrip(b"\x00")

    def to_bytes(self) -> bytes:
        return (
            self.cert_type.to_bytes(2, "little") + len(self.data).to_bytes(4, "little") + self.data
        )


@dataclass(frozen=True, slots=True)
class QeReportCertificationData:
    qe_report: EnclaveReportBody
    qe_report_signature: bytes  # raw r || s, 64
    qe_auth_data: bytes
    certification_data: CertificationData

    def to_bytes(self) -> bytes:
        return b"".join(
            (
                self.qe_report.to_bytes(),
                self.qe_report_signature,
                len(self.qe_auth_data).to_bytes(2, "little"),
                self.qe_auth_data,
                self.certification_data.to_bytes(),
            )
        )


@dataclass(frozen=True, slots=True)
class QuoteSignatureData:
    quote_signature: bytes  # raw r || s over header || body, 64
    attestation_key: bytes  # raw x || y of the P-256 attestation key, 64
    qe: QeReportCertificationData
    #: v4/v5: the outer certification data type (6); v3 has no outer container.
    outer_cert_type: int | None
    #: Bytes inside the declared signature data after what the format defines (normally empty).
    padding: bytes = b""

    def to_bytes(self) -> bytes:
        inner = self.qe.to_bytes()
        if self.outer_cert_type is not None:
            inner = (
                self.outer_cert_type.to_bytes(2, "little")
                + len(inner).to_bytes(4, "little")
                + inner
            )
        return self.quote_signature + self.attestation_key + inner + self.padding


@dataclass(frozen=True, slots=True)
class DcapQuote:
    """An SGX or TDX DCAP quote, parsed. ``body`` is an SGX report body or a TD report."""

    header: QuoteHeader
    body: EnclaveReportBody | TdReport10
    signature: QuoteSignatureData
    #: v5 only: the body descriptor's type (1 SGX, 2 TD 1.0, 3 TD 1.5).
    body_type: int | None = None
    #: Bytes after the declared signature data: not part of the quote, kept for round-trip only.
    trailing: bytes = b""

    @property
    def tee(self) -> str:
        return "tdx" if self.header.tee_type == TEE_TYPE_TDX else "sgx"

    @property
    def signed_bytes(self) -> bytes:
        """What the attestation key signs: the header and the body (with the v5 descriptor)."""
        out = self.header.to_bytes()
        body = self.body.to_bytes()
        if self.body_type is not None:
            out += self.body_type.to_bytes(2, "little") + len(body).to_bytes(4, "little")
        return out + body

    @property
    def pck_chain_pem(self) -> bytes:
        return self.signature.qe.certification_data.pck_chain_pem

    def to_bytes(self) -> bytes:
        sig = self.signature.to_bytes()
        return self.signed_bytes + len(sig).to_bytes(4, "little") + sig + self.trailing


_HEADER: Final = Layout("<HHIHH16s20s", QuoteHeader)


def _parse_header(r: Reader) -> QuoteHeader:
    return QuoteHeader(*r.record(_HEADER, "header"))


def _parse_cert_data(r: Reader, field: str) -> CertificationData:
    cert_type = r.u16(f"{field}.type")
    size = r.u32(f"{field}.size")
    return CertificationData(cert_type=cert_type, data=r.bytes(size, f"{field}.data"))


def _parse_qe_cert_data(r: Reader) -> QeReportCertificationData:
    qe_report = parse_enclave_report_body(r, "qe_report")
    qe_sig = r.bytes(_ECDSA_SIG_SIZE, "qe_report_signature")
    auth_len = r.u16("qe_auth_data.size")
    auth = r.bytes(auth_len, "qe_auth_data")
    cert = _parse_cert_data(r, "pck_cert_data")
    if cert.cert_type != CERT_TYPE_PCK_CHAIN:
        raise _unsupported_cert_type(cert.cert_type, "pck_cert_data.type")
    return QeReportCertificationData(qe_report, qe_sig, auth, cert)


def _parse_signature_data(data: bytes, *, version: int) -> QuoteSignatureData:
    r = Reader(data)
    quote_sig = r.bytes(_ECDSA_SIG_SIZE, "quote_signature")
    att_key = r.bytes(_ATT_KEY_SIZE, "attestation_key")
    if version == 3:
        qe = _parse_qe_cert_data(r)
        outer: int | None = None
    else:
        outer = r.u16("cert_data.type")
        if outer != CERT_TYPE_QE_REPORT:
            raise _unsupported_cert_type(outer, "cert_data.type")
        size = r.u32("cert_data.size")
        inner = Reader(r.bytes(size, "cert_data.data"))
        qe = _parse_qe_cert_data(inner)
        if inner.remaining:
            raise MalformedEvidenceError(
                "QE report certification data is shorter than its declared size",
                field="cert_data.size",
                expected=str(inner.pos),
                actual=str(size),
            )
    return QuoteSignatureData(quote_sig, att_key, qe, outer, padding=r.bytes(r.remaining, "pad"))


def _parse_body(
    r: Reader, header: QuoteHeader
) -> tuple[EnclaveReportBody | TdReport10, int | None]:
    if header.version in (3, 4):
        if header.tee_type == TEE_TYPE_SGX:
            return parse_enclave_report_body(r, "report"), None
        return parse_td_report(r, v15=False, name="td_report"), None
    body_type = r.u16("body.type")
    body_size = r.u32("body.size")
    expected = {
        BODY_TYPE_SGX: REPORT_BODY_SIZE,
        BODY_TYPE_TD10: TD_REPORT10_SIZE,
        BODY_TYPE_TD15: TD_REPORT15_SIZE,
    }
    if body_type not in expected:
        raise UnsupportedEvidenceError(
            f"unknown v5 quote body type {body_type}",
            field="body.type",
            expected="1 (SGX), 2 (TD report 1.0) or 3 (TD report 1.5)",
            actual=str(body_type),
        )
    if body_size != expected[body_type]:
        raise MalformedEvidenceError(
            "v5 quote body size does not match its type",
            field="body.size",
            expected=str(expected[body_type]),
            actual=str(body_size),
        )
    want_tdx = header.tee_type == TEE_TYPE_TDX
    if want_tdx == (body_type == BODY_TYPE_SGX):
        raise MalformedEvidenceError(
            "v5 quote body type does not match the header's TEE type",
            field="body.type",
            expected="a TD report" if want_tdx else "an SGX report",
            actual=str(body_type),
        )
    sub = Reader(r.bytes(body_size, "body"))
    if body_type == BODY_TYPE_SGX:
        return parse_enclave_report_body(sub, "report"), body_type
    return parse_td_report(sub, v15=body_type == BODY_TYPE_TD15, name="td_report"), body_type


def parse_quote(data: bytes) -> DcapQuote:
    """Parse an SGX/TDX ECDSA DCAP quote. Raises :class:`MalformedEvidenceError` on bad bytes."""
    r = Reader(data)
    header = _parse_header(r)
    if header.version not in (3, 4, 5):
        raise UnsupportedEvidenceError(
            f"unsupported DCAP quote version {header.version}",
            field="header.version",
            expected="3 (SGX), 4 or 5 (TDX, SGX)",
            actual=str(header.version),
        )
    if header.tee_type not in (TEE_TYPE_SGX, TEE_TYPE_TDX):
        raise MalformedEvidenceError(
            "unknown TEE type in quote header",
            field="header.tee_type",
            expected="0x00000000 (SGX) or 0x00000081 (TDX)",
            actual=f"{header.tee_type:#010x}",
        )
    if header.version == 3 and header.tee_type != TEE_TYPE_SGX:
        raise MalformedEvidenceError(
            "a version 3 quote is always SGX",
            field="header.tee_type",
            expected="0x00000000",
            actual=f"{header.tee_type:#010x}",
        )
    if header.att_key_type != ATT_KEY_TYPE_ECDSA_P256:
        raise UnsupportedEvidenceError(
            "unsupported attestation key type",
            field="header.att_key_type",
            expected=f"{ATT_KEY_TYPE_ECDSA_P256} (ECDSA-256-with-P-256)",
            actual=str(header.att_key_type),
            hint="ECDSA P-384 quotes are not produced by Intel's quoting enclaves",
        )
    body, body_type = _parse_body(r, header)
    sig_len = r.u32("signature_data.size")
    signature = _parse_signature_data(r.bytes(sig_len, "signature_data"), version=header.version)
    return DcapQuote(
        header=header,
        body=body,
        signature=signature,
        body_type=body_type,
        trailing=r.bytes(r.remaining, "trailing"),
    )
