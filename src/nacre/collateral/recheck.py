"""Re-verification of one cached collateral item, as :class:`~nacre.collateral.disk_cache.DiskCache`
runs it on every read (and before storing a fresh item).

Per kind, at ``now``:

* ``tcb_info`` / ``qe_identity``: the issuer chain ends in a trusted Intel root, every link is
  signed by the next and valid now, the body's ECDSA P-256 signature verifies with the chain's
  leaf, and ``issueDate <= now <= nextUpdate``;
* ``pck_crl``: the same chain checks, the CRL is signed by the chain's leaf and current;
* ``root_ca_crl``: the CRL is signed by a trusted Intel root and current;
* ``vcek``: a certificate valid now (the verifier checks it against the ASK);
* ``amd_cert_chain``: intermediate (ASK/ASVK) signed by the ARK, the ARK self-signed and one of the
  trusted AMD roots, both valid now.

Every item is also refused once it is older than ``max_age`` (CRLs and TCB info change between
their ``nextUpdate`` dates) or stamped in the future. This does not replace verification: the
verifier checks the assembled collateral again. It keeps the cache from serving what no longer
verifies.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Final, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from nacre.collateral.certs import load_certificate, load_crl, load_pem_chain
from nacre.collateral.disk_cache import CachedItem, Validator
from nacre.collateral.qe_identity import parse_qe_identity
from nacre.collateral.tcb_info import parse_tcb_info
from nacre.collateral.trust import TrustRoots
from nacre.errors import CollateralError
from nacre.limits import DISK_CACHE_MAX_AGE_SECONDS

__all__ = ["ITEM_KINDS", "ItemKind", "collateral_validator"]

ItemKind = Literal["tcb_info", "qe_identity", "pck_crl", "root_ca_crl", "vcek", "amd_cert_chain"]
ITEM_KINDS: Final = ("tcb_info", "qe_identity", "pck_crl", "root_ca_crl", "vcek", "amd_cert_chain")

#: What cryptography raises for damaged certificates and CRLs (some fields are parsed lazily).
_MALFORMED: Final = (ValueError, x509.InvalidVersion, UnsupportedAlgorithm)
#: Clock skew tolerated between the fetch stamp and ``now``.
_SKEW: Final = timedelta(minutes=5)
_HINT: Final = "it is refetched automatically; if this persists, check the PCS/PCCS/KDS URL"


def _fail(message: str, field: str, expected: object, actual: object, code: str) -> CollateralError:
    return CollateralError(
        message, code=code, field=field, expected=expected, actual=actual, hint=_HINT
    )


def _window(what: str, not_before: datetime, not_after: datetime | None, now: datetime) -> None:
    if not_after is None:
        raise _fail(f"{what} has no end of validity", what, "a nextUpdate", "none", "CRL_INVALID")
    if now < not_before:
        raise _fail(
            f"{what} is not valid yet",
            f"{what} validity",
            f"not before {not_before.isoformat()}",
            now.isoformat(),
            "COLLATERAL_NOT_YET_VALID",
        )
    if now > not_after:
        raise _fail(
            f"{what} has expired",
            f"{what} validity",
            f"not after {not_after.isoformat()}",
            now.isoformat(),
            "COLLATERAL_EXPIRED",
        )


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _linked(certs: Sequence[x509.Certificate], what: str, now: datetime) -> None:
    """Each certificate signed by the next, the last self-signed, all valid now."""
    for i, cert in enumerate(certs):
        issuer = certs[i + 1] if i + 1 < len(certs) else cert
        try:
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm) as exc:
            raise _fail(
                f"{what}: certificate {i} is not signed by the next one",
                f"{what}[{i}]",
                f"issued by {issuer.subject.rfc4514_string()}",
                f"{type(exc).__name__}: {exc}",
                "CERT_CHAIN_INVALID",
            ) from exc
        _window(
            f"{what}[{i}] certificate", cert.not_valid_before_utc, cert.not_valid_after_utc, now
        )


def _anchored(root: x509.Certificate, anchors: Sequence[x509.Certificate], what: str) -> None:
    if not any(_spki(root) == _spki(a) and root.subject == a.subject for a in anchors):
        raise _fail(
            f"{what} does not end in a trusted root",
            f"{what} root",
            " or ".join(a.subject.rfc4514_string() for a in anchors) or "a trust anchor",
            root.subject.rfc4514_string(),
            "CERT_CHAIN_INVALID",
        )


def _intel_chain(
    item: CachedItem, trust: TrustRoots, now: datetime
) -> tuple[x509.Certificate, ...]:
    what = f"{item.kind} issuer chain"
    if item.issuer_chain is None:
        raise _fail(
            f"{item.kind} has no issuer chain", what, "a PEM chain", "none", "CERT_CHAIN_INVALID"
        )
    certs = load_pem_chain(item.issuer_chain, field=what)
    _linked(certs, what, now)
    _anchored(certs[-1], trust.intel, what)
    return certs


def _signed_json(item: CachedItem, trust: TrustRoots, now: datetime) -> None:
    if item.kind == "tcb_info":
        parsed = parse_tcb_info(item.body)
        signed, issued, next_update = parsed.signed, parsed.issue_date, parsed.next_update
    else:
        ident = parse_qe_identity(item.body)
        signed, issued, next_update = ident.signed, ident.issue_date, ident.next_update
    leaf = _intel_chain(item, trust, now)[0]
    key = leaf.public_key()
    sig = signed.signature
    if not isinstance(key, ec.EllipticCurvePublicKey) or len(sig) != 64:
        raise _fail(
            f"{item.kind} is not signed with ECDSA P-256",
            f"{item.kind} signature",
            "64-byte r||s and an EC signing key",
            f"{len(sig)} bytes, {type(key).__name__}",
            "TCB_INFO_SIGNATURE_INVALID",
        )
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    try:
        key.verify(der, signed.signed_bytes, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise _fail(
            f"{item.kind} signature does not verify",
            f"{item.kind} signature",
            f"signed by {leaf.subject.rfc4514_string()}",
            "invalid signature",
            "TCB_INFO_SIGNATURE_INVALID"
            if item.kind == "tcb_info"
            else "QE_IDENTITY_SIGNATURE_INVALID",
        ) from None
    _window(item.kind, issued, next_update, now)


def _signed_crl(crl: x509.CertificateRevocationList, signer: x509.Certificate) -> bool:
    key = signer.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        return False
    return crl.issuer == signer.subject and crl.is_signature_valid(key)


def _crl(item: CachedItem, signers: Sequence[x509.Certificate], now: datetime) -> None:
    crl = load_crl(item.body, field=item.kind)
    if not any(_signed_crl(crl, s) for s in signers):
        raise _fail(
            f"{item.kind} is not signed by its issuer",
            f"{item.kind} signature",
            " or ".join(s.subject.rfc4514_string() for s in signers),
            crl.issuer.rfc4514_string(),
            "CRL_INVALID",
        )
    _window(item.kind, crl.last_update_utc, crl.next_update_utc, now)


def _amd_chain(item: CachedItem, trust: TrustRoots, now: datetime) -> None:
    what = "AMD cert_chain"
    certs = load_pem_chain(item.body, field=what)
    if len(certs) != 2:
        raise _fail(
            f"{what} must hold the intermediate then the ARK",
            what,
            "2 certificates",
            f"{len(certs)} certificates",
            "CERT_CHAIN_INVALID",
        )
    _linked(certs, what, now)
    _anchored(certs[1], list(trust.amd.values()), what)


def collateral_validator(
    trust: TrustRoots | None = None,
    *,
    max_age: timedelta = timedelta(seconds=DISK_CACHE_MAX_AGE_SECONDS),
) -> Validator:
    """A :data:`~nacre.collateral.disk_cache.Validator` checking items against ``trust``."""
    roots = trust if trust is not None else TrustRoots.default()

    def validate(item: CachedItem, now: datetime) -> None:
        if item.fetched_at > now + _SKEW:
            raise _fail(
                f"cached {item.kind} was fetched after the verification time",
                "fetched_at",
                f"<= {now.isoformat()}",
                item.fetched_at.isoformat(),
                "COLLATERAL_NOT_YET_VALID",
            )
        if now - item.fetched_at > max_age:
            raise _fail(
                f"cached {item.kind} is older than the cache's maximum age",
                "fetched_at",
                f"within {max_age} of {now.isoformat()}",
                item.fetched_at.isoformat(),
                "COLLATERAL_STALE",
            )
        try:
            _check_kind(item, roots, now)
        except _MALFORMED as exc:
            raise _fail(
                f"cached {item.kind} is malformed",
                item.kind,
                "well-formed certificates and CRLs",
                str(exc)[:200],
                "COLLATERAL_MALFORMED",
            ) from exc

    return validate


def _check_kind(item: CachedItem, roots: TrustRoots, now: datetime) -> None:
    if item.kind in ("tcb_info", "qe_identity"):
        _signed_json(item, roots, now)
    elif item.kind == "pck_crl":
        _crl(item, _intel_chain(item, roots, now)[:1], now)
    elif item.kind == "root_ca_crl":
        _crl(item, roots.intel, now)
    elif item.kind == "vcek":
        cert = load_certificate(item.body, field="VCEK")
        _window("VCEK certificate", cert.not_valid_before_utc, cert.not_valid_after_utc, now)
    elif item.kind == "amd_cert_chain":
        _amd_chain(item, roots, now)
    else:
        raise _fail(
            f"unknown cached item kind {item.kind!r}",
            "kind",
            " | ".join(ITEM_KINDS),
            item.kind,
            "COLLATERAL_MALFORMED",
        )
