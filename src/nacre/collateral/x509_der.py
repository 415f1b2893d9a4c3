"""What verification needs from certificates and CRLs, read straight from their DER.

`cryptography` builds a Python object for every name attribute and extension on first access, and
re-encodes a CRL's to-be-signed part on every ``tbs_certlist_bytes`` access; on the cold
verification path that costs more than the signature checks themselves. These helpers read a
subject Name (as DER, for byte comparison) and a CRL's signed bytes and issuer with
:mod:`nacre.collateral.der`. Signatures are still verified by `cryptography`.
"""

from __future__ import annotations

from typing import Final, NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from nacre.collateral import der
from nacre.errors import CollateralError

__all__ = [
    "CertDer",
    "anchor_der",
    "cert_der",
    "cert_extension_value",
    "crl_signed_parts",
    "name_cn",
]

_TAG_EXPLICIT_0: Final = 0xA0
_TAG_BIT_STRING: Final = 0x03
_TAG_SET: Final = 0x31
_CN_OID: Final = b"\x55\x04\x03"  # 2.5.4.3 commonName
_CN_OID_TLV: Final = b"\x06\x03" + _CN_OID
#: Bytes 0, 2 and 4 of a Name whose first RDN is one attribute: SEQUENCE, SET, SEQUENCE.
_SEQ_SET_SEQ: Final = b"\x30\x31\x30"
#: DirectoryString choices (RFC 5280 §4.1.2.4) and how their bytes become text.
_STRING_CODECS: Final = {
    0x0C: "utf-8",  # UTF8String
    0x13: "ascii",  # PrintableString
    0x16: "ascii",  # IA5String
    0x14: "latin-1",  # TeletexString (T61): latin-1 is what every X.509 library assumes
    0x1E: "utf-16-be",  # BMPString
    0x1C: "utf-32-be",  # UniversalString
}


class CertDer(NamedTuple):
    """A certificate beside the exact DER parts verification reads (sliced, never re-encoded).

    A NamedTuple (immutable; cheaper to build than a frozen dataclass, one per certificate).

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
    #: Offset in ``tbs`` of subjectPublicKeyInfo (the field after the subject): extension
    #: lookups start there instead of re-reading the fields before it. 0: not known.
    spki_at: int = 0
    #: The subject's CN (:func:`name_cn`), when computed once up front (trust anchors).
    subject_cn: str | None = None


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
            spki_at=subject_end - start,
        )
    except CollateralError as exc:
        if exc.code == "CERT_CHAIN_INVALID":
            raise
        raise _bad(what, exc.message) from exc


def anchor_der(cert: x509.Certificate) -> CertDer:
    """A trust anchor's parts, its subject CN included: anchors are sliced once and then serve
    every verification, which shows each anchor's name in its chain."""
    parts = cert_der(cert, cert.public_bytes(Encoding.DER), what="trust anchor")
    return parts._replace(subject_cn=name_cn(parts.subject))


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
        if cert.spki_at:
            # cert_der read (and bounds-checked) every field before subjectPublicKeyInfo.
            pos = cert.spki_at
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
                if (
                    e_start + 2 <= e_end
                    and data[e_start] == der.TAG_OID
                    and data[e_start + 1] < 0x80
                ):
                    # The extnID in the short form, read as `header` reads it (same bounds).
                    otag, ostart = der.TAG_OID, e_start + 2
                    oend = ostart + data[e_start + 1]
                    if oend > e_end:
                        otag, ostart, oend = header(data, e_start, e_end)  # raises, as before
                else:
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
    # Intel's names start with their CN, all lengths in the short form: read those
    # bytes directly, with the same tag and bound checks the walk below makes on them.
    if len(name) >= 13 and name[6:11] == _CN_OID_TLV and name[0:5:2] == _SEQ_SET_SEQ:
        end, set_end, atv_end, vend = 2 + name[1], 4 + name[3], 6 + name[5], 13 + name[12]
        short_forms = name[1] | name[3] | name[5] | name[12] < 0x80  # each length byte < 0x80
        if short_forms and vend <= atv_end <= set_end <= end <= len(name):
            codec = _STRING_CODECS.get(name[11])
            try:
                return None if codec is None else name[13:vend].decode(codec)
            except UnicodeDecodeError:
                return None
    return _name_cn_walk(name)


def _name_cn_walk(name: bytes) -> str | None:
    """:func:`name_cn` for any Name: every RDN and attribute in order."""
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
