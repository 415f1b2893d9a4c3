"""Verification of Intel SGX and TDX ECDSA (DCAP) quotes against Intel PCS v4 collateral.

The steps follow Intel's Quote Verification Library and the SGX/TDX DCAP Quoting Library API:
collateral first (cached by content, re-checked against ``now``), then the quote's own signatures
(never cached), then TCB level matching and status convergence.
"""

from __future__ import annotations

import functools
import hashlib
from datetime import datetime
from typing import Final, NamedTuple

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from nacre.collateral.bundle import CollateralBundle
from nacre.collateral.certs import crl_der, load_crl, load_pem_chain_der
from nacre.collateral.pck import PckExtensions, ca_kind_from_cn, parse_pck_extensions_der
from nacre.collateral.qe_identity import EnclaveIdentity, parse_qe_identity
from nacre.collateral.tcb_info import TcbInfo, parse_tcb_info
from nacre.collateral.trust import TrustRoots
from nacre.collateral.x509_der import CertDer, crl_signed_parts
from nacre.errors import CollateralError, MalformedEvidenceError, VerificationError
from nacre.evidence.dcap import INTEL_QE_VENDOR_ID, DcapQuote
from nacre.evidence.sgx import EnclaveReportBody
from nacre.evidence.tdx import TdReport10, TdReport15
from nacre.verify.cache import VerifyCache, Window, default_cache
from nacre.verify.chain import (
    check_crl,
    check_not_revoked,
    check_time,
    decoding,
    is_ec_key,
    verify_chain_to_anchor,
)
from nacre.verify.result import (
    ChainLink,
    Check,
    CollateralItem,
    TcbMatch,
    VerifiedEvidence,
    _make,
)
from nacre.verify.tcb import StatusWithAdvisories, converge, match_platform_level, match_qe_level

__all__ = ["verify_dcap"]

_ECDSA_SHA256: Final = ec.ECDSA(hashes.SHA256())

# The checks whose wording does not depend on the quote, built once.
_C_HEADER: Final = Check("header", "Intel QE vendor ID, ECDSA P-256 key", True)
_C_ROOT_CRL: Final = Check("root_crl", "Intel SGX Root CA CRL signed and current", True)
_C_PCK_CHAIN: Final = {
    ca: Check("pck_chain", f"PCK chain to the trust anchor, PCK {ca} CA CRL", True)
    for ca in ("processor", "platform")
}
_C_TCB_INFO: Final = {
    v: Check("tcb_info", f"TCB info v{v} signed by Intel and current", True) for v in (2, 3)
}
_C_QE_IDENTITY: Final = {
    q: Check("qe_identity", f"{q} identity signed by Intel and current", True)
    for q in ("QE", "TD_QE")
}
_C_QE_REPORT: Final = Check("qe_report", "QE report signed by the PCK key", True)
_C_QE_BINDING: Final = Check(
    "qe_binding", "QE report data = SHA-256(attestation key || auth data)", True
)
_C_QUOTE_SIGNATURE: Final = Check("quote_signature", "quote signed by the attestation key", True)
_C_FMSPC: Final = Check("fmspc", "FMSPC and PCE-ID of the PCK certificate match the TCB info", True)
_REFETCH: Final = "refresh it with: nacre collateral fetch EVIDENCE --out DIR"


# --------------------------------------------------------------------------- collateral side


def _need(bundle: CollateralBundle, name: str) -> bytes:
    data = bundle.get(name)
    if data is None:
        raise CollateralError(
            f"the collateral bundle has no {name}",
            code="COLLATERAL_MISSING",
            field=name,
            expected="present in the --collateral directory",
            actual="missing",
            hint=_REFETCH,
        )
    return data


def _raw_sig_ok(key: ec.EllipticCurvePublicKey, raw: bytes, data: bytes) -> bool:
    if len(raw) != 64:
        return False
    r, s = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
    try:
        key.verify(encode_dss_signature(r, s), data, _ECDSA_SHA256)
    except (InvalidSignature, ValueError):
        return False
    return True


