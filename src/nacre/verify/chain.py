"""X.509 chain and CRL checks shared by the DCAP and SNP verifiers."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from nacre.collateral.trust import SIM_ROOT_CA_CN
from nacre.collateral.x509_der import CertDer, cert_der, cert_subject_der, crl_signed_parts, name_cn
from nacre.errors import CollateralError, VerificationError
from nacre.verify.cache import Window
from nacre.verify.result import ChainLink

__all__ = [
    "anchor_cn",
    "anchor_subject_der",
    "check_crl",
    "check_not_revoked",
    "check_time",
    "cn",
    "decoding",
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


@functools.lru_cache(maxsize=64)
def anchor_subject_der(cert: x509.Certificate) -> bytes:
    """DER of a trust anchor's subject Name (to match a CRL's issuer without building Names)."""
    return cert_subject_der(cert)


@contextlib.contextmanager
def decoding(what: str) -> Iterator[None]:
    """Turn `cryptography`'s lazy decoding failures into a CollateralError naming ``what``."""
    try:
        yield
    except _DECODE_ERRORS as exc:
        raise _undecodable(what, exc) from exc


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


def _signed_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    """``parent``'s subject is ``child``'s issuer and its key signed ``child`` (checked in Rust)."""
    try:
        child.verify_directly_issued_by(parent)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


@functools.lru_cache(maxsize=64)
def _anchor_der(cert: x509.Certificate) -> CertDer:
    """A trust anchor's DER parts, computed once per anchor."""
    return cert_der(cert, cert.public_bytes(serialization.Encoding.DER), what="trust anchor")


def _der_signed_by(child: CertDer, parent: CertDer) -> bool:
    """As :func:`_signed_by`, over the sliced DER: Names compared as bytes, one ECDSA check.

    Byte-equal Names are equal Names, and the TBS bytes are the ones signed, so this decides the
    same as ``verify_directly_issued_by`` without re-encoding the TBS or building Names. Anything
    else (Names equal only after normalisation, non-EC issuers) takes that reference path.
    """
    key = parent.cert.public_key()
    algorithm = child.cert.signature_hash_algorithm
    if (
        child.issuer != parent.subject
        or not isinstance(key, ec.EllipticCurvePublicKey)
        or child.cert.signature_algorithm_oid not in _ECDSA_SIGNATURE_OIDS
        or algorithm is None
    ):
        return _signed_by(child.cert, parent.cert)
    try:
        key.verify(child.signature, child.tbs, ec.ECDSA(algorithm))
    except InvalidSignature:
        return False
    return True


_ECDSA_SIGNATURE_OIDS = frozenset(
    {
        x509.SignatureAlgorithmOID.ECDSA_WITH_SHA256,
        x509.SignatureAlgorithmOID.ECDSA_WITH_SHA384,
        x509.SignatureAlgorithmOID.ECDSA_WITH_SHA512,
    }
)


