"""X.509 chain and CRL checks shared by the DCAP and SNP verifiers."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import datetime
from types import TracebackType
from typing import Final, NoReturn, TypeGuard

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from nacre.collateral.trust import SIM_ROOT_CA_CN
from nacre.collateral.x509_der import (
    CertDer,
    anchor_der,
    cert_der,
    cert_extension_value,
    name_cn,
)
from nacre.errors import CollateralError, VerificationError
from nacre.verify.cache import Window
from nacre.verify.result import ChainLink

__all__ = [
    "anchor_cn",
    "check_crl",
    "check_not_revoked",
    "check_time",
    "cn",
    "decoding",
    "is_ec_key",
    "refuse_simulation",
    "verify_chain_to_anchor",
]


def cn(cert: x509.Certificate) -> str:
    """The certificate's subject CN (for messages and the chain shown to users)."""
    attrs = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else cert.subject.rfc4514_string()


@functools.lru_cache(maxsize=64)
def anchor_cn(cert: x509.Certificate) -> str:
    """Trust anchors are few and long-lived: their CN is computed once."""
    return cn(cert)


def _is_sim_name(name: x509.Name) -> bool:
    names = name.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return bool(names) and names[0].value == SIM_ROOT_CA_CN


def refuse_simulation(name: x509.Name, anchors: Sequence[x509.Certificate], what: str) -> None:
    """Raise SIMULATED_EVIDENCE when ``name`` (an untrusted issuer) is nacre's simulation root.

    Called only where a chain or CRL fails to reach the trusted ``anchors``: simulated evidence
    is genuine-looking by design, and the user deserves to hear why it is refused. When the
    anchors are themselves a simulation root (another simulated platform's), the ordinary
    "untrusted root" error applies instead.
    """
    if _is_sim_name(name) and not any(_is_sim_name(a.subject) for a in anchors):
        raise VerificationError(
            "the evidence comes from nacre's simulator (nacre sim), not from a TEE: "
            "it is trusted only when you ask for it",
            code="SIMULATED_EVIDENCE",
            field=f"{what} issuer",
            expected="a trusted root ("
            + (" or ".join(anchor_cn(a) for a in anchors) or "none")
            + ")",
            actual=SIM_ROOT_CA_CN,
            hint="to accept simulated evidence pass --trust-sim to nacre verify "
            "(Python: trust=TrustRoots.simulation()); results then carry sim: true",
        )


class _Decoding:
    """Context manager of :func:`decoding` (a class: it sits on the cold verification path)."""

    __slots__ = ("what",)

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if isinstance(exc, _DECODE_ERRORS):
            raise _undecodable(self.what, exc) from exc


def decoding(what: str) -> _Decoding:
    """Turn `cryptography`'s lazy decoding failures into a CollateralError naming ``what``."""
    return _Decoding(what)


def check_time(
    what: str,
    not_before: datetime,
    not_after: datetime,
    now: datetime,
    *,
    expired_code: str = "COLLATERAL_EXPIRED",
    early_code: str = "COLLATERAL_NOT_YET_VALID",
    hint: str = "refresh it with: nacre collateral fetch EVIDENCE --out DIR",
) -> None:
    if now < not_before:
        raise CollateralError(
            f"{what} is not valid yet: valid from {not_before:%Y-%m-%d %H:%M:%SZ}",
            code=early_code,
            field=f"{what} validity",
            expected=f"not before {not_before.isoformat()}",
            actual=now.isoformat(),
            hint="check the verification time (--at) and the machine clock",
        )
    if now > not_after:
        raise CollateralError(
            f"{what} expired {not_after:%Y-%m-%d}",
            code=expired_code,
            field=f"{what} validity",
            expected=f"not after {not_after.isoformat()}",
            actual=now.isoformat(),
            hint=hint,
        )


@functools.lru_cache(maxsize=64)
def _anchor_der(cert: x509.Certificate) -> CertDer:
    """A trust anchor's DER parts, computed once per anchor."""
    return anchor_der(cert)


#: P-256's generator, uncompressed: a point every build of `cryptography` decodes.
_P256_G: Final = bytes.fromhex(
    "04"
    "6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296"
    "4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5"
)
#: The concrete class of `cryptography`'s EC public keys.
_EC_KEY_TYPE: Final = type(ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), _P256_G))