@functools.lru_cache(maxsize=1024)
def _attestation_key(raw: bytes) -> ec.EllipticCurvePublicKey:
    """The P-256 key from its raw x || y. A platform's attestation key repeats across its quotes,
    so the decoded key object is memoised (a pure decoding; the signature is checked every call)."""
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + raw)


def _ec_key(cert: x509.Certificate, what: str) -> ec.EllipticCurvePublicKey:
    key = cert.public_key()
    if not is_ec_key(key) or key.curve.name != "secp256r1":
        raise CollateralError(
            f"{what} key is not ECDSA P-256",
            code="CERT_CHAIN_INVALID",
            field=f"{what} public key",
            expected="EC P-256",
            actual=type(key).__name__,
        )
    return key


# Collateral results are NamedTuples: immutable, and cheaper to build than frozen dataclasses
# (each cold verification builds them all).
class _Chain(NamedTuple):
    certs: tuple[x509.Certificate, ...]  # leaf ... anchor
    leaf: CertDer
    links: tuple[ChainLink, ...]
    windows: tuple[Window, ...]


class _RootCrl(NamedTuple):
    crl: x509.CertificateRevocationList
    window: Window


class _Pck(NamedTuple):
    key: ec.EllipticCurvePublicKey
    ext: PckExtensions
    ca: str
    links: tuple[ChainLink, ...]
    pck_crl_window: Window
    cpu_svn_hex: str = ""


class _Signed(NamedTuple):
    tcb_info: TcbInfo | None
    identity: EnclaveIdentity | None
    links: tuple[ChainLink, ...]


