"""What verification needs from certificates and CRLs, read straight from their DER.

`cryptography` builds a Python object for every name attribute and extension on first access, and
re-encodes a CRL's to-be-signed part on every ``tbs_certlist_bytes`` access; on the cold
verification path that costs more than the signature checks themselves. These helpers read a
subject Name (as DER, for byte comparison) and a CRL's signed bytes and issuer with
:mod:`nacre.collateral.der`. Signatures are still verified by `cryptography`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from cryptography import x509

from nacre.collateral import der
from nacre.errors import CollateralError

__all__ = [
    "CertDer",
    "cert_der",
    "cert_extension_value",
    "crl_signed_parts",
    "name_cn",
]

_TAG_EXPLICIT_0: Final = 0xA0
_TAG_BIT_STRING: Final = 0x03
_TAG_SET: Final = 0x31
_CN_OID: Final = b"\x55\x04\x03"  # 2.5.4.3 commonName
#: DirectoryString choices (RFC 5280 §4.1.2.4) and how their bytes become text.
_STRING_CODECS: Final = {
    0x0C: "utf-8",  # UTF8String
    0x13: "ascii",  # PrintableString
    0x16: "ascii",  # IA5String
    0x14: "latin-1",  # TeletexString (T61): latin-1 is what every X.509 library assumes
    0x1E: "utf-16-be",  # BMPString
    0x1C: "utf-32-be",  # UniversalString
}


@dataclass(frozen=True, slots=True)
class CertDer:
    """A certificate beside the exact DER parts verification reads (sliced, never re-encoded).

    ``cryptography`` re-encodes ``tbs_certificate_bytes`` on every access and builds Python
    objects for the issuer and subject Names; a chain check needs only the signed bytes, the
    signature and the two Names as bytes to compare.
    """

    cert: x509.Certificate
    der: bytes
    tbs: bytes
    signature: bytes
    issuer: bytes  # issuer Name, DER
    subject: bytes  # subject Name, DER
    signature_algorithm: bytes  # the outer signatureAlgorithm AlgorithmIdentifier, DER


def _bad(what: str, detail: str) -> CollateralError:
    return CollateralError(
        f"{what} is not well-formed DER",
        code="CERT_CHAIN_INVALID",
        field=what,
        expected="X.509 as RFC 5280 defines it",
        actual=detail,
    )


def cert_der(cert: x509.Certificate, data: bytes, *, what: str = "certificate") -> CertDer:
    """Slice ``data`` (``cert``'s DER) into its signed parts.

    Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue BIT STRING };
    TBSCertificate ::= SEQUENCE { [0] version OPTIONAL, serialNumber, signature, issuer,
    validity, subject, ... }.
    """
    header = der.header
    try:
        tag, start, end = header(data, 0, len(data))
        if tag != der.TAG_SEQUENCE or end != len(data):
            raise _bad(what, "not one DER SEQUENCE")
        tag, tbs_start, tbs_end = header(data, start, end)
        if tag != der.TAG_SEQUENCE:
            raise _bad(what, "TBSCertificate is not a SEQUENCE")
        _, _, alg_end = header(data, tbs_end, end)
        tag, sig_start, sig_end = header(data, alg_end, end)
        if tag != _TAG_BIT_STRING or sig_start == sig_end or data[sig_start] != 0:
            raise _bad(what, "signature is not a BIT STRING")
        pos = tbs_start
        tag, _, field_end = header(data, pos, tbs_end)
        if tag == _TAG_EXPLICIT_0:  # version
            pos = field_end
        _, _, pos = header(data, pos, tbs_end)  # serialNumber
        _, _, pos = header(data, pos, tbs_end)  # signature AlgorithmIdentifier
        tag, _, issuer_end = header(data, pos, tbs_end)
        if tag != der.TAG_SEQUENCE:
            raise _bad(what, "issuer is not a Name")
        issuer = data[pos:issuer_end]
        _, _, pos = header(data, issuer_end, tbs_end)  # validity
        tag, _, subject_end = header(data, pos, tbs_end)
        if tag != der.TAG_SEQUENCE:
            raise _bad(what, "subject is not a Name")
        return CertDer(
            cert=cert,
            der=data,
            tbs=data[start:tbs_end],
            signature=data[sig_start + 1 : sig_end],
            issuer=issuer,
            subject=data[pos:subject_end],
            signature_algorithm=data[tbs_end:alg_end],
        )
    except CollateralError as exc:
        if exc.code == "CERT_CHAIN_INVALID":
            raise
        raise _bad(what, exc.message) from exc


_TAG_EXPLICIT_3: Final = 0xA3
_TAG_OCTET_STRING: Final = 0x04


def cert_extension_value(cert: CertDer, oid: bytes, *, what: str = "certificate") -> bytes | None:
    """The extnValue of the extension ``oid`` (OID content bytes), or None when absent.

    Reads TBSCertificate after the subject: subjectPublicKeyInfo, [1] and [2] unique IDs
    (optional), [3] Extensions. An extension listed twice is refused (RFC 5280 §4.2).
    """
    data = cert.tbs
    header = der.header
    try:
        _, pos, end = header(data, 0, len(data))
        found: bytes | None = None
        while pos < end:
            tag, start, field_end = header(data, pos, end)
            pos = field_end
            if tag != _TAG_EXPLICIT_3:
                continue
            tag, ext_pos, exts_end = header(data, start, field_end)
            if tag != der.TAG_SEQUENCE:
                raise _bad(what, "extensions are not a SEQUENCE")
            while ext_pos < exts_end:
                tag, e_start, e_end = header(data, ext_pos, exts_end)
                if tag != der.TAG_SEQUENCE:
                    raise _bad(what, "an extension is not a SEQUENCE")
                otag, ostart, oend = header(data, e_start, e_end)
                if otag == der.TAG_OID and data[ostart:oend] == oid:
                    if found is not None:
                        raise _bad(what, "an extension appears twice")
                    vtag, vstart, vend = header(data, oend, e_end)
                    if vtag == der.TAG_BOOLEAN:  # critical
                        vtag, vstart, vend = header(data, vend, e_end)
                    if vtag != _TAG_OCTET_STRING or vend != e_end:
                        raise _bad(what, "extnValue is not an OCTET STRING")
                    found = data[vstart:vend]
                ext_pos = e_end
        return found
    except CollateralError as exc:
        if exc.code == "CERT_CHAIN_INVALID":
            raise
        raise _bad(what, exc.message) from exc


def name_cn(name: bytes) -> str | None:
    """The first commonName in a DER Name (RDNSequence), or None (absent or undecodable).

    For display and CA-kind detection only: name *matching* compares whole DER Names.
    """
    header = der.header
    try:
        tag, pos, end = header(name, 0, len(name))
        if tag != der.TAG_SEQUENCE:
            return None
        while pos < end:
            tag, set_pos, set_end = header(name, pos, end)
            if tag != _TAG_SET:
                return None
            while set_pos < set_end:
                tag, atv_pos, atv_end = header(name, set_pos, set_end)
                if tag != der.TAG_SEQUENCE:
                    return None
                otag, ostart, oend = header(name, atv_pos, atv_end)
                if otag == der.TAG_OID and name[ostart:oend] == _CN_OID:
                    vtag, vstart, vend = header(name, oend, atv_end)
                    codec = _STRING_CODECS.get(vtag)
                    return None if codec is None else name[vstart:vend].decode(codec)
                set_pos = atv_end
            pos = set_end
    except (CollateralError, UnicodeDecodeError):
        return None
    return None


def crl_signed_parts(data: bytes, *, what: str = "CRL") -> tuple[bytes, bytes, bytes]:
    """(the exact TBSCertList bytes, the signature, the issuer Name DER) of a DER CRL.

    Slices by offsets (no re-encoding): CertificateList ::= SEQUENCE { tbsCertList,
    signatureAlgorithm, signatureValue BIT STRING }; TBSCertList ::= SEQUENCE { version INTEGER
    OPTIONAL, signature AlgorithmIdentifier, issuer Name, ... }.
    """
    header = der.header
    try:
        tag, start, end = header(data, 0, len(data))
        if tag != der.TAG_SEQUENCE:
            raise _bad(what, f"tag {tag:#x}")
        tbs_at = start
        tag, tbs_start, tbs_end = header(data, tbs_at, end)
        if tag != der.TAG_SEQUENCE:
            raise _bad(what, "TBSCertList is not a SEQUENCE")
        _, _, alg_end = header(data, tbs_end, end)
        tag, sig_start, sig_end = header(data, alg_end, end)
        if tag != _TAG_BIT_STRING or sig_start == sig_end or data[sig_start] != 0:
            raise _bad(what, "signature is not a BIT STRING")
        pos = tbs_start
        tag, _, field_end = header(data, pos, tbs_end)
        if tag == der.TAG_INTEGER:  # version
            pos = field_end
        _, _, pos = header(data, pos, tbs_end)  # signature AlgorithmIdentifier
        tag, _, issuer_end = header(data, pos, tbs_end)
        if tag != der.TAG_SEQUENCE:
            raise _bad(what, "issuer is not a Name")
        return data[tbs_at:tbs_end], data[sig_start + 1 : sig_end], data[pos:issuer_end]
    except CollateralError as exc:
        if exc.code == "CERT_CHAIN_INVALID":
            raise
        raise _bad(what, exc.message) from exc
