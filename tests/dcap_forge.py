"""Re-sign a real DCAP quote and its collateral under a test PKI, to reach failure paths that real
Intel-signed data cannot (revoked PCK, CRL from the wrong CA, re-signed TCB info with other levels).

Root "nacre Test Root CA" -> "Intel SGX PCK Platform CA"-named test CA -> PCK leaf carrying the real
leaf's SGX extension; a TCB signing certificate; CRLs. Quote, QE report and signatures are rebuilt.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from nacre.collateral.bundle import CollateralBundle
from nacre.collateral.certs import load_pem_chain
from nacre.collateral.pck import SGX_EXTENSIONS_OID
from nacre.collateral.trust import TrustRoots
from nacre.evidence.dcap import DcapQuote, parse_quote

_T0 = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
_T1 = dt.datetime(2040, 1, 1, tzinfo=dt.UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "nacre tests"),
        ]
    )


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    serial: int,
    extra: x509.UnrecognizedExtension | None = None,
) -> x509.Certificate:
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(_T0)
        .not_valid_after(_T1)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if extra is not None:
        b = b.add_extension(extra, critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _crl(
    issuer: str, key: ec.EllipticCurvePrivateKey, revoked: list[int]
) -> x509.CertificateRevocationList:
    b = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(_name(issuer))
        .last_update(_T0)
        .next_update(_T1)
    )
    for serial in revoked:
        b = b.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(_T0).build()
        )
    return b.sign(key, hashes.SHA256())


def _raw_sig(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


@dataclass
class Forge:
    """A quote and collateral re-signed under a test root; tweak, then ``bundle()``/``quote()``."""

    base: DcapQuote
    tcb_info: dict[str, object]
    qe_identity: dict[str, object]
    pck_revoked: bool = False
    ca_revoked: bool = False
    pck_crl_from_root: bool = False

    def __post_init__(self) -> None:
        self.root_key, self.ca_key, self.pck_key, self.tcb_key = _key(), _key(), _key(), _key()
        self.att_key = _key()
        self.root = _cert(
            "nacre Test Root CA",
            self.root_key,
            "nacre Test Root CA",
            self.root_key,
            ca=True,
            serial=1,
        )
        real_leaf = load_pem_chain(self.base.pck_chain_pem, field="pck")[0]
        ext = real_leaf.extensions.get_extension_for_oid(
            x509.ObjectIdentifier(SGX_EXTENSIONS_OID)
        ).value
        assert isinstance(ext, x509.UnrecognizedExtension)
        self.ca = _cert(
            "Intel SGX PCK Platform CA",
            self.ca_key,
            "nacre Test Root CA",
            self.root_key,
            ca=True,
            serial=2,
        )
        self.leaf = _cert(
            "Intel SGX PCK Certificate",
            self.pck_key,
            "Intel SGX PCK Platform CA",
            self.ca_key,
            ca=False,
            serial=3,
            extra=ext,
        )
        self.tcb_signer = _cert(
            "Intel SGX TCB Signing",
            self.tcb_key,
            "nacre Test Root CA",
            self.root_key,
            ca=False,
            serial=4,
        )

    @property
    def trust(self) -> TrustRoots:
        return TrustRoots.from_certificates([self.root])

    def quote(self) -> bytes:
        q = self.base
        sig = q.signature
        att_raw = self.att_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )[1:]
        qe_rd = hashlib.sha256(att_raw + sig.qe.qe_auth_data).digest() + bytes(32)
        qe_report = replace(sig.qe.qe_report, report_data=qe_rd)
        cert_data = replace(
            sig.qe.certification_data, data=_pem(self.leaf, self.ca, self.root) + b"\x00"
        )
        qe = replace(
            sig.qe,
            qe_report=qe_report,
            qe_report_signature=_raw_sig(self.pck_key, qe_report.to_bytes()),
            certification_data=cert_data,
        )
        new = replace(q, signature=replace(sig, attestation_key=att_raw, qe=qe), trailing=b"")
        new = replace(
            new,
            signature=replace(
                new.signature, quote_signature=_raw_sig(self.att_key, new.signed_bytes)
            ),
        )
        out = new.to_bytes()
        assert parse_quote(out).to_bytes() == out
        return out

    def _signed(self, name: str, obj: dict[str, object]) -> bytes:
        body = json.dumps(obj, separators=(",", ":")).encode()
        return (
            b'{"'
            + name.encode()
            + b'":'
            + body
            + b',"signature":"'
            + _raw_sig(self.tcb_key, body).hex().encode()
            + b'"}'
        )

    def bundle(self) -> CollateralBundle:
        revoked_leaf = [self.leaf.serial_number] if self.pck_revoked else []
        revoked_ca = [self.ca.serial_number] if self.ca_revoked else []
        root_crl = _crl("nacre Test Root CA", self.root_key, revoked_ca)
        pck_crl = (
            root_crl
            if self.pck_crl_from_root
            else _crl("Intel SGX PCK Platform CA", self.ca_key, revoked_leaf)
        )
        chain = _pem(self.tcb_signer, self.root)
        return CollateralBundle(
            {
                "tcb_info.json": self._signed("tcbInfo", self.tcb_info),
                "tcb_info_issuer_chain.pem": chain,
                "qe_identity.json": self._signed("enclaveIdentity", self.qe_identity),
                "qe_identity_issuer_chain.pem": chain,
                "pck_crl.der": pck_crl.public_bytes(serialization.Encoding.DER),
                "pck_crl_issuer_chain.pem": _pem(self.ca, self.root),
                "root_ca_crl.der": root_crl.public_bytes(serialization.Encoding.DER),
            }
        )


def forge_from_case(case_dir: Path) -> Forge:
    base = parse_quote((case_dir / "quote.bin").read_bytes())
    tcb = json.loads((case_dir / "tcb_info.json").read_text())["tcbInfo"]
    qe = json.loads((case_dir / "qe_identity.json").read_text())["enclaveIdentity"]
    return Forge(base, tcb, qe)
