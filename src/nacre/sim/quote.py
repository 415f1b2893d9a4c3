"""Simulated SGX v3 and TDX v4 DCAP quotes, built from nacre's evidence dataclasses.

The quote is what Intel's quoting enclaves emit, byte for byte in layout:

    header (Intel QE vendor ID, ECDSA P-256 key type 2)
    report body (SGX REPORTBODY, or TD report 1.0)
    signature data:
        quote signature      ECDSA P-256 by the attestation key over header || body (raw r || s)
        attestation key      raw x || y
        [v4: cert data type 6 wrapping:]
        QE report            REPORTBODY of the simulated QE; report_data =
                             SHA-256(attestation key || QE auth data) || 32 zero bytes
        QE report signature  ECDSA P-256 by the PCK key
        QE auth data         32 bytes
        cert data type 5     PCK leaf, PCK Platform CA, root (PEM) and a trailing NUL
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from nacre.errors import UsageError
from nacre.evidence.dcap import (
    ATT_KEY_TYPE_ECDSA_P256,
    CERT_TYPE_PCK_CHAIN,
    CERT_TYPE_QE_REPORT,
    INTEL_QE_VENDOR_ID,
    TEE_TYPE_SGX,
    TEE_TYPE_TDX,
    CertificationData,
    DcapQuote,
    QeReportCertificationData,
    QuoteHeader,
    QuoteSignatureData,
    parse_quote,
)
from nacre.evidence.sgx import ATTR_DEBUG, EnclaveReportBody
from nacre.evidence.tdx import TD_ATTR_DEBUG, TD_ATTR_SEPT_VE_DISABLE, TdReport10
from nacre.sim.collateral import SIM_TDX_MODULE_MRSIGNER, QeSpec
from nacre.sim.measure import Measurement
from nacre.sim.pki import raw_signature

__all__ = [
    "QE_AUTH_DATA",
    "SGX_XFRM",
    "SIM_MR_SEAM",
    "TDX_XFAM",
    "QuoteInputs",
    "build_quote",
]

#: Intel's QE fills its 32-byte auth data with 0, 1, ..., 31.
QE_AUTH_DATA: Final = bytes(range(32))
#: SGX ATTRIBUTES.FLAGS: INIT | MODE64BIT; XFRM: x87 | SSE.
_SGX_FLAGS: Final = 0x01 | 0x04
SGX_XFRM: Final = 0x03
#: A common TD XFAM (x87, SSE, AVX, AVX-512 state, PKRU, ...).
TDX_XFAM: Final = bytes.fromhex("e718060000000000")
#: The simulated TDX module's measurement.
SIM_MR_SEAM: Final = hashlib.sha384(b"nacre simulation TDX module").digest()


@dataclass(frozen=True, slots=True)
class QuoteInputs:
    """Everything a quote is made of, apart from the workload's measurement and report data."""

    attestation_key: ec.EllipticCurvePrivateKey
    pck_key: ec.EllipticCurvePrivateKey
    pck_chain_pem: bytes
    qe: QeSpec
    cpu_svn: bytes  # 16
    pce_svn: int
    tee_tcb_svn: bytes  # 16 (TDX)
    qe_id: bytes  # 16, the header's user data starts with it


def _check_report_data(report_data: bytes) -> bytes:
    if len(report_data) > 64:
        raise UsageError(
            "report data is at most 64 bytes",
            field="report_data",
            expected="<= 64 bytes (shorter is zero-padded)",
            actual=f"{len(report_data)} bytes",
        )
    return report_data.ljust(64, b"\x00")


def _sgx_body(m: Measurement, cpu_svn: bytes, report_data: bytes) -> EnclaveReportBody:
    flags = _SGX_FLAGS | (ATTR_DEBUG if m.debug else 0)
    return EnclaveReportBody(
        cpu_svn=cpu_svn,
        misc_select=0,
        reserved1=bytes(12),
        isv_ext_prod_id=bytes(16),
        attributes=flags.to_bytes(8, "little") + SGX_XFRM.to_bytes(8, "little"),
        mr_enclave=m.mr_enclave,
        reserved2=bytes(32),
        mr_signer=m.mr_signer,
        reserved3=bytes(32),
        config_id=m.config_id,
        isv_prod_id=m.isv_prod_id,
        isv_svn=m.isv_svn,
        config_svn=m.config_svn,
        reserved4=bytes(42),
        isv_family_id=bytes(16),
        report_data=report_data,
    )


