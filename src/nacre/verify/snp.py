"""Verification of an AMD SEV-SNP ATTESTATION_REPORT against AMD KDS certificates.

The steps follow the SEV-SNP ABI specification (pub. 56860) and the VCEK/VLEK certificate
specification (pub. 57230): ARK -> ASK (or ASVK) -> VCEK (or VLEK), all RSA-PSS with SHA-384,
then the report's own ECDSA P-384 signature, then the bindings between report and certificate
(signing key kind, TCB, chip ID, product). The certificate chain is cached by content and its
validity re-checked against ``now`` on every call; the report signature is verified every time.
Debug policy, VMPL and measurements are appraisal, not verification: they are only exposed here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any, Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import SignatureAlgorithmOID

from nacre.collateral.amd import AmdCertExtensions, LeafKind, SnpCollateral
from nacre.collateral.trust import TrustRoots
from nacre.errors import MalformedEvidenceError, UsageError, VerificationError
from nacre.evidence.snp import (
    REPORT_SIZE,
    SIGNED_SIZE,
    SIGNING_KEY_NONE,
    SIGNING_KEY_VCEK,
    SIGNING_KEY_VLEK,
    SUPPORTED_VERSIONS,
    SnpReport,
    TcbVersion,
    parse_snp_report,
    product_from_cpuid,
)
from nacre.verify.cache import VerifyCache, Window, default_cache
from nacre.verify.result import ChainLink, Check, CollateralItem, VerifiedEvidence, _make

__all__ = ["check_chip_id", "check_reported_tcb", "verify_snp"]

_ECDSA_P384_SHA384: Final = ec.ECDSA(hashes.SHA384())
# AMD signs ARK, ASK/ASVK and VCEK/VLEK with RSASSA-PSS, SHA-384, MGF1-SHA-384, 48-byte salt.
_AMD_PSS: Final = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
_SIGNING_KEYS: Final[dict[int, LeafKind]] = {SIGNING_KEY_VCEK: "VCEK", SIGNING_KEY_VLEK: "VLEK"}
_KDS_HINT: Final = "fetch the certificates for this report again from AMD KDS"
_PARSED: Final = {v: Check("parse", f"report version {v} parses", True) for v in SUPPORTED_VERSIONS}
_ANCHORED: Final = Check("anchor", "the chain's root is a trusted ARK for its product", True)


def _error(
    step: str,
    message: str,
    code: str,
    field: str,
    expected: object,
    actual: object,
    hint: str | None = None,
) -> VerificationError:
    return VerificationError(
        message, code=code, field=field, expected=expected, actual=actual, hint=hint, step=step
    )


def _cn(cert: x509.Certificate) -> str:
    attrs = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else cert.subject.rfc4514_string()


def _fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


# --------------------------------------------------------------------------- the chain (cached)


@dataclass(frozen=True, slots=True)
class _Chain:
    """What a verified ARK -> intermediate -> leaf chain yields, cached by content.

    Besides the leaf key, everything per-call work would otherwise rebuild from the certificates:
    the TCB the leaf was issued for, the chain links, the collateral items and the passed checks.
    """

    leaf_key: ec.EllipticCurvePublicKey
    links: tuple[ChainLink, ...]  # leaf, intermediate, ARK
    windows: tuple[Window, ...]  # same order
    files: tuple[str, str, str]  # same order
    product: str
    leaf_tcb: bytes  # TCB_VERSION bytes the leaf was issued for, in the product's layout
    collateral: tuple[CollateralItem, ...]
    passed: Mapping[str, Check]  # checks of the steps after the chain, by step


_MAX_ANCHOR_DIGESTS: Final = 64
_ANCHOR_DIGESTS: Final[dict[int, tuple[x509.Certificate, bytes]]] = {}


def _anchor_digest(cert: x509.Certificate) -> bytes:
    """SHA-256 of a trust anchor's DER, computed once per anchor object."""
    hit = _ANCHOR_DIGESTS.get(id(cert))
    if hit is not None and hit[0] is cert:  # the entry holds the object, so its id is not reused
        return hit[1]
    digest = hashlib.sha256(cert.public_bytes(Encoding.DER)).digest()
    if len(_ANCHOR_DIGESTS) >= _MAX_ANCHOR_DIGESTS:
        _ANCHOR_DIGESTS.clear()
    _ANCHOR_DIGESTS[id(cert)] = (cert, digest)
    return digest