class _Collateral:
    """Verifies each collateral item once per content (cached), against ``trust`` at ``now``.

    Cache keys are tuples of (kind, anchors fingerprint, content ...): the bundle's items by
    their SHA-256, the quote's PCK chain by its bytes.
    """

    def __init__(
        self, bundle: CollateralBundle, trust: TrustRoots, now: datetime, cache: VerifyCache
    ) -> None:
        self.bundle = bundle
        self.anchors = trust.intel_der
        self.now = now
        self.cache = cache
        self.akey = trust.intel_key

    def chain(self, pem: bytes, *, what: str, roles: tuple[str, ...]) -> _Chain:
        """A PEM chain verified to the anchors; shared by TCB info and QE identity (same signer).

        Keyed by the PEM bytes themselves: a dict lookup hashes them (cheaper than SHA-256 of a
        few KB on every warm call) and compares them in full on a hit, so no collision can serve
        one chain's result for another."""

        def compute() -> tuple[_Chain, tuple[Window, ...]]:
            ders = load_pem_chain_der(pem, field=what, known=self.anchors)
            certs, links, windows = verify_chain_to_anchor(
                ders, self.anchors, self.now, what=what, roles=roles
            )
            return _Chain(certs, ders[0], links, windows), windows

        return self.cache.get_or_compute(("chain", self.akey, pem), self.now, compute)

    def root_crl(self) -> _RootCrl:
        # Step 1. The root CA CRL is signed by the trust anchor and current.
        raw = _need(self.bundle, "root_ca_crl.der")

        def compute() -> tuple[_RootCrl, tuple[Window, ...]]:
            der = crl_der(raw, field="root_ca_crl.der")
            crl = load_crl(der, field="root_ca_crl.der")
            parts = crl_signed_parts(der, what="root_ca_crl.der")
            match = [a for a in self.anchors if a.subject == parts[2]]
            window = check_crl(
                crl,
                (match or list(self.anchors))[0].cert,
                self.now,
                what="Intel SGX Root CA CRL",
                parts=parts,
            )
            return _RootCrl(crl, window), (window,)

        key = ("rootcrl", self.akey, self.bundle.digests["root_ca_crl.der"])
        return self.cache.get_or_compute(key, self.now, compute)

    def pck(self, pem: bytes, root: _RootCrl) -> _Pck:
        # Step 2. PCK leaf -> PCK Processor/Platform CA -> Intel SGX Root CA; CRLs of both CAs.
        raw_crl = _need(self.bundle, "pck_crl.der")

        def compute() -> tuple[_Pck, tuple[Window, ...]]:
            verified = self.chain(
                pem,
                what="PCK certificate chain",
                roles=("PCK leaf", "PCK CA", "root"),
            )
            chain, links, windows = verified.certs, verified.links, verified.windows
            if len(chain) < 2:
                raise CollateralError(
                    "PCK certificate chain lacks its CA certificate",
                    code="CERT_CHAIN_INVALID",
                    field="PCK certificate chain",
                    expected="PCK leaf, PCK CA, root",
                    actual=f"{len(chain)} certificate(s)",
                )
            leaf, ca_cert = chain[0], chain[1]
            for ca_or_intermediate in chain[1:-1]:
                check_not_revoked(
                    ca_or_intermediate, root.crl, what="PCK CA certificate", code="PCK_REVOKED"
                )
            der = crl_der(raw_crl, field="pck_crl.der")
            crl = load_crl(der, field="pck_crl.der")
            with decoding("PCK certificate"):
                ca = ca_kind_from_cn(links[1].subject)
                crl_window = check_crl(
                    crl,
                    ca_cert,
                    self.now,
                    what="PCK CRL",
                    parts=crl_signed_parts(der, what="pck_crl.der"),
                    hint=f"the PCK certificate was issued by the {ca} CA: fetch the PCK CRL "
                    f"with ca={ca} (nacre collateral fetch EVIDENCE)",
                )
                check_not_revoked(leaf, crl, what="PCK certificate", code="PCK_REVOKED")
                ext = parse_pck_extensions_der(verified.leaf)
                pck = _Pck(
                    _ec_key(leaf, "PCK certificate"),
                    ext,
                    ca,
                    links,
                    crl_window,
                    ext.cpu_svn.hex(),
                )
            return pck, (*windows, crl_window, root.window)

        key = (
            "pck",
            self.akey,
            pem,
            self.bundle.digests["pck_crl.der"],
            self.bundle.digests["root_ca_crl.der"],
        )
        return self.cache.get_or_compute(key, self.now, compute)

    def signed(self, body_name: str, chain_name: str, root: _RootCrl) -> _Signed:
        # Steps 3-4. TCB info / QE identity: issuer chain to the anchor, signature, validity.
        body = _need(self.bundle, body_name)
        chain_pem = _need(self.bundle, chain_name)
        is_tcb = body_name == "tcb_info.json"
        label = "TCB info" if is_tcb else "QE identity"
        sig_code = "TCB_INFO_SIGNATURE_INVALID" if is_tcb else "QE_IDENTITY_SIGNATURE_INVALID"

        def compute() -> tuple[_Signed, tuple[Window, ...]]:
            if is_tcb:
                tcb_info: TcbInfo | None = parse_tcb_info(body)
                identity: EnclaveIdentity | None = None
                assert tcb_info is not None
                signed, issued, next_update = (
                    tcb_info.signed,
                    tcb_info.issue_date,
                    tcb_info.next_update,
                )
            else:
                tcb_info, identity = None, parse_qe_identity(body)
                signed, issued, next_update = (
                    identity.signed,
                    identity.issue_date,
                    identity.next_update,
                )
            verified = self.chain(
                chain_pem,
                what=f"{label} issuer chain",
                roles=("TCB signing", "root"),
            )
            chain, links, windows = verified.certs, verified.links, verified.windows
            leaf = chain[0]
            check_not_revoked(
                leaf, root.crl, what=f"{label} signing certificate", code="CERT_REVOKED"
            )
            with decoding(f"{label} signing certificate"):
                key = _ec_key(leaf, f"{label} signing")
            if not _raw_sig_ok(key, signed.signature, signed.signed_bytes):
                raise CollateralError(
                    f"the {label} signature does not verify",
                    code=sig_code,
                    field=f"{body_name} signature",
                    expected=f"ECDSA P-256 signature by '{leaf.subject.rfc4514_string()}'",
                    actual="invalid signature",
                    hint=f"the {label} was altered or comes from another signer; {_REFETCH}",
                )
            check_time(label, issued, next_update, self.now, hint=_REFETCH)
            value = _Signed(tcb_info, identity, links)
            return value, (*windows, Window(issued, next_update), root.window)

        key = (
            body_name,
            self.akey,
            self.bundle.digests[body_name],
            self.bundle.digests[chain_name],
            self.bundle.digests["root_ca_crl.der"],
        )
        return self.cache.get_or_compute(key, self.now, compute)


