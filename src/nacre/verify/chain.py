"""X.509 chain and CRL checks shared by the DCAP and SNP verifiers."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from nacre.errors import CollateralError, VerificationError
from nacre.verify.cache import Window
from nacre.verify.result import ChainLink

__all__ = [
    "cert_window",
    "check_crl",
    "check_not_revoked",
    "check_time",
    "cn",
    "verify_chain_to_anchor",
]


def cn(cert: x509.Certificate) -> str:
    attrs = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else cert.subject.rfc4514_string()


def cert_window(cert: x509.Certificate) -> Window:
    return Window(cert.not_valid_before_utc, cert.not_valid_after_utc)


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


def _issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    if child.issuer != parent.subject:
        return False
    try:
        child.verify_directly_issued_by(parent)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def verify_chain_to_anchor(
    chain: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
    now: datetime,
    *,
    what: str,
    roles: Sequence[str] = (),
    expired_code: str = "COLLATERAL_EXPIRED",
    early_code: str = "COLLATERAL_NOT_YET_VALID",
) -> tuple[x509.Certificate, tuple[ChainLink, ...], tuple[Window, ...]]:
    """Check ``chain`` (leaf first, root optional at the end) ends in one of ``anchors``.

    Returns the anchor used, the links (leaf ... anchor) and the validity windows involved.
    """
    certs = list(chain)
    if not certs:
        raise CollateralError(
            f"{what} is empty", code="CERT_CHAIN_INVALID", field=what, expected=">= 1", actual="0"
        )
    top = certs[-1]
    anchor: x509.Certificate | None = None
    if top.issuer == top.subject:
        # A self-signed certificate in the chain must be one of the anchors, byte for byte.
        for a in anchors:
            if a == top:
                anchor = a
        if anchor is None:
            raise VerificationError(
                f"{what} ends in a root nacre does not trust: {cn(top)}",
                code="CERT_CHAIN_INVALID",
                field=f"{what} root",
                expected=" or ".join(cn(a) for a in anchors) or "(no anchors)",
                actual=f"{cn(top)} (sha256 {top.fingerprint(hashes.SHA256()).hex()[:16]}...)",
                hint="pass --trust-root FILE for a private or simulation PKI",
            )
        certs.pop()
    else:
        for a in anchors:
            if _issued_by(top, a):
                anchor = a
                break
        if anchor is None:
            raise VerificationError(
                f"{what} is not issued by a trusted root",
                code="CERT_CHAIN_INVALID",
                field=f"{what} issuer",
                expected=" or ".join(cn(a) for a in anchors) or "(no anchors)",
                actual=top.issuer.rfc4514_string(),
                hint="pass --trust-root FILE for a private or simulation PKI",
            )
    full = [*certs, anchor]
    links: list[ChainLink] = []
    windows: list[Window] = []
    for i, cert in enumerate(full):
        role = roles[i] if i < len(roles) else ("root" if i == len(full) - 1 else "intermediate")
        check_time(
            f"{what}: {role} certificate '{cn(cert)}'",
            cert.not_valid_before_utc,
            cert.not_valid_after_utc,
            now,
            expired_code=expired_code,
            early_code=early_code,
        )
        windows.append(cert_window(cert))
        links.append(ChainLink(role, cn(cert), cert.not_valid_before_utc, cert.not_valid_after_utc))
        if i + 1 < len(full):
            parent = full[i + 1]
            if not _issued_by(cert, parent):
                raise VerificationError(
                    f"{what}: '{cn(cert)}' is not signed by '{cn(parent)}'",
                    code="CERT_CHAIN_INVALID",
                    field=f"{what} {role} signature",
                    expected=f"issued and signed by {cn(parent)}",
                    actual=f"issuer {cert.issuer.rfc4514_string()}",
                )
            try:
                bc = parent.extensions.get_extension_for_class(x509.BasicConstraints).value
                is_ca = bc.ca
            except x509.ExtensionNotFound:
                is_ca = False
            if not is_ca:
                raise VerificationError(
                    f"{what}: issuer '{cn(parent)}' is not a CA",
                    code="CERT_CHAIN_INVALID",
                    field=f"{what} issuer basicConstraints",
                    expected="CA:TRUE",
                    actual="CA:FALSE or absent",
                )
    return anchor, tuple(links), tuple(windows)


def check_crl(
    crl: x509.CertificateRevocationList,
    issuer: x509.Certificate,
    now: datetime,
    *,
    what: str,
) -> Window:
    """The CRL is signed by ``issuer`` and current at ``now``."""
    if crl.issuer != issuer.subject:
        raise CollateralError(
            f"{what} is issued by another CA",
            code="CRL_INVALID",
            field=f"{what} issuer",
            expected=issuer.subject.rfc4514_string(),
            actual=crl.issuer.rfc4514_string(),
            hint="the PCK CRL must come from the CA that issued the PCK certificate "
            "(processor or platform): fetch it again for the right CA",
        )
    pub = issuer.public_key()
    if not isinstance(pub, ec.EllipticCurvePublicKey | rsa.RSAPublicKey) or not (
        crl.is_signature_valid(pub)
    ):
        raise CollateralError(
            f"{what} signature is invalid",
            code="CRL_INVALID",
            field=f"{what} signature",
            expected=f"signed by {cn(issuer)}",
            actual="invalid signature",
        )
    next_update = crl.next_update_utc
    if next_update is None:
        raise CollateralError(
            f"{what} has no nextUpdate",
            code="CRL_INVALID",
            field=f"{what} nextUpdate",
            expected="a time",
            actual="absent",
        )
    check_time(what, crl.last_update_utc, next_update, now)
    return Window(crl.last_update_utc, next_update)


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
