"""Loading certificates and CRLs in PEM or DER, within named limits.

AMD's VCEK and VLEK certificates carry serial number 0, which RFC 5280 forbids and `cryptography`
(>= 42) loads with a ``CryptographyDeprecationWarning``. nacre loads them deliberately: the warning is
suppressed for exactly that one load call, the dependency range in ``pyproject.toml`` is pinned to
releases that still load them, and ``tests/test_certs.py`` fails the day a release refuses them.
"""

from __future__ import annotations

import base64
import binascii
import functools
import warnings
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.utils import CryptographyDeprecationWarning

from nacre.collateral.x509_der import CertDer, cert_der
from nacre.errors import CollateralError, LimitExceededError
from nacre.limits import MAX_CERT_CHAIN_DEPTH, MAX_CRL_BYTES, MAX_PEM_CHAIN_BYTES

# What cryptography raises for bytes that are not a certificate/CRL it can load.
# TypeError: cryptography raises it when a damaged Name attribute cannot be built.
_LOAD_ERRORS = (
    ValueError,
    TypeError,
    UnsupportedAlgorithm,
    x509.InvalidVersion,
    x509.DuplicateExtension,
)


def _touch(cert: x509.Certificate) -> x509.Certificate:
    """`cryptography` decodes fields lazily; decode them now so damage surfaces at load time."""
    _ = cert.subject, cert.issuer, cert.extensions, cert.signature_hash_algorithm
    cert.public_key()
    return cert


__all__ = ["crl_der", "load_certificate", "load_crl", "load_pem_chain", "load_pem_chain_der"]

_PEM_BEGIN = b"-----BEGIN CERTIFICATE-----"
_PEM_END = b"-----END CERTIFICATE-----"


def _load_der_tolerating_zero_serial(der: bytes) -> x509.Certificate:
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message=".*serial number which wasn't positive.*",
            category=CryptographyDeprecationWarning,
        )
        return _touch(x509.load_der_x509_certificate(der))


def load_certificate(data: bytes, *, field: str) -> x509.Certificate:
    """One certificate, PEM or DER."""
    if len(data) > MAX_PEM_CHAIN_BYTES:
        raise LimitExceededError(
            f"{field} is too large",
            field=field,
            expected=f"<= {MAX_PEM_CHAIN_BYTES} bytes",
            actual=f"{len(data)} bytes",
        )
    try:
        if _PEM_BEGIN in data:
            chain = load_pem_chain(data, field=field)
            if len(chain) != 1:
                raise CollateralError(
                    f"{field} must hold exactly one certificate",
                    code="CERT_CHAIN_INVALID",
                    field=field,
                    expected="1 certificate",
                    actual=f"{len(chain)} certificates",
                )
            return chain[0]
        return _load_der_tolerating_zero_serial(data)
    except _LOAD_ERRORS as exc:
        raise CollateralError(
            f"{field} is not a certificate",
            code="CERT_CHAIN_INVALID",
            field=field,
            expected="a PEM or DER X.509 certificate",
            actual=str(exc),
        ) from exc


def _pem_text(data: bytes, field: str) -> bytes:
    """The PEM text of a chain, within the size and depth limits; a trailing NUL is dropped."""
    if len(data) > MAX_PEM_CHAIN_BYTES:
        raise LimitExceededError(
            f"{field} is too large",
            field=field,
            expected=f"<= {MAX_PEM_CHAIN_BYTES} bytes",
            actual=f"{len(data)} bytes",
        )
    text = data.rstrip(b"\x00")
    if b"\x00" in text:
        raise CollateralError(
            f"{field} has a NUL byte inside the PEM text",
            code="CERT_CHAIN_INVALID",
            field=field,
            expected="PEM text, optionally NUL-terminated",
            actual=f"NUL at offset {text.index(bytes(1))}",
        )
    count = text.count(_PEM_BEGIN)
    if count == 0:
        raise CollateralError(
            f"{field} holds no PEM certificate",
            code="CERT_CHAIN_INVALID",
            field=field,
            expected="at least one '-----BEGIN CERTIFICATE-----' block",
            actual=f"{len(data)} bytes without one",
        )
    if count > MAX_CERT_CHAIN_DEPTH:
        raise LimitExceededError(
            f"{field} has too many certificates",
            field=field,
            expected=f"<= {MAX_CERT_CHAIN_DEPTH}",
            actual=str(count),
        )
    return text