# --------------------------------------------------------------------------- evidence side


def _fail(
    code: str, step: str, message: str, field: str, expected: str, actual: str, hint: str = ""
) -> VerificationError:
    return VerificationError(
        message,
        code=code,
        step=step,
        field=field,
        expected=expected,
        actual=actual,
        hint=hint or None,
    )


def _check_qe_identity(qe: EnclaveReportBody, ident: EnclaveIdentity) -> None:
    step = "qe_identity"
    if qe.mr_signer != ident.mrsigner:
        raise _fail(
            "QE_IDENTITY_MISMATCH",
            step,
            "the quoting enclave is not Intel's",
            "QE MRSIGNER",
            ident.mrsigner.hex(),
            qe.mr_signer.hex(),
        )
    if qe.isv_prod_id != ident.isvprodid:
        raise _fail(
            "QE_IDENTITY_MISMATCH",
            step,
            "the quoting enclave has the wrong product ID",
            "QE ISVPRODID",
            str(ident.isvprodid),
            str(qe.isv_prod_id),
        )
    if qe.misc_select & ident.miscselect_mask != ident.miscselect & ident.miscselect_mask:
        raise _fail(
            "QE_IDENTITY_MISMATCH",
            step,
            "the quoting enclave's MISCSELECT differs",
            "QE MISCSELECT (masked)",
            f"{ident.miscselect & ident.miscselect_mask:08x}",
            f"{qe.misc_select & ident.miscselect_mask:08x}",
        )
    mask = int.from_bytes(ident.attributes_mask, "little")
    got = int.from_bytes(qe.attributes, "little") & mask
    want = int.from_bytes(ident.attributes, "little") & mask
    if got != want:
        raise _fail(
            "QE_IDENTITY_MISMATCH",
            step,
            "the quoting enclave's ATTRIBUTES differ",
            "QE ATTRIBUTES (masked)",
            want.to_bytes(16, "little").hex(),
            got.to_bytes(16, "little").hex(),
        )
    if qe.debug:
        raise _fail(
            "QE_IDENTITY_MISMATCH",
            step,
            "the quoting enclave runs in debug mode",
            "QE ATTRIBUTES.DEBUG",
            "0",
            "1",
        )


def _module_status(tcb_info: TcbInfo, td: TdReport10) -> StatusWithAdvisories | None:
    """TDX module identity (TCB info v3): MRSIGNER_SEAM and SEAM attributes, and its TCB level."""
    module = tcb_info.tdx_module
    if module is None:
        raise _fail(
            "TCB_INFO_INVALID",
            "tdx_module",
            "TDX TCB info lacks tdxModule",
            "tcbInfo.tdxModule",
            "present",
            "missing",
        )
    version, isvsvn = td.tee_tcb_svn[1], td.tee_tcb_svn[0]
    levels = None
    if version > 0 and tcb_info.tdx_module_identities:
        wanted = f"TDX_{version:02X}"
        found = [m for m in tcb_info.tdx_module_identities if m.id.upper() == wanted]
        if not found:
            raise _fail(
                "TDX_MODULE_MISMATCH",
                "tdx_module",
                f"the TCB info knows no TDX module {wanted}",
                "tdxModuleIdentities[].id",
                wanted,
                ", ".join(m.id for m in tcb_info.tdx_module_identities),
            )
        module, levels = found[0].module, found[0].levels
    if td.mr_signer_seam != module.mrsigner:
        raise _fail(
            "TDX_MODULE_MISMATCH",
            "tdx_module",
            "the TDX module is not signed by the expected signer",
            "MRSIGNERSEAM",
            module.mrsigner.hex(),
            td.mr_signer_seam.hex(),
        )
    mask = module.attributes_mask
    mask_int = int.from_bytes(mask, "little")
    got = (int.from_bytes(td.seam_attributes, "little") & mask_int).to_bytes(8, "little")
    want = (int.from_bytes(module.attributes, "little") & mask_int).to_bytes(8, "little")
    if got != want:
        raise _fail(
            "TDX_MODULE_MISMATCH",
            "tdx_module",
            "the TDX module's SEAM attributes differ",
            "SEAMATTRIBUTES (masked)",
            want.hex(),
            got.hex(),
        )
    if levels is None:
        return None
    for level in levels:
        if isvsvn >= level.isvsvn:
            return StatusWithAdvisories(level.status, level.advisory_ids, level.date)
    raise _fail(
        "TCB_NOT_SUPPORTED",
        "tcb",
        "the TDX module's SVN is below every listed level",
        "TDX module ISVSVN (TEE_TCB_SVN[0])",
        f">= {levels[-1].isvsvn}",
        str(isvsvn),
        "update the TDX module",
    )