def is_ec_key(key: object) -> TypeGuard[ec.EllipticCurvePublicKey]:
    """``isinstance(key, EllipticCurvePublicKey)``. That test runs the ABC machinery in Python
    (about a microsecond, several times per verification); the exact type test decides the usual
    case first, and the ABC test every other."""
    return type(key) is _EC_KEY_TYPE or isinstance(key, ec.EllipticCurvePublicKey)


def _ecdsa_alg_der(oid: bytes) -> bytes:
    """DER of an ECDSA AlgorithmIdentifier (parameters absent, RFC 5758 §3.2)."""
    return b"\x30" + bytes((len(oid) + 2,)) + b"\x06" + bytes((len(oid),)) + oid


_ECDSA_HASHES: Final = ((2, hashes.SHA256()), (3, hashes.SHA384()), (4, hashes.SHA512()))
#: Certificate signatureAlgorithm DER -> the ECDSA verifier it names (ecdsa-with-SHA256/384/512).
_ECDSA_BY_ALG_DER: Final = {
    _ecdsa_alg_der(b"\x2a\x86\x48\xce\x3d\x04\x03" + bytes((n,))): ec.ECDSA(h)
    for n, h in _ECDSA_HASHES
}
#: Hash name -> ECDSA verifier (reused: building one per call shows on the cold path).
_ECDSA_BY_HASH: Final = {h.name: ec.ECDSA(h) for _, h in _ECDSA_HASHES}


def _der_signed_by(child: CertDer, parent: CertDer) -> bool:
    """``parent``'s subject is ``child``'s issuer and its key signed ``child``.

    Over the sliced DER for ECDSA: byte-equal Names are equal Names, and the TBS bytes are the
    ones signed, so this decides as ``verify_directly_issued_by`` does without re-encoding the TBS
    or building Names. Anything else (Names equal only after normalisation, other algorithms,
    parameters in the AlgorithmIdentifier) takes ``verify_directly_issued_by`` itself.
    """
    algorithm = _ECDSA_BY_ALG_DER.get(child.signature_algorithm)
    if algorithm is not None and child.issuer == parent.subject:
        key = parent.cert.public_key()
        if is_ec_key(key):
            try:
                key.verify(child.signature, child.tbs, algorithm)
            except InvalidSignature:
                return False
            return True
    try:
        child.cert.verify_directly_issued_by(parent.cert)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


def _link_name(cert: CertDer) -> str:
    name = cert.subject_cn if cert.subject_cn is not None else name_cn(cert.subject)
    return name if name is not None else cn(cert.cert)


_BASIC_CONSTRAINTS_OID: Final = b"\x55\x1d\x13"  # 2.5.29.19
#: BasicConstraints values read without `cryptography`: cA TRUE (pathLen absent or 0..9) or empty.
_CA_TRUE: Final = b"\x30\x03\x01\x01\xff"
_CA_TRUE_PATHLEN: Final = b"\x30\x06\x01\x01\xff\x02\x01"  # then one byte, the pathLen


def _is_ca(cert: CertDer) -> bool:
    """basicConstraints cA is TRUE. The DER forms Intel and AMD use are read directly; anything
    else is judged by `cryptography`, which decodes (and checks) every extension."""
    value = cert_extension_value(cert, _BASIC_CONSTRAINTS_OID, what="certificate")
    if value is not None and (
        value == _CA_TRUE or (len(value) == 8 and value[:7] == _CA_TRUE_PATHLEN and value[7] < 10)
    ):
        return True
    if value == b"\x30\x00":
        return False
    try:
        ext = cert.cert.extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        return False
    return bool(ext.value.ca)