def _signature_problem(child: x509.Certificate, parent: x509.Certificate) -> str | None:
    """Why ``child`` is not directly issued by ``parent`` with AMD's RSA-PSS, or ``None``."""
    if child.issuer != parent.subject:
        return f"issuer is {child.issuer.rfc4514_string()}"
    if child.signature_algorithm_oid != SignatureAlgorithmOID.RSASSA_PSS or not isinstance(
        child.signature_hash_algorithm, hashes.SHA384
    ):
        return f"signature algorithm {child.signature_algorithm_oid.dotted_string}, not RSA-PSS"
    key = parent.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        return f"issuer key is {type(key).__name__}, not RSA"
    try:
        # AMD's parameters, explicitly; then the ones the certificate declares must agree.
        key.verify(child.signature, child.tbs_certificate_bytes, _AMD_PSS, hashes.SHA384())
        child.verify_directly_issued_by(parent)
    except InvalidSignature:
        return "the signature does not verify"
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        return f"the signature parameters are not AMD's RSA-PSS SHA-384 ({exc})"
    return None


def _require_ca(cert: x509.Certificate, role: str, file: str) -> None:
    try:
        ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        ca = False
    try:
        cert_sign = cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    except x509.ExtensionNotFound:
        cert_sign = True
    if not (ca and cert_sign):
        raise _error(
            "chain",
            f"the {role} '{_cn(cert)}' may not issue certificates",
            "CERT_CHAIN_INVALID",
            f"{file} basicConstraints/keyUsage",
            "CA:TRUE and keyCertSign",
            f"CA:{str(ca).upper()}, keyCertSign {'set' if cert_sign else 'missing'}",
            _KDS_HINT,
        )