def load_pem_chain(data: bytes, *, field: str, eager: bool = True) -> tuple[x509.Certificate, ...]:
    """A PEM certificate chain, leaf first. A trailing NUL (as in DCAP quotes) is accepted.

    ``eager`` decodes every field now, so damage raises CollateralError here; a caller that reads
    only raw fields (:func:`load_pem_chain_der`) passes False and handles decoding itself.
    """
    text = _pem_text(data, field)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore",
                message=".*serial number which wasn't positive.*",
                category=CryptographyDeprecationWarning,
            )
            certs = x509.load_pem_x509_certificates(text)
            if eager:
                certs = [_touch(c) for c in certs]
    except _LOAD_ERRORS as exc:
        raise CollateralError(
            f"{field} is not a valid PEM certificate chain",
            code="CERT_CHAIN_INVALID",
            field=field,
            expected="PEM X.509 certificates",
            actual=str(exc),
        ) from exc
    return tuple(certs)


def _pem_blocks(
    text: bytes, known: Sequence[tuple[bytes, CertDer]] = ()
) -> list[bytes | CertDer] | None:
    """The DER of each CERTIFICATE block, or None when the text is not plain, well-formed PEM.

    A block whose base64 text is exactly that of one of ``known`` (pairs of :func:`_base64` of
    a certificate's DER and the certificate) is that certificate: it decodes to that DER, so
    decoding it only to compare is skipped. (Compared one by one: the anchors are one or two,
    and equality of bytes of another length costs nothing, where a dict would hash each block.)
    """
    out: list[bytes | CertDer] = []
    pos = 0
    while (begin := text.find(_PEM_BEGIN, pos)) >= 0:
        if text[pos:begin].strip():
            return None  # text between blocks: let the strict loader judge it
        end = text.find(_PEM_END, begin)
        if end < 0:
            return None
        body = text[begin + len(_PEM_BEGIN) : end]
        # Lines end in "\n" (cheap to drop); any other whitespace makes the strict decoding of
        # `flat` fail, and the block is decoded again without all of it, as it always was.
        flat = body.replace(b"\n", b"")
        hit = next((k for b64, k in known if b64 == flat), None)
        if hit is not None:
            out.append(hit)
        else:
            try:
                out.append(binascii.a2b_base64(flat, strict_mode=True))
            except binascii.Error:
                try:
                    out.append(
                        binascii.a2b_base64(
                            body.translate(None, _ASCII_WHITESPACE), strict_mode=True
                        )
                    )
                except binascii.Error:
                    return None
        pos = end + len(_PEM_END)
    return out if not text[pos:].strip() else None


@functools.lru_cache(maxsize=64)
def _base64(der: bytes) -> bytes:
    """The base64 text of ``der`` without line breaks (for trust anchors: computed once)."""
    return binascii.b2a_base64(der, newline=False)


def _load_block(
    block: bytes | CertDer, known: Sequence[CertDer]
) -> CertDer | tuple[x509.Certificate, bytes]:
    if isinstance(block, CertDer):
        return block
    hit = next((k for k in known if k.der == block), None)
    return hit if hit is not None else (x509.load_der_x509_certificate(block), block)


#: What ``bytes.split()`` treats as whitespace (and PEM bodies may be wrapped with).
_ASCII_WHITESPACE = b" \t\n\r\x0b\x0c"


#: Certificate and TBSCertificate SEQUENCE headers in the two-byte long form, then version v3.
_V3_CERT_PREFIX_AT = 8
_V3_VERSION = b"\xa0\x03\x02\x01\x02"