def verify_chain_to_anchor(
    chain: Sequence[x509.Certificate] | Sequence[CertDer],
    anchors: Sequence[x509.Certificate] | Sequence[CertDer],
    now: datetime,
    *,
    what: str,
    roles: Sequence[str] = (),
    expired_code: str = "COLLATERAL_EXPIRED",
    early_code: str = "COLLATERAL_NOT_YET_VALID",
) -> tuple[tuple[x509.Certificate, ...], tuple[ChainLink, ...], tuple[Window, ...]]:
    """Check ``chain`` (leaf first, root optional at the end) ends in one of ``anchors``.

    The last certificate is either an anchor itself (byte for byte) or issued by one; a
    self-issued certificate that is not an anchor is refused. Each certificate is signed by the
    next, every intermediate is a CA, and all are valid at ``now``. Returns the certificates
    (leaf ... anchor), the links and the validity windows involved.

    Certificates and anchors may come as :class:`CertDer` (from
    :func:`nacre.collateral.certs.load_pem_chain_der` and ``TrustRoots.intel_der``); plain
    certificates are sliced here.
    """
    with decoding(what):
        # Labels are built only for what is not sliced yet (they name errors, rarely needed).
        certs = [
            c if isinstance(c, CertDer) else _as_der(c, f"{what} certificate {i}")
            for i, c in enumerate(chain)
        ]
        roots = [
            _anchor_der(a) if isinstance(a, x509.Certificate) else _as_der(a, "trust anchor")
            for a in anchors
        ]
        return _verify_chain(certs, roots, now, what, roles, expired_code, early_code)


def _as_der(cert: object, what: str) -> CertDer:
    if isinstance(cert, CertDer):
        return cert
    if not isinstance(cert, x509.Certificate):
        raise TypeError(f"{what}: expected a certificate, got {type(cert).__name__}")
    return cert_der(cert, cert.public_bytes(serialization.Encoding.DER), what=what)


def _verify_chain(
    certs: list[CertDer],
    anchors: list[CertDer],
    now: datetime,
    what: str,
    roles: Sequence[str],
    expired_code: str,
    early_code: str,
) -> tuple[tuple[x509.Certificate, ...], tuple[ChainLink, ...], tuple[Window, ...]]:
    if not certs:
        raise CollateralError(
            f"{what} is empty", code="CERT_CHAIN_INVALID", field=what, expected=">= 1", actual="0"
        )
    top = certs[-1]
    anchor = next((a for a in anchors if a.der == top.der), None)
    if anchor is not None:
        certs.pop()
    else:
        anchor = next((a for a in anchors if _der_signed_by(top, a)), None)
    if anchor is None:
        _refuse_untrusted(top.cert, [a.cert for a in anchors], what)
    full = [*certs, anchor]
    links: list[ChainLink] = []
    windows: list[Window] = []
    last = len(full) - 1
    for i, c in enumerate(full):
        role = roles[i] if i < len(roles) else ("root" if i == last else "intermediate")
        name = _link_name(c)
        nb, na = c.cert.not_valid_before_utc, c.cert.not_valid_after_utc
        if not nb <= now <= na:
            check_time(
                f"{what}: {role} certificate '{name}'",
                nb,
                na,
                now,
                expired_code=expired_code,
                early_code=early_code,
            )
        windows.append(Window(nb, na))
        links.append(ChainLink(role, name, nb, na))
        if i == last:
            continue
        parent = full[i + 1]
        if not _der_signed_by(c, parent):
            raise VerificationError(
                f"{what}: '{name}' is not signed by '{_link_name(parent)}'",
                code="CERT_CHAIN_INVALID",
                field=f"{what} {role} signature",
                expected=f"issued and signed by {_link_name(parent)}",
                actual=f"issuer {c.cert.issuer.rfc4514_string()}",
            )
        if i + 1 != last and not _is_ca(parent):
            raise VerificationError(
                f"{what}: issuer '{_link_name(parent)}' is not a CA",
                code="CERT_CHAIN_INVALID",
                field=f"{what} issuer basicConstraints",
                expected="CA:TRUE",
                actual="CA:FALSE or absent",
            )
    return tuple(c.cert for c in full), tuple(links), tuple(windows)


def _refuse_untrusted(
    top: x509.Certificate, anchors: Sequence[x509.Certificate], what: str
) -> NoReturn:
    """The chain reaches none of ``anchors``: say why (simulation, unknown root, unknown issuer)."""
    refuse_simulation(top.issuer, anchors, what)
    names = " or ".join(anchor_cn(a) for a in anchors) or "(no anchors)"
    if top.issuer == top.subject:
        raise VerificationError(
            f"{what} ends in a root nacre does not trust: {cn(top)}",
            code="CERT_CHAIN_INVALID",
            field=f"{what} root",
            expected=names,
            actual=f"{cn(top)} (sha256 {top.fingerprint(hashes.SHA256()).hex()[:16]}...)",
            hint="pass --trust-root FILE for a private or simulation PKI",
        )
    raise VerificationError(
        f"{what} is not issued by a trusted root",
        code="CERT_CHAIN_INVALID",
        field=f"{what} issuer",
        expected=names,
        actual=top.issuer.rfc4514_string(),
        hint="pass --trust-root FILE for a private or simulation PKI",
    )