def _verify_chain(coll: SnpCollateral, anchors: Sequence[x509.Certificate]) -> _Chain:
    role = coll.intermediate_role
    ark_name = coll.ark_file or "trusted ARK"
    # 3a. The ASK/ASVK is issued by a trusted ARK (RSA-PSS, SHA-384).
    anchor = None
    problem = "no trusted ARK for this product"
    for candidate in anchors:
        problem = _signature_problem(coll.intermediate, candidate) or ""
        if not problem:
            anchor = candidate
            break
    if anchor is None:
        raise _error(
            "chain",
            f"the {role} '{_cn(coll.intermediate)}' is not signed by a trusted AMD root",
            "CERT_CHAIN_INVALID",
            f"{coll.intermediate_file} signature",
            " or ".join(f"signed by {_cn(a)} with RSA-PSS SHA-384" for a in anchors) or "an ARK",
            problem,
            _KDS_HINT,
        )
    # 3b. The ARK is self-signed and a CA; the ASK/ASVK is a CA.
    problem = _signature_problem(anchor, anchor) or ""
    if problem:
        raise _error(
            "chain",
            f"the ARK '{_cn(anchor)}' is not self-signed",
            "CERT_CHAIN_INVALID",
            f"{ark_name} signature",
            "self-signed with RSA-PSS SHA-384",
            problem,
        )
    _require_ca(anchor, "ARK", ark_name)
    _require_ca(coll.intermediate, role, coll.intermediate_file)
    # 3c. The VCEK/VLEK is issued by the ASK/ASVK, is no CA, and holds a P-384 key.
    problem = _signature_problem(coll.leaf, coll.intermediate) or ""
    if problem:
        raise _error(
            "chain",
            f"the {coll.leaf_kind} is not signed by the {role} '{_cn(coll.intermediate)}'",
            "CERT_CHAIN_INVALID",
            f"{coll.leaf_file} signature",
            f"signed by {_cn(coll.intermediate)} with RSA-PSS SHA-384",
            problem,
            _KDS_HINT,
        )
    try:
        leaf_ca = coll.leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        leaf_ca = False
    if leaf_ca:
        raise _error(
            "chain",
            f"the {coll.leaf_kind} certificate is a CA",
            "CERT_CHAIN_INVALID",
            f"{coll.leaf_file} basicConstraints",
            "CA:FALSE or absent",
            "CA:TRUE",
        )
    key = coll.leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise _error(
            "chain",
            f"the {coll.leaf_kind} key is not an ECDSA P-384 key",
            "CERT_CHAIN_INVALID",
            f"{coll.leaf_file} public key",
            "EC secp384r1",
            getattr(getattr(key, "curve", None), "name", type(key).__name__),
        )
    certs = ((coll.leaf_kind, coll.leaf), (role, coll.intermediate), ("ARK", anchor))
    links = tuple(
        ChainLink(r, c.subject.rfc4514_string(), c.not_valid_before_utc, c.not_valid_after_utc)
        for r, c in certs
    )
    files = (coll.leaf_file, coll.intermediate_file, coll.ark_file or "trusted ARK")
    product = coll.product
    leaf_tcb = coll.extensions.tcb
    kind = coll.leaf_kind
    return _Chain(
        leaf_key=key,
        links=links,
        windows=tuple(Window(c.not_valid_before_utc, c.not_valid_after_utc) for _, c in certs),
        files=files,
        product=product,
        leaf_tcb=leaf_tcb.to_bytes(),
        collateral=tuple(
            CollateralItem(f"{link.role} ({file})", link.not_before, link.not_after)
            for link, file in zip(links, files, strict=True)
        ),
        passed=MappingProxyType(
            {
                "chain": Check("chain", f"ARK -> {role} -> {kind}", True, _cn(anchor)),
                "signing_key": Check("signing_key", f"report signed by the {kind}", True),
                "signature": Check("signature", "ECDSA P-384 SHA-384 report signature", True),
                "tcb": Check("tcb", f"REPORTED_TCB {leaf_tcb.hex()} matches the {kind}", True),
                "chip_id": Check("chip_id", "CHIP_ID matches the VCEK hwID", True)
                if kind == "VCEK"
                else Check("chip_id", "not applicable: a VLEK is not chip-specific", True),
                "product": Check("product", f"{product}, CPUID agrees", True),
                "product (no CPUID)": Check("product", f"{product} (no CPUID in the report)", True),
            }
        ),
    )


def _check_validity(chain: _Chain, now: datetime) -> None:
    for link, window, file in zip(chain.links, chain.windows, chain.files, strict=True):
        if window.not_before <= now <= window.not_after:
            continue
        when = (
            f"valid {window.not_before:%Y-%m-%d %H:%M:%SZ} to {window.not_after:%Y-%m-%d %H:%M:%SZ}"
        )
        if now < window.not_before:
            raise _error(
                "chain",
                f"the {link.role} certificate is not valid yet ({when})",
                "CERT_NOT_YET_VALID",
                f"{file} notBefore",
                f"not before {window.not_before.isoformat()}",
                now.isoformat(),
                "check the verification time (--at) and the machine clock",
            )
        if now > window.not_after:
            raise _error(
                "chain",
                f"the {link.role} certificate expired {window.not_after:%Y-%m-%d} ({when})",
                "CERT_EXPIRED",
                f"{file} notAfter",
                f"not after {window.not_after.isoformat()}",
                now.isoformat(),
                f"fetch a current {link.role} certificate from AMD KDS",
            )


# --------------------------------------------------------------------------- report bindings


def _in_layout(tcb: TcbVersion, extensions: AmdCertExtensions) -> TcbVersion:
    """``tcb``'s bytes read in the layout of the certificate's product."""
    layout = extensions.tcb_layout
    return tcb if tcb.layout == layout else TcbVersion.from_bytes(tcb.to_bytes(), layout)