def _claims(quote: DcapQuote, pck: _Pck) -> dict[str, object]:
    body = quote.body
    common = {"fmspc": pck.ext.fmspc.hex(), "pck_ca": pck.ca, "pce_svn": pck.ext.pce_svn}
    if isinstance(body, EnclaveReportBody):
        return {
            "mrenclave": body.mr_enclave.hex(),
            "mrsigner": body.mr_signer.hex(),
            "isv_prod_id": body.isv_prod_id,
            "isv_svn": body.isv_svn,
            "attributes": body.attributes.hex(),
            "debug": body.debug,
            "report_data": body.report_data.hex(),
            "config_id": body.config_id.hex(),
            "config_svn": body.config_svn,
            "cpu_svn": body.cpu_svn.hex(),
            "misc_select": body.misc_select,
            "isv_family_id": body.isv_family_id.hex(),
            "isv_ext_prod_id": body.isv_ext_prod_id.hex(),
            **common,
        }
    claims: dict[str, object] = {
        "mr_td": body.mr_td.hex(),
        "rtmr0": body.rtmr0.hex(),
        "rtmr1": body.rtmr1.hex(),
        "rtmr2": body.rtmr2.hex(),
        "rtmr3": body.rtmr3.hex(),
        "mr_config_id": body.mr_config_id.hex(),
        "mr_owner": body.mr_owner.hex(),
        "mr_owner_config": body.mr_owner_config.hex(),
        "td_attributes": body.td_attributes.hex(),
        "xfam": body.xfam.hex(),
        "debug": body.debug,
        "sept_ve_disable": body.sept_ve_disable,
        "report_data": body.report_data.hex(),
        "tee_tcb_svn": body.tee_tcb_svn.hex(),
        "mr_seam": body.mr_seam.hex(),
        "mr_signer_seam": body.mr_signer_seam.hex(),
        "seam_attributes": body.seam_attributes.hex(),
        **common,
    }
    if isinstance(body, TdReport15):
        claims["tee_tcb_svn2"] = body.tee_tcb_svn2.hex()
        claims["mr_service_td"] = body.mr_servicetd.hex()
    return claims


def verify_dcap(
    quote: DcapQuote,
    bundle: CollateralBundle,
    *,
    now: datetime,
    trust: TrustRoots,
    cache: VerifyCache | None = None,
) -> VerifiedEvidence:
    """Verify an SGX or TDX quote. Returns :class:`VerifiedEvidence` or raises VerificationError.

    A raised error carries ``.checks``: the steps that passed, then the one that failed.
    """
    checks: list[Check] = []
    try:
        return _verify(quote, bundle, now, trust, cache, checks)
    except VerificationError as exc:
        exc.checks = (*checks, Check(exc.step or "collateral", exc.message, False, str(exc)))
        raise


