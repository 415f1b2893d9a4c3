"""RA-TLS certificates: a self-signed X.509 certificate whose TEE evidence binds its public key.

Two carriers, as ``DESIGN.md`` §3 fixes them:

* **TCG DICE tagged evidence**, extension ``2.23.133.5.4.9`` (CCC "Interoperable RA-TLS", as in
  Gramine >= 1.8 and rats-tls). The extension value is the CBOR item
  ``60000([bstr quote, bstr claims-buffer])``: tag 60000 is IANA's "Intel TEE quote" tag (SGX and
  TDX ECDSA quotes; 60001 is the Intel TEE *report*, 60002 the legacy EREPORT report). The claims
  buffer is the encoding of ``{"pubkey-hash": bstr(encoding of [hash-alg-id, hash])}`` (a CoSWID/CoRIM
  ``hash-entry``; alg ids from IANA "Named Information": sha-256 = 1, sha-384 = 7, sha-512 = 8) and
  the quote's report data is ``SHA-256(claims-buffer) || 32 zero bytes``. So the key is bound one
  step removed: quote -> claims buffer -> hash of the certificate's SubjectPublicKeyInfo (DER).
* **Legacy SGX quote**, extension ``1.2.840.113741.1337.6`` (Intel/Gramine RA-TLS): the raw quote,
  whose report data is ``SHA-256(SubjectPublicKeyInfo DER) || 32 zero bytes``. Gramine writes this
  OID with a historical encoding slip that reads as ``0.6.9.42.840.113741.1337.6``; both are read.

SGX certificates carry both (two quotes: the report data differ); TDX certificates carry the DICE
extension only. Both extensions are non-critical: DICE says "critical", but OpenSSL and mbedTLS
refuse unknown critical extensions in a handshake. Verification reads the DICE extension first and
falls back to the legacy one, exactly as Gramine's verifier does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final, Literal, Protocol, TypeAlias, runtime_checkable

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from nacre.appraisal.baseline import BaselinePolicy, appraise_baseline
from nacre.collateral.bundle import CollateralBundle
from nacre.collateral.trust import TrustRoots
from nacre.errors import NacreError, UsageError, VerificationError
from nacre.evidence import parse_quote
from nacre.limits import MAX_EVIDENCE_BYTES
from nacre.ratls import _cbor
from nacre.verify import VerifyCache
from nacre.verify import verify as verify_evidence
from nacre.verify.result import VerifiedEvidence

__all__ = [
    "CBOR_TAG_INTEL_TEE_QUOTE",
    "CERT_BACKDATE",
    "GRAMINE_LEGACY_QUOTE_OID",
    "HASH_ALG_IDS",
    "LEGACY_SGX_QUOTE_OID",
    "MAX_RATLS_CERT_BYTES",
    "TCG_DICE_TAGGED_EVIDENCE_OID",
    "CollateralSource",
    "PrivateKey",
    "Quoter",
    "RatlsError",
    "RatlsEvidence",
    "claims_buffer_for",
    "create_ratls_certificate",
    "extract_evidence",
    "load_certificate",
    "spki_der",
    "verify_ratls_certificate",
]

#: TCG DICE ``tcg-dice-conceptual-message-wrapper`` / "tagged evidence".
TCG_DICE_TAGGED_EVIDENCE_OID: Final = x509.ObjectIdentifier("2.23.133.5.4.9")
#: Intel's RA-TLS raw SGX quote extension (Gramine, rats-tls, Intel SGX SDK).
LEGACY_SGX_QUOTE_OID: Final = x509.ObjectIdentifier("1.2.840.113741.1337.6")
#: What Gramine actually writes for the OID above (its C constant includes the DER tag and length).
GRAMINE_LEGACY_QUOTE_OID: Final = x509.ObjectIdentifier("0.6.9.42.840.113741.1337.6")
#: IANA CBOR tag 60000: "attestation evidence data with an Intel TEE quote" (SGX or TDX, ECDSA).
CBOR_TAG_INTEL_TEE_QUOTE: Final = 60000
#: IANA "Named Information Hash Algorithm" ids a verifier must accept (interoperable RA-TLS).
HASH_ALG_IDS: Final = {1: "sha256", 7: "sha384", 8: "sha512"}
#: A DER certificate larger than this is refused before parsing (two quotes and change fit in 32 KiB).
MAX_RATLS_CERT_BYTES: Final = 2 * MAX_EVIDENCE_BYTES + 16 * 1024
#: ``notBefore`` is set this far before the creation time, so peers with slightly slow clocks accept it.
CERT_BACKDATE: Final = timedelta(minutes=5)
#: Report data is 64 bytes; RA-TLS puts a SHA-256 in the first 32 and zeroes the rest.
_ZERO_PAD: Final = bytes(32)
_CLAIM_PUBKEY_HASH: Final = "pubkey-hash"

PrivateKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
#: Collateral for the peer's evidence: a bundle, or a function from evidence bytes to its bundle.
CollateralSource: TypeAlias = CollateralBundle | Callable[[bytes], CollateralBundle]


class RatlsError(VerificationError):
    """An RA-TLS certificate or handshake is refused; ``code`` says why (``RATLS_...``)."""

    default_code = "RATLS_FAILED"


@runtime_checkable
class Quoter(Protocol):
    """What :func:`create_ratls_certificate` needs of a TEE backend (``nacre.tee.TeeBackend`` fits)."""

    @property
    def tee(self) -> str: ...

    def quote(self, report_data: bytes) -> bytes: ...


@dataclass(frozen=True, slots=True)
class RatlsEvidence:
    """Evidence found in a certificate, before verification."""

    carrier: Literal["dice", "legacy"]
    quote: bytes
    #: DICE only: the serialized claims map the quote's report data hashes.
    claims_buffer: bytes | None = field(default=None, repr=False)
    #: DICE only: (hash algorithm name, hash of the SubjectPublicKeyInfo) from ``pubkey-hash``.
    pubkey_hash: tuple[str, bytes] | None = None
    #: DICE only: the optional ``nonce`` claim.
    nonce: bytes | None = None


def spki_der(cert_or_key: x509.Certificate | PrivateKey) -> bytes:
    """The DER SubjectPublicKeyInfo (algorithm and key) of a certificate or a private key."""
    public = cert_or_key.public_key()
    return public.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _report_data(digest32: bytes) -> bytes:
    return digest32 + _ZERO_PAD


def claims_buffer_for(spki: bytes) -> bytes:
    """``{"pubkey-hash": bstr([1, SHA-256(spki)])}``, as the interoperable RA-TLS spec encodes it."""
    hash_entry = _cbor.encode([1, hashlib.sha256(spki).digest()])
    return _cbor.encode({_CLAIM_PUBKEY_HASH: hash_entry})


# --- creation -----------------------------------------------------------------------------------


def _signing_hash(key: PrivateKey) -> hashes.SHA256 | hashes.SHA384 | None:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return hashes.SHA384() if key.curve.key_size >= 384 else hashes.SHA256()
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise UsageError(
                "RSA keys for RA-TLS must have at least 2048 bits",
                field="key",
                expected=">= 2048 bits",
                actual=f"{key.key_size} bits",
            )
        return hashes.SHA256()
    raise UsageError(
        "unsupported RA-TLS key type",
        field="key",
        expected="EC (P-256/P-384/P-521), RSA >= 2048 or Ed25519",
        actual=type(key).__name__,
    )


def _take_quote(quoter: Callable[[bytes], bytes], report_data: bytes, what: str) -> bytes:
    quote = bytes(quoter(report_data))
    if len(quote) > MAX_EVIDENCE_BYTES:
        raise RatlsError(
            f"the TEE returned {what} larger than any quote",
            code="RATLS_QUOTE_INVALID",
            field=what,
            expected=f"<= {MAX_EVIDENCE_BYTES} bytes",
            actual=f"{len(quote)} bytes",
        )
    parsed = parse_quote(quote)
    if parsed.body.report_data != report_data:
        raise RatlsError(
            f"the TEE returned {what} that does not carry the requested report data",
            code="RATLS_QUOTE_INVALID",
            field=f"{what}.report_data",
            expected=report_data.hex(),
            actual=parsed.body.report_data.hex(),
        )
    return quote


def create_ratls_certificate(
    quoter: Quoter | Callable[[bytes], bytes],
    *,
    key: PrivateKey | None = None,
    subject_cn: str = "nacre RA-TLS",
    validity: timedelta = timedelta(hours=24),
    tee: str | None = None,
    now: datetime | None = None,
) -> tuple[PrivateKey, x509.Certificate]:
    """A key (ECDSA P-256 unless given) and a self-signed certificate whose evidence binds it.

    ``quoter`` is a TEE backend (its ``quote`` and ``tee`` are used) or a function from 64 bytes of
    report data to a DCAP quote, then ``tee`` (``"sgx"`` or ``"tdx"``) is required. The certificate
    is valid from ``now - CERT_BACKDATE`` (clock skew) to ``now + validity``; ``now`` defaults to
    the current time.
    """
    if isinstance(quoter, Quoter):
        quote_fn: Callable[[bytes], bytes] = quoter.quote
        tee = tee or quoter.tee
    else:
        quote_fn = quoter
    if tee not in ("sgx", "tdx"):
        raise UsageError(
            "RA-TLS certificates carry SGX or TDX quotes",
            field="tee",
            expected="sgx or tdx",
            actual=tee,
            hint="pass tee= with a plain quote function; SEV-SNP has no registered evidence tag",
        )
    if validity <= timedelta(0):
        raise UsageError(
            "validity must be positive", field="validity", expected="> 0", actual=validity
        )
    start = now or datetime.now(UTC)
    if start.tzinfo is None:
        raise UsageError(
            "now must carry a time zone", field="now", expected="aware datetime", actual=start
        )
    private_key: PrivateKey = key or ec.generate_private_key(ec.SECP256R1())
    sig_hash = _signing_hash(private_key)
    spki = spki_der(private_key)

    # 1. DICE tagged evidence: the quote binds the claims buffer, which holds the key's hash.
    claims = claims_buffer_for(spki)
    dice_quote = _take_quote(quote_fn, _report_data(hashlib.sha256(claims).digest()), "quote")
    if parse_quote(dice_quote).tee != tee:
        raise UsageError(
            "the quote is not from the TEE named",
            field="tee",
            expected=tee,
            actual=parse_quote(dice_quote).tee,
        )
    tagged = _cbor.encode(_cbor.Tag(CBOR_TAG_INTEL_TEE_QUOTE, [dice_quote, claims]))

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - CERT_BACKDATE)
        .not_valid_after(start + validity)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=isinstance(private_key, rsa.RSAPrivateKey),
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(private_key.public_key()), critical=False
        )
        .add_extension(
            x509.UnrecognizedExtension(TCG_DICE_TAGGED_EVIDENCE_OID, tagged), critical=False
        )
    )
    # 2. SGX also gets the legacy extension: a second quote whose report data is the key's hash.
    if tee == "sgx":
        legacy = _take_quote(quote_fn, _report_data(hashlib.sha256(spki).digest()), "legacy quote")
        builder = builder.add_extension(
            x509.UnrecognizedExtension(LEGACY_SGX_QUOTE_OID, legacy), critical=False
        )
    cert = builder.sign(private_key, sig_hash)
    return private_key, cert


# --- verification -------------------------------------------------------------------------------


def _malformed(
    message: str, *, field: str, expected: object = None, actual: object = None
) -> RatlsError:
    return RatlsError(
        message, code="RATLS_EVIDENCE_MALFORMED", field=field, expected=expected, actual=actual
    )


def load_certificate(cert: x509.Certificate | bytes) -> x509.Certificate:
    """A peer certificate from DER (bounded by :data:`MAX_RATLS_CERT_BYTES`), fully decoded."""
    if isinstance(cert, x509.Certificate):
        return cert
    if len(cert) > MAX_RATLS_CERT_BYTES:
        raise RatlsError(
            "the peer certificate is too large",
            code="RATLS_CERT_MALFORMED",
            field="certificate",
            expected=f"<= {MAX_RATLS_CERT_BYTES} bytes",
            actual=f"{len(cert)} bytes",
        )
    try:
        loaded = x509.load_der_x509_certificate(bytes(cert))
        _ = loaded.subject, loaded.issuer, loaded.extensions, loaded.public_key()
    except (ValueError, UnsupportedAlgorithm, x509.InvalidVersion) as exc:
        raise RatlsError(
            f"the peer certificate cannot be parsed: {exc}",
            code="RATLS_CERT_MALFORMED",
            field="certificate",
            expected="one DER X.509 certificate",
        ) from exc
    return loaded


def _extension(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> bytes | None:
    try:
        ext = cert.extensions.get_extension_for_oid(oid)
    except x509.ExtensionNotFound:
        return None
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension):
        raise _malformed("evidence extension has an unexpected type", field=oid.dotted_string)
    return value.value


def _parse_dice(value: bytes) -> RatlsEvidence:
    field_ = "tcg-dice-tagged-evidence"
    item = _cbor.decode(value, what=field_)
    if not isinstance(item, _cbor.Tag) or item.number != CBOR_TAG_INTEL_TEE_QUOTE:
        raise _malformed(
            "tagged evidence is not an Intel TEE quote",
            field=f"{field_} CBOR tag",
            expected=f"{CBOR_TAG_INTEL_TEE_QUOTE} (Intel TEE quote)",
            actual=item.number if isinstance(item, _cbor.Tag) else type(item).__name__,
        )
    body = item.value
    if not (isinstance(body, list) and len(body) == 2):
        raise _malformed(
            "tagged evidence is not [quote, claims-buffer]",
            field=field_,
            expected="array of two byte strings",
            actual=f"array of {len(body)}" if isinstance(body, list) else type(body).__name__,
        )
    quote, claims_buffer = body
    if not (isinstance(quote, bytes) and isinstance(claims_buffer, bytes)):
        raise _malformed(
            "tagged evidence is not [quote, claims-buffer]",
            field=field_,
            expected="array of two byte strings",
            actual=f"[{type(quote).__name__}, {type(claims_buffer).__name__}]",
        )
    claims = _cbor.decode(claims_buffer, what="claims-buffer")
    if not isinstance(claims, dict) or not claims:
        raise _malformed("claims-buffer is not a non-empty map", field="claims-buffer")
    entry = claims.get(_CLAIM_PUBKEY_HASH)
    if not isinstance(entry, bytes):
        raise _malformed(
            "the evidence has no pubkey-hash claim",
            field="claims-buffer.pubkey-hash",
            expected="bstr-wrapped [hash-alg-id, hash]",
            actual="missing" if entry is None else type(entry).__name__,
        )
    hash_entry = _cbor.decode(entry, what="pubkey-hash")
    if not (isinstance(hash_entry, list) and len(hash_entry) == 2):
        raise _malformed(
            "pubkey-hash is not a hash-entry",
            field="claims-buffer.pubkey-hash",
            expected="[uint hash-alg-id, bstr hash]",
        )
    alg_id, digest = hash_entry
    if not (isinstance(alg_id, int) and isinstance(digest, bytes)):
        raise _malformed(
            "pubkey-hash is not a hash-entry",
            field="claims-buffer.pubkey-hash",
            expected="[uint hash-alg-id, bstr hash]",
            actual=f"[{type(alg_id).__name__}, {type(digest).__name__}]",
        )
    alg = HASH_ALG_IDS.get(alg_id)
    if alg is None or len(digest) != hashlib.new(alg).digest_size:
        raise _malformed(
            "pubkey-hash uses an unsupported hash algorithm or length",
            field="claims-buffer.pubkey-hash",
            expected="sha-256 (1, 32 bytes), sha-384 (7, 48) or sha-512 (8, 64)",
            actual=f"alg {alg_id}, {len(digest)} bytes",
        )
    nonce = claims.get("nonce")
    if nonce is not None and not isinstance(nonce, bytes):
        raise _malformed("the nonce claim is not a byte string", field="claims-buffer.nonce")
    return RatlsEvidence("dice", quote, claims_buffer, (alg, digest), nonce)


def extract_evidence(cert: x509.Certificate | bytes) -> RatlsEvidence:
    """The evidence a certificate carries: the DICE extension if present, else the legacy one."""
    c = load_certificate(cert)
    dice = _extension(c, TCG_DICE_TAGGED_EVIDENCE_OID)
    if dice is not None:
        return _parse_dice(dice)
    for oid in (LEGACY_SGX_QUOTE_OID, GRAMINE_LEGACY_QUOTE_OID):
        legacy = _extension(c, oid)
        if legacy is not None:
            return RatlsEvidence("legacy", legacy)
    raise RatlsError(
        "the certificate carries no attestation evidence",
        code="RATLS_NO_EVIDENCE",
        field="certificate extensions",
        expected=f"{TCG_DICE_TAGGED_EVIDENCE_OID.dotted_string} or {LEGACY_SGX_QUOTE_OID.dotted_string}",
        actual=", ".join(e.oid.dotted_string for e in c.extensions) or "none",
        hint="the peer is not an RA-TLS endpoint, or its TEE could not quote",
    )


def _check_self_signed(cert: x509.Certificate) -> None:
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm) as exc:
        raise RatlsError(
            "the certificate is not validly self-signed",
            code="RATLS_CERT_SIGNATURE",
            field="certificate signature",
            expected="issuer == subject, signed by the certified key",
            actual=f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
        ) from exc


def _check_validity(cert: x509.Certificate, now: datetime) -> None:
    nb, na = cert.not_valid_before_utc, cert.not_valid_after_utc
    window = f"{nb.isoformat()} .. {na.isoformat()}"
    if now > na:
        raise RatlsError(
            "the RA-TLS certificate has expired",
            code="RATLS_CERT_EXPIRED",
            field="certificate validity",
            expected=window,
            actual=now.isoformat(),
            hint="the peer must create a fresh certificate (and quote)",
        )
    if now < nb:
        raise RatlsError(
            "the RA-TLS certificate is not yet valid",
            code="RATLS_CERT_NOT_YET_VALID",
            field="certificate validity",
            expected=window,
            actual=now.isoformat(),
        )


def _check_binding(ev: RatlsEvidence, verified: VerifiedEvidence, spki: bytes) -> None:
    report_data = bytes.fromhex(str(verified.claims["report_data"]))
    if ev.carrier == "legacy":
        expected = _report_data(hashlib.sha256(spki).digest())
        if report_data != expected:
            raise RatlsError(
                "the quote does not bind this certificate's public key",
                code="RATLS_KEY_MISMATCH",
                field="report_data (SHA-256 of SubjectPublicKeyInfo || 32 zero bytes)",
                expected=expected.hex(),
                actual=report_data.hex(),
                hint="the evidence was made for another key: a swapped or forged certificate",
            )
        return
    assert ev.claims_buffer is not None
    assert ev.pubkey_hash is not None
    expected = _report_data(hashlib.sha256(ev.claims_buffer).digest())
    if report_data != expected:
        raise RatlsError(
            "the quote does not bind the certificate's evidence claims",
            code="RATLS_CLAIMS_MISMATCH",
            field="report_data (SHA-256 of claims-buffer || 32 zero bytes)",
            expected=expected.hex(),
            actual=report_data.hex(),
            hint="the claims were altered after quoting",
        )
    alg, claimed = ev.pubkey_hash
    actual_hash = hashlib.new(alg, spki).digest()
    if claimed != actual_hash:
        raise RatlsError(
            "the evidence binds another public key than this certificate's",
            code="RATLS_KEY_MISMATCH",
            field=f"pubkey-hash ({alg} of SubjectPublicKeyInfo)",
            expected=actual_hash.hex(),
            actual=claimed.hex(),
            hint="the evidence was made for another key: a swapped or forged certificate",
        )


def verify_ratls_certificate(
    cert: x509.Certificate | bytes,
    *,
    collateral: CollateralSource,
    now: datetime,
    trust: TrustRoots | None = None,
    policy: Callable[[VerifiedEvidence], None] | None = None,
    baseline: BaselinePolicy | None = None,
    cache: VerifyCache | None = None,
) -> VerifiedEvidence:
    """Verify an RA-TLS certificate (DER or loaded) at ``now``; return the verified evidence.

    Steps: (1) parse; (2) the certificate is self-signed by its own key; (3) ``now`` is inside its
    validity window; (4) extract the evidence (DICE first, then legacy); (5) verify the quote with
    :func:`nacre.verify.verify` (signatures, chains, CRLs, TCB, QE identity against ``collateral``
    and ``trust``); (6) the quote's report data binds this certificate's SubjectPublicKeyInfo;
    (7) the baseline appraisal (``baseline`` adjusts it); (8) ``policy``, which raises a nacre error
    to refuse (e.g. an unknown MRENCLAVE). Every refusal is a :class:`nacre.errors.NacreError`.
    """
    if now.tzinfo is None:
        raise UsageError(
            "verification time must carry a time zone",
            field="now",
            expected="an aware datetime",
            actual=now.isoformat(),
        )
    c = load_certificate(cert)  # 1
    _check_self_signed(c)  # 2
    _check_validity(c, now)  # 3
    ev = extract_evidence(c)  # 4
    bundle = collateral if isinstance(collateral, CollateralBundle) else collateral(ev.quote)
    verified = verify_evidence(ev.quote, collateral=bundle, now=now, trust=trust, cache=cache)  # 5
    allowed = ("sgx",) if ev.carrier == "legacy" else ("sgx", "tdx")
    if verified.tee not in allowed:
        raise RatlsError(
            "the evidence is not of a kind this certificate extension carries",
            code="RATLS_UNSUPPORTED_TEE",
            field=f"{ev.carrier} evidence",
            expected=" or ".join(allowed),
            actual=verified.tee,
        )
    _check_binding(ev, verified, spki_der(c))  # 6
    appraise_baseline(verified, baseline)  # 7
    if policy is not None:  # 8
        try:
            policy(verified)
        except NacreError:
            raise
        except Exception as exc:
            raise RatlsError(
                f"the RA-TLS policy callback failed: {type(exc).__name__}: {exc}",
                code="RATLS_POLICY_ERROR",
                field="policy",
                hint="a policy refuses by raising a nacre error (e.g. PolicyViolationError)",
            ) from exc
    return verified