def _link_name(cert: CertDer) -> str:
    name = name_cn(cert.subject)
    return name if name is not None else cn(cert.cert)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def verify_chain_to_anchor(
    chain: Sequence[x509.Certificate] | Sequence[CertDer],
    anchors: Sequence[x509.Certificate],
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

    ``chain`` as :class:`CertDer` (from :func:`nacre.collateral.certs.load_pem_chain_der`) takes
    the fast path: signatures checked over the sliced DER, names read from it.
    """
    with decoding(what):
        ders = [c for c in chain if isinstance(c, CertDer)]
        if ders:
            return _verify_der_chain(ders, anchors, now, what, roles, expired_code, early_code)
        certs = [c for c in chain if isinstance(c, x509.Certificate)]
        return _verify_chain(certs, anchors, now, what, roles, expired_code, early_code)


def _verify_der_chain(
    certs: list[CertDer],
    anchors: Sequence[x509.Certificate],
    now: datetime,
    what: str,
    roles: Sequence[str],
    expired_code: str,
    early_code: str,
) -> tuple[tuple[x509.Certificate, ...], tuple[ChainLink, ...], tuple[Window, ...]]:
    """:func:`_verify_chain` over sliced DER (same checks, same order, same errors)."""
    top = certs[-1]
    anchor = next((a for a in anchors if _anchor_der(a).der == top.der), None)
    if anchor is not None:
        certs.pop()
    else:
        anchor = next((a for a in anchors if _der_signed_by(top, _anchor_der(a))), None)
    if anchor is None:
        # The reference path words every refusal (simulation root, untrusted root, issuer).
        return _verify_chain(
            [c.cert for c in certs], anchors, now, what, roles, expired_code, early_code
        )
    full = [*certs, _anchor_der(anchor)]
    links: list[ChainLink] = []
    windows: list[Window] = []
    last = len(full) - 1
    for i, c in enumerate(full):
        cert = c.cert
        role = roles[i] if i < len(roles) else ("root" if i == last else "intermediate")
        name = anchor_cn(anchor) if i == last else _link_name(c)
        nb, na = cert.not_valid_before_utc, cert.not_valid_after_utc
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
                actual=f"issuer {cert.issuer.rfc4514_string()}",
            )
        if i + 1 != last and not _is_ca(parent.cert):
            raise VerificationError(
                f"{what}: issuer '{_link_name(parent)}' is not a CA",
                code="CERT_CHAIN_INVALID",
                field=f"{what} issuer basicConstraints",
                expected="CA:TRUE",
                actual="CA:FALSE or absent",
            )
    return tuple(c.cert for c in full), tuple(links), tuple(windows)


def _verify_chain(
    certs: list[x509.Certificate],
    anchors: Sequence[x509.Certificate],
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
    anchor = next((a for a in anchors if a == top), None)
    if anchor is not None:
        certs.pop()
    else:
        anchor = next((a for a in anchors if _signed_by(top, a)), None)
    if anchor is None:
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
    full = [*certs, anchor]
    links: list[ChainLink] = []
    windows: list[Window] = []
    for i, c in enumerate(full):
        is_anchor = i == len(full) - 1
        role = roles[i] if i < len(roles) else ("root" if is_anchor else "intermediate")
        name = anchor_cn(c) if is_anchor else cn(c)
        nb, na = c.not_valid_before_utc, c.not_valid_after_utc
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
        if is_anchor:
            continue
        parent = full[i + 1]
        if not _signed_by(c, parent):
            raise VerificationError(
                f"{what}: '{name}' is not signed by '{cn(parent)}'",
                code="CERT_CHAIN_INVALID",
                field=f"{what} {role} signature",
                expected=f"issued and signed by {cn(parent)}",
                actual=f"issuer {c.issuer.rfc4514_string()}",
            )
        if parent is not anchor and not _is_ca(parent):
            raise VerificationError(
                f"{what}: issuer '{cn(parent)}' is not a CA",
                code="CERT_CHAIN_INVALID",
                field=f"{what} issuer basicConstraints",
                expected="CA:TRUE",
                actual="CA:FALSE or absent",
            )
    return tuple(full), tuple(links), tuple(windows)


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
    crl: x509.CertificateRevocationList, pub: object, der: bytes | None, what: str
) -> bool:
    if isinstance(pub, ec.EllipticCurvePublicKey):
        # Direct ECDSA check over the TBS bytes read from the DER (cryptography re-encodes them
        # on every tbs_certlist_bytes access, which costs as much as the signature check).
        algorithm = crl.signature_hash_algorithm
        if algorithm is None:
            return False
        if der is not None:
            tbs, signature, _ = crl_signed_parts(der, what=what)
        else:
            tbs, signature = crl.tbs_certlist_bytes, crl.signature
        try:
            pub.verify(signature, tbs, ec.ECDSA(algorithm))
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
    der: bytes | None = None,
) -> Window:
    """The CRL is signed by ``issuer``'s key (which binds it to that CA) and current at ``now``.

    ``der``, when given, is the CRL's DER (the signed bytes are read from it directly).
    """
    with decoding(what):
        valid = _crl_signed_by(crl, issuer.public_key(), der, what)
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