def check_reported_tcb(
    reported: TcbVersion, extensions: AmdCertExtensions, *, leaf: str = "VCEK"
) -> None:
    """Step 6: every component of REPORTED_TCB equals the SPL the certificate was issued for.

    ``reported`` is re-read in the layout of the certificate's product (Turin carries an FMC SVN).
    """
    tcb = _in_layout(reported, extensions)
    pairs: list[tuple[str, str, int, int]] = []
    if tcb.fmc is not None:
        pairs.append(("fmc", "fmcSPL", tcb.fmc, extensions.fmc or 0))
    pairs += [
        ("bootloader", "blSPL", tcb.bootloader, extensions.bootloader),
        ("tee", "teeSPL", tcb.tee, extensions.tee),
        ("snp", "snpSPL", tcb.snp, extensions.snp),
        ("microcode", "ucodeSPL", tcb.microcode, extensions.microcode),
    ]
    if tcb.fmc is None:
        spls = (extensions.spl_4, extensions.spl_5, extensions.spl_6, extensions.spl_7)
        pairs += [
            (f"reserved byte {2 + i}", f"spl_{4 + i}", tcb.reserved[i], spl)
            for i, spl in enumerate(spls)
        ]
    wrong = [p for p in pairs if p[2] != p[3]]
    if wrong:
        name, ext, actual, expected = wrong[0]
        listing = ", ".join(f"{n} {a} (certificate {e} {x})" for n, e, a, x in wrong)
        raise _error(
            "tcb",
            f"the report's REPORTED_TCB is not the TCB the {leaf} was issued for: {listing}",
            f"{leaf}_TCB_MISMATCH",
            f"reported_tcb.{name}",
            f"{expected} ({ext} in the {leaf})",
            actual,
            f"fetch the {leaf} for REPORTED_TCB {tcb.hex()} from AMD KDS",
        )


def check_chip_id(chip_id: bytes, extensions: AmdCertExtensions) -> None:
    """Step 7: a VCEK belongs to one chip; the report's CHIP_ID must be its hwID."""
    hw_id = extensions.hw_id
    if hw_id is None:
        raise _error(
            "chip_id",
            "the VCEK names no chip (hwID missing)",
            "CHIP_ID_MISMATCH",
            "hwID",
            "64 bytes",
            "absent",
        )
    if chip_id == bytes(len(chip_id)):
        raise _error(
            "chip_id",
            "the report's CHIP_ID is masked (all zero), so it cannot be bound to the VCEK",
            "CHIP_ID_MASKED",
            "chip_id",
            f"the VCEK's hwID {hw_id.hex()}",
            "64 zero bytes (MASK_CHIP_ID is set on the host)",
            "a host with MASK_CHIP_ID must sign reports with a VLEK; nacre does not accept "
            "VCEK-signed reports without a chip ID",
        )
    # Turin's hwID is the first 8 bytes of CHIP_ID; the rest of CHIP_ID is zero there.
    if len(hw_id) == len(chip_id):
        same = hw_id == chip_id
    else:
        rest = chip_id[len(hw_id) :]
        same = chip_id[: len(hw_id)] == hw_id and rest == bytes(len(rest))
    if not same:
        raise _error(
            "chip_id",
            "the report comes from another chip than the VCEK's",
            "CHIP_ID_MISMATCH",
            "chip_id",
            hw_id.hex(),
            chip_id.hex(),
            "fetch the VCEK for this chip (its CHIP_ID) from AMD KDS",
        )


def _anchors(coll: SnpCollateral, trust: TrustRoots) -> list[x509.Certificate]:
    candidates = trust.amd_anchor_for(coll.product)
    if not candidates:
        raise _error(
            "anchor",
            "no AMD root key is trusted",
            "CERT_CHAIN_INVALID",
            "trust roots",
            "an ARK",
            "none",
            "pass --trust-root FILE with the ARK",
        )
    if coll.ark is None:
        return candidates
    for candidate in candidates:
        if _anchor_digest(candidate) == coll.ark_sha256:
            return [candidate]
    raise _error(
        "anchor",
        f"the bundle's ARK '{_cn(coll.ark)}' is not a trusted root for {coll.product}",
        "CERT_CHAIN_INVALID",
        coll.ark_file or "ark.pem",
        " or ".join(f"{_cn(c)} (sha256 {_fingerprint(c)[:16]}...)" for c in candidates),
        f"{_cn(coll.ark)} (sha256 {_fingerprint(coll.ark)[:16]}...)",
        "a bundle cannot make its own root trusted; pass --trust-root FILE for a private PKI",
    )


