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
    """(the exact TBSCertList bytes, the signature, the issuer Name DER) of a DER CRL."""
    try:
        outer, _ = der.read_one(data)
        if outer.tag != der.TAG_SEQUENCE:
            raise _bad(what, f"tag {outer.tag:#x}")
        body = outer.value
        tbs, after = der.read_one(body)
        _alg, after = der.read_one(body, after)
        sig, _ = der.read_one(body, after)
        if sig.tag != _TAG_BIT_STRING or not sig.value or sig.value[0] != 0:
            raise _bad(what, "signature is not a BIT STRING")
        fields = der.read_all(tbs.value)
        i = 1 if fields and fields[0].tag == der.TAG_INTEGER else 0
        return _encode(tbs), sig.value[1:], _encode(fields[i + 1])
    except IndexError:
        raise _bad(what, "too few TBSCertList fields") from None
    except CollateralError as exc:
        if exc.code == "CERT_CHAIN_INVALID":
            raise
        raise _bad(what, exc.message) from exc
