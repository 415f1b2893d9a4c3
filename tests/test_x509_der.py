"""The DER slicing the cold verification path relies on agrees with `cryptography` everywhere.

``nacre.collateral.x509_der`` reads a certificate's signed bytes, signature, Names, commonName and
one extension straight from its DER; ``nacre.verify.chain`` checks chains over those slices. Each
reading is compared here with what `cryptography` decodes, on every real certificate in the
vectors and on generated ones, and the fast chain check is run against the reference
(``verify_directly_issued_by``) path on thousands of damaged chains.
"""

from __future__ import annotations

import base64
import random
import warnings
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from nacre.collateral.certs import load_pem_chain, load_pem_chain_der
from nacre.collateral.pck import (
    SGX_EXTENSIONS_OID,
    parse_pck_extensions,
    parse_pck_extensions_der,
)
from nacre.collateral.trust import TrustRoots
from nacre.collateral.x509_der import CertDer, cert_der, cert_extension_value, name_cn
from nacre.errors import CollateralError, NacreError
from nacre.evidence import parse_quote
from nacre.verify.chain import cn, verify_chain_to_anchor
from vectors import load_cases, vector_certs

_DER = serialization.Encoding.DER


VECTOR_CERTS = vector_certs()


def test_vectors_hold_many_certificates() -> None:
    assert len(VECTOR_CERTS) >= 40


@pytest.mark.parametrize("index", range(len(VECTOR_CERTS)))
def test_slices_match_cryptography(index: int) -> None:
    cert = VECTOR_CERTS[index]
    parts = cert_der(cert, cert.public_bytes(_DER))
    assert parts.tbs == cert.tbs_certificate_bytes
    assert parts.signature == cert.signature
    assert parts.issuer == cert.issuer.public_bytes()
    assert parts.subject == cert.subject.public_bytes()
    assert name_cn(parts.subject) == cn(cert)
    sgx = x509.ObjectIdentifier(SGX_EXTENSIONS_OID)
    try:
        expected: bytes | None = cert.extensions.get_extension_for_oid(sgx).value.public_bytes()
    except x509.ExtensionNotFound:
        expected = None
    from nacre.collateral import der

    assert cert_extension_value(parts, der.oid_der(SGX_EXTENSIONS_OID)) == expected
    if expected is not None:
        assert parse_pck_extensions_der(parts) == parse_pck_extensions(cert)


def _self_signed(name: x509.Name, *, extensions: int = 0) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime(2026, 1, 1, tzinfo=UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
    )
    if extensions:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
    return builder.sign(key, hashes.SHA256())


_STRING_TYPES = (
    x509.name._ASN1Type.UTF8String,
    x509.name._ASN1Type.PrintableString,
    x509.name._ASN1Type.IA5String,
    x509.name._ASN1Type.BMPString,
    x509.name._ASN1Type.UniversalString,
)
_PRINTABLE = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 '()+,-./:=?"


@settings(max_examples=60, deadline=None)
@given(
    cn_text=st.text(alphabet=_PRINTABLE, min_size=1, max_size=40),
    kind=st.sampled_from(_STRING_TYPES),
    before=st.lists(st.sampled_from(["O", "OU", "C"]), max_size=3),
)
def test_common_name_of_generated_names(
    cn_text: str, kind: x509.name._ASN1Type, before: list[str]
) -> None:
    oids = {"O": NameOID.ORGANIZATION_NAME, "OU": NameOID.ORGANIZATIONAL_UNIT_NAME}
    attrs = [
        x509.NameAttribute(NameOID.COUNTRY_NAME, "US")
        if b == "C"
        else x509.NameAttribute(oids[b], f"{b} value")
        for b in before
    ]
    name = x509.Name([*attrs, x509.NameAttribute(NameOID.COMMON_NAME, cn_text, _type=kind)])
    cert = _self_signed(name)
    parts = cert_der(cert, cert.public_bytes(_DER))
    assert name_cn(parts.subject) == cn_text == cn(cert)


def test_name_without_common_name() -> None:
    cert = _self_signed(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Intel")]))
    assert name_cn(cert.subject.public_bytes()) is None
    assert name_cn(b"\x30\x05garbage") is None
    assert name_cn(b"") is None


def test_extension_listed_twice_is_refused() -> None:
    cert = _self_signed(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]), extensions=1)
    parts = cert_der(cert, cert.public_bytes(_DER))
    from nacre.collateral import der

    bc_oid = der.oid_der("2.5.29.19")
    assert cert_extension_value(parts, bc_oid) is not None
    # Duplicate the one extension inside [3] Extensions and fix up the lengths by re-encoding.
    tbs_fields = der.read_all(der.read_one(parts.tbs)[0].value)
    exts_wrapper = tbs_fields[-1]
    assert exts_wrapper.tag == 0xA3
    exts = der.read_one(exts_wrapper.value)[0]
    ext = der.read_one(exts.value)[0]

    def enc(tag: int, value: bytes) -> bytes:
        n = len(value)
        head = bytes((tag, n)) if n < 0x80 else bytes((tag, 0x81, n))
        return head + value

    twice = enc(0x30, enc(0x30, ext.value) * 2)
    new_fields = b"".join(enc(f.tag, f.value) for f in tbs_fields[:-1]) + enc(0xA3, twice)
    forged = CertDer(
        cert=cert,
        der=b"",
        tbs=enc(0x30, new_fields),
        signature=b"",
        issuer=b"",
        subject=b"",
        signature_algorithm=b"",
    )
    with pytest.raises(CollateralError, match="appears twice"):
        cert_extension_value(forged, bc_oid)


