"""What verification needs from certificates and CRLs, read straight from their DER.

`cryptography` builds a Python object for every name attribute and extension on first access, and
re-encodes a CRL's to-be-signed part on every ``tbs_certlist_bytes`` access; on the cold
verification path that costs more than the signature checks themselves. These helpers read a
subject Name (as DER, for byte comparison) and a CRL's signed bytes and issuer with
:mod:`nacre.collateral.der`. Signatures are still verified by `cryptography`.
"""

from __future__ import annotations

from typing import Final

from cryptography import x509

from nacre.collateral import der
from nacre.errors import CollateralError

__all__ = ["cert_subject_der", "crl_signed_parts"]

_TAG_EXPLICIT_0: Final = 0xA0
_TAG_BIT_STRING: Final = 0x03


def _bad(what: str, detail: str) -> CollateralError:
    return CollateralError(
        f"{what} is not well-formed DER",
        code="CERT_CHAIN_INVALID",
        field=what,
        expected="X.509 as RFC 5280 defines it",
        actual=detail,
    )


def _encode(tlv: der.Tlv) -> bytes:
    n = len(tlv.value)
    if n < 0x80:
        head = bytes((tlv.tag, n))
    else:
        body = n.to_bytes((n.bit_length() + 7) // 8, "big")
        head = bytes((tlv.tag, 0x80 | len(body))) + body
    return head + tlv.value


def cert_subject_der(cert: x509.Certificate, *, what: str = "certificate") -> bytes:
    """DER of ``cert``'s subject Name, read from its TBS bytes."""
    try:
        seq, _ = der.read_one(cert.tbs_certificate_bytes)
        fields = der.read_all(seq.value)
        i = 1 if fields and fields[0].tag == _TAG_EXPLICIT_0 else 0
        subject = fields[i + 4]
        if subject.tag != der.TAG_SEQUENCE:
            raise _bad(what, "subject is not a Name")
        return _encode(subject)
    except IndexError:
        raise _bad(what, "too few TBSCertificate fields") from None


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