def _td_body(m: Measurement, tee_tcb_svn: bytes, report_data: bytes) -> TdReport10:
    attrs = TD_ATTR_DEBUG if m.debug else TD_ATTR_SEPT_VE_DISABLE
    return TdReport10(
        tee_tcb_svn=tee_tcb_svn,
        mr_seam=SIM_MR_SEAM,
        mr_signer_seam=SIM_TDX_MODULE_MRSIGNER,
        seam_attributes=bytes(8),
        td_attributes=attrs.to_bytes(8, "little"),
        xfam=TDX_XFAM,
        mr_td=m.mr_td,
        mr_config_id=m.config_id[:48],
        mr_owner=bytes(48),
        mr_owner_config=bytes(48),
        rtmr0=m.rtmrs[0],
        rtmr1=m.rtmrs[1],
        rtmr2=m.rtmrs[2],
        rtmr3=m.rtmrs[3],
        report_data=report_data,
    )


def _qe_report(inputs: QuoteInputs, att_key_raw: bytes) -> EnclaveReportBody:
    qe = inputs.qe
    return EnclaveReportBody(
        cpu_svn=inputs.cpu_svn,
        misc_select=qe.miscselect,
        reserved1=bytes(12),
        isv_ext_prod_id=bytes(16),
        attributes=qe.attributes,
        mr_enclave=hashlib.sha256(f"nacre simulation {qe.id} enclave".encode()).digest(),
        reserved2=bytes(32),
        mr_signer=qe.mrsigner,
        reserved3=bytes(32),
        config_id=bytes(64),
        isv_prod_id=qe.isvprodid,
        isv_svn=qe.isv_svn,
        config_svn=0,
        reserved4=bytes(42),
        isv_family_id=bytes(16),
        report_data=hashlib.sha256(att_key_raw + QE_AUTH_DATA).digest() + bytes(32),
    )


@lru_cache(maxsize=16)
def _certified_attestation_key(inputs: QuoteInputs) -> tuple[bytes, QeReportCertificationData]:
    """The attestation key (raw X || Y) and the QE's certification of it: its report binding the
    key, signed with the PCK key, and the PCK chain. Hardware makes these once per attestation
    key, when the QE certifies it, and puts the same bytes in every quote: so does this."""
    att_key_raw = inputs.attestation_key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )[1:]
    qe_report = _qe_report(inputs, att_key_raw)
    return att_key_raw, QeReportCertificationData(
        qe_report=qe_report,
        qe_report_signature=raw_signature(inputs.pck_key, qe_report.to_bytes()),
        qe_auth_data=QE_AUTH_DATA,
        certification_data=CertificationData(CERT_TYPE_PCK_CHAIN, inputs.pck_chain_pem + b"\x00"),
    )


def build_quote(tdx: bool, m: Measurement, report_data: bytes, inputs: QuoteInputs) -> bytes:
    """An SGX v3 (``tdx=False``) or TDX v4 quote for measurement ``m``, signed end to end."""
    rd = _check_report_data(report_data)
    header = QuoteHeader(
        version=4 if tdx else 3,
        att_key_type=ATT_KEY_TYPE_ECDSA_P256,
        tee_type=TEE_TYPE_TDX if tdx else TEE_TYPE_SGX,
        qe_svn=inputs.qe.isv_svn,
        pce_svn=inputs.pce_svn,
        qe_vendor_id=INTEL_QE_VENDOR_ID,
        user_data=inputs.qe_id + bytes(4),
    )
    body: EnclaveReportBody | TdReport10 = (
        _td_body(m, inputs.tee_tcb_svn, rd) if tdx else _sgx_body(m, inputs.cpu_svn, rd)
    )
    att_key_raw, qe = _certified_attestation_key(inputs)
    unsigned = DcapQuote(
        header=header,
        body=body,
        signature=QuoteSignatureData(
            quote_signature=bytes(64),
            attestation_key=att_key_raw,
            qe=qe,
            outer_cert_type=CERT_TYPE_QE_REPORT if tdx else None,
        ),
    )
    signature = raw_signature(inputs.attestation_key, unsigned.signed_bytes)
    quote = DcapQuote(
        header=header,
        body=body,
        signature=QuoteSignatureData(
            quote_signature=signature,
            attestation_key=att_key_raw,
            qe=qe,
            outer_cert_type=CERT_TYPE_QE_REPORT if tdx else None,
        ),
    )
    out = quote.to_bytes()
    if parse_quote(out) != quote:  # the parser is the contract: what we emit, it reads back
        raise AssertionError("simulated quote does not round-trip through nacre's parser")
    return out