def _claims(
    report: SnpReport, coll: SnpCollateral, reported: TcbVersion, product: str
) -> dict[str, Any]:
    return {
        "measurement": report.measurement.hex(),
        "host_data": report.host_data.hex(),
        "report_data": report.report_data.hex(),
        "id_key_digest": report.id_key_digest.hex(),
        "policy": hex(report.policy),
        "debug": report.debug_allowed,
        "vmpl": report.vmpl,
        "chip_id": report.chip_id.hex(),
        "reported_tcb": reported.hex(),
        "current_tcb": report.current_tcb.hex(),
        "family_id": report.family_id.hex(),
        "image_id": report.image_id.hex(),
        "guest_svn": report.guest_svn,
        "signing_key": coll.leaf_kind,
        "product": product,
        "reported_tcb_decoded": reported.to_dict(),
    }


# --------------------------------------------------------------------------- the verifier


def verify_snp(
    report: bytes,
    collateral: SnpCollateral,
    *,
    now: datetime,
    trust: TrustRoots,
    cache: VerifyCache | None = None,
) -> VerifiedEvidence:
    """Verify one SEV-SNP report (raw ATTESTATION_REPORT bytes) against AMD certificates.

    Returns :class:`VerifiedEvidence` or raises :class:`VerificationError`, whose ``.checks`` hold
    the steps that passed, then the one that failed.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise UsageError(
            "the verification time must carry a time zone",
            field="now",
            expected="an aware datetime (e.g. datetime.now(UTC))",
            actual=now.isoformat(),
        )
    checks: list[Check] = []
    try:
        return _verify(report, collateral, now, trust, cache, checks)
    except VerificationError as exc:
        exc.checks = (*checks, Check(exc.step or "parse", exc.message, False, str(exc)))
        raise


def _verify(
    report: bytes,
    coll: SnpCollateral,
    now: datetime,
    trust: TrustRoots,
    cache: VerifyCache | None,
    checks: list[Check],
) -> VerifiedEvidence:
    # 1. Parse the ATTESTATION_REPORT (structure, version 2..5, signature algorithm ECDSA P-384).
    parsed = parse_snp_report(report)
    checks.append(_PARSED[parsed.version])

    # 2. Choose the anchor: the trusted ARK for the leaf's product. A bundle's own ark.pem is only
    #    compared with it: a bundle cannot make itself trusted.
    anchors = _anchors(coll, trust)
    checks.append(_ANCHORED)

    # 3. ARK self-signed -> ASK/ASVK -> VCEK/VLEK, RSA-PSS SHA-384, CA flags, P-384 leaf key.
    #    Cached by content (certificates, file names, anchors). The cache serves an entry only
    #    while `now` is inside every certificate's validity; otherwise the chain is verified again
    #    and its validity checked at `now`, failing with the precise certificate and dates.
    key = coll.chain_key
    if coll.ark is None:
        key += b"".join(_anchor_digest(a) for a in anchors)

    def compute() -> tuple[_Chain, tuple[Window, ...]]:
        verified = _verify_chain(coll, anchors)
        _check_validity(verified, now)
        return verified, verified.windows

    chain = (default_cache() if cache is None else cache).get_or_compute(key, now, compute)
    passed = chain.passed
    checks.append(passed["chain"])

    # 4. SIGNING_KEY in the report names the kind of key the leaf certificate holds.
    signer = parsed.signing_key
    if signer == SIGNING_KEY_NONE:
        raise _error(
            "signing_key",
            "the report is not signed (SIGNING_KEY is 'none')",
            "REPORT_SIGNATURE_INVALID",
            "signing_key",
            "0 (VCEK) or 1 (VLEK)",
            f"{signer} (none)",
        )
    if signer not in _SIGNING_KEYS:
        raise MalformedEvidenceError(
            "the report's SIGNING_KEY is a reserved value",
            code="REPORT_MALFORMED",
            field="signing_key",
            expected="0 (VCEK) or 1 (VLEK)",
            actual=signer,
            step="signing_key",
        )
    if _SIGNING_KEYS[signer] != coll.leaf_kind:
        raise _error(
            "signing_key",
            f"the report is signed by a {_SIGNING_KEYS[signer]}, the collateral holds a "
            f"{coll.leaf_kind}",
            "SIGNING_KEY_MISMATCH",
            "signing_key",
            f"{_SIGNING_KEYS[signer]} certificate ({_SIGNING_KEYS[signer].lower()}.der)",
            f"{coll.leaf_kind} certificate ({coll.leaf_file})",
            f"put the {_SIGNING_KEYS[signer]} for this platform in the collateral",
        )
    checks.append(passed["signing_key"])

    # 5. The report signature: ECDSA P-384 SHA-384 over bytes 0x000..0x29F, r and s little-endian.
    #    Never cached: every report carries a fresh nonce.
    if parsed.mask_chip_key:
        raise _error(
            "signature",
            "the firmware did not sign this report (MASK_CHIP_KEY is set)",
            "REPORT_SIGNATURE_INVALID",
            "mask_chip_key",
            "0",
            "1",
            "disable MASK_CHIP_KEY on the host to get signed reports",
        )
    reserved = parsed.signature_reserved
    if reserved != bytes(len(reserved)):
        # Not covered by the signature: anything but zeros would make the evidence malleable.
        start = REPORT_SIZE - len(reserved)
        first = start + next(i for i, b in enumerate(reserved) if b)
        raise MalformedEvidenceError(
            "the reserved bytes after the report signature are not zero",
            code="REPORT_MALFORMED",
            field="signature_reserved",
            expected=f"zero bytes at {start:#x}-{REPORT_SIZE - 1:#x}",
            actual=f"non-zero byte at {first:#x}",
            step="signature",
        )
    r, s = parsed.signature_rs
    try:
        chain.leaf_key.verify(
            encode_dss_signature(r, s), bytes(report[:SIGNED_SIZE]), _ECDSA_P384_SHA384
        )
    except InvalidSignature:
        raise _error(
            "signature",
            f"the report signature does not verify with the {coll.leaf_kind} key",
            "REPORT_SIGNATURE_INVALID",
            "signature",
            f"ECDSA P-384 SHA-384 over bytes 0x000-0x29F by {coll.leaf_file}",
            "a signature that does not verify",
            "the report was modified, or the certificate is for another platform or TCB",
        ) from None
    checks.append(passed["signature"])

    # 6. REPORTED_TCB equals the TCB the leaf certificate was issued for (read in the layout of
    #    the leaf's product: Turin and later carry an FMC SVN).
    reported = _in_layout(parsed.reported_tcb, coll.extensions)
    if reported.to_bytes() != chain.leaf_tcb:
        check_reported_tcb(reported, coll.extensions, leaf=coll.leaf_kind)
    checks.append(passed["tcb"])

    # 7. CHIP_ID equals the VCEK's hwID (a VLEK is not chip-specific; masked CHIP_ID fails closed).
    if coll.leaf_kind == "VCEK":
        check_chip_id(parsed.chip_id, coll.extensions)
    checks.append(passed["chip_id"])

    # 8. Product: from the certificate's productName; for v3+ the CPUID fields must agree.
    product = chain.product
    family, model = parsed.cpuid_fam_id, parsed.cpuid_mod_id
    if family is not None and model is not None and (family or model or parsed.cpuid_step):
        cpu_product = product_from_cpuid(family, model)
        if cpu_product != product:
            raise _error(
                "product",
                f"the report comes from a {cpu_product or 'unknown'} CPU, the {coll.leaf_kind} "
                f"is for {coll.extensions.product_name}",
                "PRODUCT_MISMATCH",
                "cpuid_fam_id/cpuid_mod_id",
                f"a {product} CPU",
                f"family {family:#x} model {model:#x} ({cpu_product or 'unknown product'})",
            )
        checks.append(passed["product"])
    else:
        checks.append(passed["product (no CPUID)"])

    return _make(
        tee="snp",
        version=parsed.version,
        tcb_status=None,
        advisory_ids=(),
        claims=_claims(parsed, coll, reported, product),
        verified_at=now,
        sim=trust.sim,
        checks=tuple(checks),
        chain=chain.links,
        collateral=chain.collateral,
        evidence=parsed,
    )