#: What `cryptography` raises when it decodes a damaged field lazily.
#: TypeError included: building a Name from a damaged attribute raises it (e.g. a BIT STRING value
#: under an OID other than x500UniqueIdentifier).
_DECODE_ERRORS = (
    ValueError,
    TypeError,
    UnsupportedAlgorithm,
    x509.DuplicateExtension,
    x509.InvalidVersion,
)


def _undecodable(what: str, exc: Exception) -> CollateralError:
    return CollateralError(
        f"{what} holds a certificate that cannot be decoded",
        code="CERT_CHAIN_INVALID",
        field=what,
        expected="well-formed X.509 certificates",
        actual=f"{type(exc).__name__}: {exc}",
    )


def _crl_signed_by(
    crl: x509.CertificateRevocationList, pub: object, parts: tuple[bytes, bytes, bytes] | None
) -> bool:
    if is_ec_key(pub):
        # Direct ECDSA check over the TBS bytes read from the DER (cryptography re-encodes them
        # on every tbs_certlist_bytes access, which costs as much as the signature check).
        algorithm = crl.signature_hash_algorithm
        if algorithm is None:
            return False
        if parts is not None:
            tbs, signature, _ = parts
        else:
            tbs, signature = crl.tbs_certlist_bytes, crl.signature
        ecdsa = _ECDSA_BY_HASH.get(getattr(algorithm, "name", "")) or ec.ECDSA(algorithm)
        try:
            pub.verify(signature, tbs, ecdsa)
        except InvalidSignature:
            return False
        return True
    if isinstance(pub, rsa.RSAPublicKey):
        return crl.is_signature_valid(pub)
    return False


def check_crl(
    crl: x509.CertificateRevocationList,
    issuer: x509.Certificate,
    now: datetime,
    *,
    what: str,
    hint: str | None = None,
    parts: tuple[bytes, bytes, bytes] | None = None,
) -> Window:
    """The CRL is signed by ``issuer``'s key (which binds it to that CA) and current at ``now``.

    ``parts``, when given, is :func:`~nacre.collateral.x509_der.crl_signed_parts` of the CRL's
    DER (the signed bytes then come from it, not from re-encoding).
    """
    with decoding(what):
        valid = _crl_signed_by(crl, issuer.public_key(), parts)
        if not valid:
            refuse_simulation(crl.issuer, (issuer,), what)
            other = crl.issuer != issuer.subject
            raise CollateralError(
                f"{what} is issued by another CA" if other else f"{what} signature is invalid",
                code="CRL_INVALID",
                field=f"{what} issuer" if other else f"{what} signature",
                expected=f"issued and signed by {issuer.subject.rfc4514_string()}",
                actual=crl.issuer.rfc4514_string() if other else "invalid signature",
                hint=hint,
            )
        next_update = crl.next_update_utc
        last_update = crl.last_update_utc
    if next_update is None:
        raise CollateralError(
            f"{what} has no nextUpdate",
            code="CRL_INVALID",
            field=f"{what} nextUpdate",
            expected="a time",
            actual="absent",
        )
    check_time(what, last_update, next_update, now)
    return Window(last_update, next_update)


def check_not_revoked(
    cert: x509.Certificate, crl: x509.CertificateRevocationList, *, what: str, code: str
) -> None:
    entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
    if entry is not None:
        raise VerificationError(
            f"{what} '{cn(cert)}' is revoked since {entry.revocation_date_utc:%Y-%m-%d}",
            code=code,
            field=f"{what} serial number",
            expected="not on the CRL",
            actual=f"{cert.serial_number:#x} revoked {entry.revocation_date_utc.isoformat()}",
            hint="this platform's key was revoked by Intel; it cannot be trusted",
        )