def _verify(
    quote: DcapQuote,
    bundle: CollateralBundle,
    now: datetime,
    trust: TrustRoots,
    cache: VerifyCache | None,
    checks: list[Check],
) -> VerifiedEvidence:
    coll = _Collateral(bundle, trust, now, cache if cache is not None else default_cache())
    is_tdx = quote.tee == "tdx"

    # Step 0. Header: Intel's quoting enclave (key type and version are checked by the parser).
    if quote.header.qe_vendor_id != INTEL_QE_VENDOR_ID:
        raise MalformedEvidenceError(
            "the quote was not produced by Intel's quoting enclave",
            step="header",
            field="header.qe_vendor_id",
            expected=INTEL_QE_VENDOR_ID.hex(),
            actual=quote.header.qe_vendor_id.hex(),
        )
    checks.append(_C_HEADER)

    # Step 1. Root CA CRL.
    root = coll.root_crl()
    checks.append(_C_ROOT_CRL)

    # Step 2. PCK chain with its CRLs.
    pck = coll.pck(quote.pck_chain_pem, root)
    checks.append(_C_PCK_CHAIN[pck.ca])

    # Step 3. TCB info: chain, signature, validity, and that it is for this TEE.
    tcb_signed = coll.signed("tcb_info.json", "tcb_info_issuer_chain.pem", root)
    tcb_info = tcb_signed.tcb_info
    assert tcb_info is not None
    want_id = "TDX" if is_tdx else "SGX"
    if tcb_info.id != want_id or (is_tdx and tcb_info.version < 3):
        raise CollateralError(
            f"the TCB info is for {tcb_info.id} (v{tcb_info.version}) but the quote is {want_id}",
            code="COLLATERAL_MISMATCH",
            step="tcb_info",
            field="tcbInfo.id",
            expected=want_id + (" version 3" if is_tdx else ""),
            actual=f"{tcb_info.id} version {tcb_info.version}",
            hint=f"fetch the {want_id.lower()} TCB info: nacre collateral fetch EVIDENCE",
        )
    checks.append(_C_TCB_INFO[tcb_info.version])

    # Step 4. QE identity: chain, signature, validity, and the right enclave (QE / TD_QE).
    qe_signed = coll.signed("qe_identity.json", "qe_identity_issuer_chain.pem", root)
    identity = qe_signed.identity
    assert identity is not None
    want_qe = "TD_QE" if is_tdx else "QE"
    if identity.id != want_qe:
        raise CollateralError(
            f"the QE identity is for {identity.id} but the quote needs {want_qe}",
            code="COLLATERAL_MISMATCH",
            step="qe_identity",
            field="enclaveIdentity.id",
            expected=want_qe,
            actual=identity.id,
            hint="fetch the QE identity for this TEE: nacre collateral fetch EVIDENCE",
        )
    checks.append(_C_QE_IDENTITY[want_qe])

    sig = quote.signature
    qe = sig.qe.qe_report

    # Step 5. The QE report is signed by the PCK key.
    if not _raw_sig_ok(pck.key, sig.qe.qe_report_signature, qe.to_bytes()):
        raise _fail(
            "QE_REPORT_SIGNATURE_INVALID",
            "qe_report",
            "the QE report is not signed by the PCK key",
            "qe_report_signature",
            "ECDSA P-256 signature by the PCK certificate's key",
            "invalid signature",
            "the quote was altered or its PCK chain belongs to another platform",
        )
    checks.append(_C_QE_REPORT)

    # Step 6. QE report data binds the attestation key: SHA-256(key || auth data) || 32 zero bytes.
    expected_rd = hashlib.sha256(sig.attestation_key + sig.qe.qe_auth_data).digest() + bytes(32)
    if qe.report_data != expected_rd:
        raise _fail(
            "QE_REPORT_DATA_MISMATCH",
            "qe_report",
            "the QE report does not bind the attestation key",
            "qe_report.report_data",
            expected_rd.hex(),
            qe.report_data.hex(),
        )
    checks.append(_C_QE_BINDING)

    # Step 7. The QE matches Intel's QE identity; its TCB level by ISVSVN.
    _check_qe_identity(qe, identity)
    qe_status = match_qe_level(identity, qe.isv_svn)
    checks.append(Check("qe_tcb", f"QE ISVSVN {qe.isv_svn}: {qe_status.status}", True))

    # Step 8. The quote (header || body) is signed by the attestation key.
    try:
        att_key = _attestation_key(sig.attestation_key)
    except ValueError:
        raise _fail(
            "QUOTE_SIGNATURE_INVALID",
            "quote_signature",
            "the attestation key is not a P-256 point",
            "attestation_key",
            "a point on P-256",
            sig.attestation_key.hex()[:32] + "...",
        ) from None
    if not _raw_sig_ok(att_key, sig.quote_signature, quote.signed_bytes):
        raise _fail(
            "QUOTE_SIGNATURE_INVALID",
            "quote_signature",
            "the quote signature does not verify",
            "quote_signature",
            "ECDSA P-256 signature by the attestation key over header || body",
            "invalid signature",
            "the quote was altered after it was signed",
        )
    checks.append(_C_QUOTE_SIGNATURE)

    # Step 9. The TCB info is for this platform: FMSPC and PCE-ID from the PCK certificate.
    if pck.ext.fmspc != tcb_info.fmspc:
        raise _fail(
            "FMSPC_MISMATCH",
            "tcb_info",
            "the TCB info is for another platform model",
            "FMSPC",
            pck.ext.fmspc.hex(),
            tcb_info.fmspc.hex(),
            f"fetch TCB info for FMSPC {pck.ext.fmspc.hex()}: nacre collateral fetch EVIDENCE",
        )
    if pck.ext.pce_id != tcb_info.pce_id:
        raise _fail(
            "PCEID_MISMATCH",
            "tcb_info",
            "the TCB info is for another PCE",
            "PCE-ID",
            pck.ext.pce_id.hex(),
            tcb_info.pce_id.hex(),
        )
    checks.append(_C_FMSPC)

    # Step 10. Platform TCB level (SGX components + PCESVN; TDX adds TEE_TCB_SVN), TDX module.
    td = quote.body if isinstance(quote.body, TdReport10) else None
    level = match_platform_level(tcb_info, pck.ext.tcb_components, pck.ext.pce_svn, td)
    platform = StatusWithAdvisories(level.status, level.advisory_ids, level.date)
    module = _module_status(tcb_info, td) if td is not None else None
    reason = (
        f"the first level (tcbDate {level.date}) whose SGX components and PCESVN are at or "
        f"below the PCK certificate's (CPUSVN {pck.cpu_svn_hex}, PCESVN {pck.ext.pce_svn})"
    )
    if td is not None:
        reason += f" and TDX components at or below TEE_TCB_SVN {td.tee_tcb_svn.hex()}"
    final = platform
    if module is not None:
        final = converge(final, module)
    final = converge(final, qe_status)
    checks.append(
        Check("tcb", f"platform {level.status}, QE {qe_status.status} -> {final.status}", True)
    )

    items = (
        CollateralItem("TCB info", tcb_info.issue_date, tcb_info.next_update),
        CollateralItem("QE identity", identity.issue_date, identity.next_update),
        CollateralItem("PCK CRL", pck.pck_crl_window.not_before, pck.pck_crl_window.not_after),
        CollateralItem("Root CA CRL", root.window.not_before, root.window.not_after),
    )
    return _make(
        tee="tdx" if is_tdx else "sgx",
        version=quote.header.version,
        tcb_status=final.status,
        advisory_ids=final.advisory_ids,
        claims=_claims(quote, pck),
        verified_at=now,
        sim=trust.sim,
        checks=tuple(checks),
        chain=pck.links,
        collateral=items,
        tcb=TcbMatch(
            platform_status=level.status,
            platform_tcb_date=level.date,
            qe_status=qe_status.status,
            module_status=None if module is None else module.status,
            reason=reason,
        ),
        evidence=quote,
    )