def test_truncated_certificate_der_is_a_chain_error() -> None:
    cert = VECTOR_CERTS[0]
    data = cert.public_bytes(_DER)
    for cut in (0, 1, 10, len(data) // 2, len(data) - 1):
        with pytest.raises(CollateralError) as info:
            cert_der(cert, data[:cut])
        assert info.value.code == "CERT_CHAIN_INVALID"


def _pck_chains() -> list[tuple[str, bytes, datetime]]:
    return [
        (case.id, parse_quote(case.evidence).pck_chain_pem, case.now)
        for case in load_cases(tee=("sgx", "tdx"))
    ]


def _reference_chain(
    certs: list[x509.Certificate], anchors: tuple[x509.Certificate, ...], now: datetime
) -> tuple[str, tuple[str, ...]] | tuple[str, str]:
    """What RFC 5280 path checking says, with `cryptography` doing all the decoding: the oracle
    the sliced-DER chain check is held to (its own rules, written independently of it)."""
    try:
        if certs and certs[-1] in anchors:
            full = certs
        else:
            roots = [a for a in anchors if certs and _issued_by(certs[-1], a)]
            if not roots:
                return ("error", "CERT_CHAIN_INVALID")
            full = [*certs, roots[0]]
        for i, c in enumerate(full):
            if not c.not_valid_before_utc <= now:
                return ("error", "COLLATERAL_NOT_YET_VALID")
            if not now <= c.not_valid_after_utc:
                return ("error", "COLLATERAL_EXPIRED")
            if i == len(full) - 1:
                break
            parent = full[i + 1]
            if not _issued_by(c, parent):
                return ("error", "CERT_CHAIN_INVALID")
            if i + 1 != len(full) - 1:
                bc = parent.extensions.get_extension_for_class(x509.BasicConstraints)
                if not bc.value.ca:
                    return ("error", "CERT_CHAIN_INVALID")
        return ("ok", tuple(cn(c) for c in full))
    except (ValueError, TypeError, x509.ExtensionNotFound, x509.DuplicateExtension):
        return ("error", "CERT_CHAIN_INVALID")


def _issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(parent)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


def _outcome(
    chain_loader: str, pem: bytes, now: datetime
) -> tuple[str, tuple[str, ...]] | tuple[str, str]:
    anchors = TrustRoots.default().intel
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            if chain_loader == "reference":
                return _reference_chain(
                    list(load_pem_chain(pem, field="chain", eager=False)), anchors, now
                )
            if chain_loader == "der":
                _certs, links, _ = verify_chain_to_anchor(
                    load_pem_chain_der(pem, field="chain", known=TrustRoots.default().intel_der),
                    anchors,
                    now,
                    what="chain",
                )
            else:
                _certs, links, _ = verify_chain_to_anchor(
                    load_pem_chain(pem, field="chain", eager=False), anchors, now, what="chain"
                )
    except NacreError as exc:
        return ("error", exc.code)
    return ("ok", tuple(link.subject for link in links))


@pytest.mark.parametrize(("case_id", "pem", "now"), _pck_chains())
def test_fast_chain_check_agrees_with_reference(case_id: str, pem: bytes, now: datetime) -> None:
    """Byte flips anywhere in the DER of each certificate: same verdict and code both ways."""
    ref = _outcome("reference", pem, now)
    assert _outcome("der", pem, now) == ref
    assert _outcome("certificates", pem, now) == ref
    assert ref[0] == "ok", case_id
    certs = load_pem_chain(pem, field="chain", eager=False)
    ders = [c.public_bytes(_DER) for c in certs]
    rng = random.Random(case_id)
    verdicts = set()
    for _ in range(150):
        which = rng.randrange(len(ders))
        damaged = bytearray(ders[which])
        damaged[rng.randrange(len(damaged))] ^= 1 << rng.randrange(8)
        blocks = [bytes(damaged) if i == which else d for i, d in enumerate(ders)]
        mutated = b"".join(
            b"-----BEGIN CERTIFICATE-----\n"
            + base64.encodebytes(b)
            + b"-----END CERTIFICATE-----\n"
            for b in blocks
        )
        ref = _outcome("reference", mutated, now)
        assert _outcome("der", mutated, now) == ref, (which, ref)
        assert _outcome("certificates", mutated, now) == ref, (which, ref)
        verdicts.add(ref[0])
    assert "error" in verdicts