def _positive_serial(der: bytes) -> bool:
    """True when ``der`` visibly starts like an X.509 v3 certificate whose serialNumber is a
    positive INTEGER (the common layout: ``30 82 ll ll 30 82 ll ll a0 03 02 01 02 02 nn ...``).
    False means "not known": the caller then loads it under the zero-serial warning filter."""
    return (
        len(der) > 16
        and der[0] == der[4] == 0x30
        and der[1] == der[5] == 0x82
        and der[8:13] == _V3_VERSION
        and der[13] == 0x02
        and 0 < der[14] < 0x80
        and der[15] < 0x80
        and (der[14] > 1 or der[15] != 0)
    )


def load_pem_chain_der(
    data: bytes, *, field: str, known: Sequence[CertDer] = ()
) -> tuple[CertDer, ...]:
    """A PEM chain as :class:`CertDer` values (certificate + its DER parts), leaf first.

    The DER is decoded here so its signed parts can be sliced without re-encoding; fields are
    decoded lazily (callers wrap use in :func:`nacre.verify.chain.decoding`). Anything but plain
    PEM blocks goes through :func:`load_pem_chain`, which accepts or rejects it exactly as before.
    A block whose DER is byte for byte one of ``known`` (the trust anchors, typically) is that
    value, not loaded again.
    """
    text = _pem_text(data, field)
    blocks = _pem_blocks(text, [(_base64(k.der), k) for k in known])
    loaded: list[CertDer | tuple[x509.Certificate, bytes]]
    try:
        if blocks is not None and all(
            isinstance(b, CertDer) or _positive_serial(b) or any(k.der == b for k in known)
            for b in blocks
        ):
            # No certificate here can draw the zero-serial warning: no filter to set up.
            loaded = [_load_block(b, known) for b in blocks]
        else:
            with warnings.catch_warnings():
                warnings.filterwarnings(
                    "ignore",
                    message=".*serial number which wasn't positive.*",
                    category=CryptographyDeprecationWarning,
                )
                if blocks is None:
                    certs = load_pem_chain(text, field=field, eager=False)
                    loaded = [(c, c.public_bytes(serialization.Encoding.DER)) for c in certs]
                else:
                    loaded = [_load_block(b, known) for b in blocks]
    except _LOAD_ERRORS as exc:
        raise CollateralError(
            f"{field} is not a valid PEM certificate chain",
            code="CERT_CHAIN_INVALID",
            field=field,
            expected="PEM X.509 certificates",
            actual=str(exc),
        ) from exc
    return tuple(
        c if isinstance(c, CertDer) else cert_der(*c, what=f"{field} certificate {i}")
        for i, c in enumerate(loaded)
    )


def crl_der(data: bytes, *, field: str) -> bytes:
    """A CRL as DER, from DER, PEM or hex text (PCCS serves all three)."""
    if len(data) > MAX_CRL_BYTES:
        raise LimitExceededError(
            f"{field} is too large",
            field=field,
            expected=f"<= {MAX_CRL_BYTES} bytes",
            actual=f"{len(data)} bytes",
        )
    stripped = data.strip()
    if stripped.startswith(b"-----BEGIN X509 CRL-----"):
        body = stripped.split(b"-----", 4)
        try:
            return base64.b64decode(b"".join(body[2].split()), validate=True)
        except (IndexError, ValueError) as exc:
            raise _crl_error(field, "valid PEM", str(exc)) from exc
    if stripped and all(c in b"0123456789abcdefABCDEF" for c in stripped[:64]):
        try:
            return bytes.fromhex(stripped.decode("ascii"))
        except ValueError:
            pass
    return data


def _crl_error(field: str, expected: str, actual: str) -> CollateralError:
    return CollateralError(
        f"{field} is not a CRL",
        code="CRL_INVALID",
        field=field,
        expected=expected,
        actual=actual,
    )


def load_crl(data: bytes, *, field: str) -> x509.CertificateRevocationList:
    """A CRL in DER, PEM or hex text."""
    der = crl_der(data, field=field)
    try:
        return x509.load_der_x509_crl(der)
    except _LOAD_ERRORS as exc:
        raise _crl_error(field, "a DER or PEM X.509 CRL", str(exc)) from exc
