"""RA-TLS: certificates that bind keys to evidence, their verification, and attested connections.

Everything runs on a simulated platform (``nacre.sim``) through the production verification path;
servers and clients talk over real sockets on 127.0.0.1 in threads.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from nacre.appraisal.baseline import BaselinePolicy
from nacre.collateral.bundle import CollateralBundle
from nacre.errors import NacreError, PolicyViolationError, UsageError, VerificationError
from nacre.evidence import parse_quote
from nacre.ratls import (
    CBOR_TAG_INTEL_TEE_QUOTE,
    CERT_BACKDATE,
    CLIENT_AUTH_MAGIC,
    GRAMINE_LEGACY_QUOTE_OID,
    LEGACY_SGX_QUOTE_OID,
    TCG_DICE_TAGGED_EVIDENCE_OID,
    RatlsContext,
    RatlsError,
    RatlsSocket,
    RatlsVerifier,
    _cbor,
    accept_verified,
    claims_buffer_for,
    client_context,
    create_ratls_certificate,
    extract_evidence,
    server_context,
    spki_der,
    verify_ratls_certificate,
    wrap_client,
)
from nacre.ratls._tls import _proof_message
from nacre.sim import Manifest, SimPlatform
from nacre.tee.sim import SimBackend
from nacre.verify.result import VerifiedEvidence

NOW = datetime.now(UTC).replace(microsecond=0)


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> SimPlatform:
    return SimPlatform.init(tmp_path_factory.mktemp("sim"), now=NOW)


@pytest.fixture(scope="module")
def bundles(platform: SimPlatform) -> dict[str, CollateralBundle]:
    return {tee: platform.bundle(tee, now=NOW) for tee in ("sgx", "tdx")}


def _collateral(bundles: dict[str, CollateralBundle]) -> Callable[[bytes], CollateralBundle]:
    """Collateral looked up per quote, as a PCS-backed fetcher would."""
    return lambda quote: bundles[parse_quote(quote).tee]


def _verify(
    cert: x509.Certificate | bytes,
    platform: SimPlatform,
    bundles: dict[str, CollateralBundle],
    *,
    now: datetime = NOW,
    policy: Callable[[VerifiedEvidence], None] | None = None,
) -> VerifiedEvidence:
    return verify_ratls_certificate(
        cert, collateral=_collateral(bundles), now=now, trust=platform.trust_roots(), policy=policy
    )


def _error(fn: Callable[[], object]) -> NacreError:
    with pytest.raises(NacreError) as info:
        fn()
    return info.value


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _self_signed(
    key: ec.EllipticCurvePrivateKey,
    extensions: list[x509.Extension[x509.ExtensionType]],
    *,
    signer: ec.EllipticCurvePrivateKey | None = None,
) -> x509.Certificate:
    b = (
        x509.CertificateBuilder()
        .subject_name(_name("forged"))
        .issuer_name(_name("forged"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(minutes=1))
        .not_valid_after(NOW + timedelta(hours=1))
    )
    for ext in extensions:
        b = b.add_extension(ext.value, critical=ext.critical)
    return b.sign(signer or key, hashes.SHA256())


def _ext(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> x509.Extension[x509.ExtensionType]:
    return cert.extensions.get_extension_for_oid(oid)


def _raw(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> bytes:
    value = _ext(cert, oid).value
    assert isinstance(value, x509.UnrecognizedExtension)
    return value.value


@pytest.fixture(scope="module")
def sgx_cert(platform: SimPlatform) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key, cert = create_ratls_certificate(SimBackend(platform, tee="sgx"), now=NOW)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key, cert


# --- certificate format -------------------------------------------------------------------------


def test_sgx_certificate_carries_dice_and_legacy_evidence(
    sgx_cert: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
) -> None:
    key, cert = sgx_cert
    spki = spki_der(key)
    assert cert.subject == cert.issuer == _name("nacre RA-TLS")
    assert cert.not_valid_after_utc == NOW + timedelta(hours=24)
    assert cert.not_valid_before_utc == NOW - CERT_BACKDATE
    assert isinstance(key.curve, ec.SECP256R1)
    # DICE: 60000([quote, claims]); the quote's report data is SHA-256(claims) || 0^32.
    dice = _ext(cert, TCG_DICE_TAGGED_EVIDENCE_OID)
    assert not dice.critical
    tagged = _cbor.decode(_raw(cert, TCG_DICE_TAGGED_EVIDENCE_OID))
    assert isinstance(tagged, _cbor.Tag)
    assert tagged.number == CBOR_TAG_INTEL_TEE_QUOTE == 60000
    assert isinstance(tagged.value, list)
    quote, claims = tagged.value
    assert isinstance(quote, bytes)
    assert isinstance(claims, bytes)
    assert claims == claims_buffer_for(spki)
    hash_entry = _cbor.encode([1, hashlib.sha256(spki).digest()])
    assert _cbor.decode(claims) == {"pubkey-hash": hash_entry}
    assert parse_quote(quote).body.report_data == hashlib.sha256(claims).digest() + bytes(32)
    # Legacy: the raw quote, report data SHA-256(SPKI) || 0^32.
    legacy = _ext(cert, LEGACY_SGX_QUOTE_OID)
    assert not legacy.critical
    legacy_quote = _raw(cert, LEGACY_SGX_QUOTE_OID)
    assert parse_quote(legacy_quote).body.report_data == hashlib.sha256(spki).digest() + bytes(32)
    assert extract_evidence(cert).carrier == "dice"


def test_tdx_certificate_has_dice_evidence_only(
    platform: SimPlatform, bundles: dict[str, CollateralBundle]
) -> None:
    _, cert = create_ratls_certificate(SimBackend(platform, tee="tdx"), now=NOW)
    with pytest.raises(x509.ExtensionNotFound):
        _ext(cert, LEGACY_SGX_QUOTE_OID)
    verified = _verify(cert, platform, bundles)
    assert verified.tee == "tdx"
    assert verified.sim is True


def test_plain_quote_function_needs_the_tee(platform: SimPlatform) -> None:
    backend = SimBackend(platform, tee="sgx")
    err = _error(lambda: create_ratls_certificate(backend.quote))
    assert isinstance(err, UsageError)
    assert err.field == "tee"
    # With tee given, a plain function works; a wrong tee is caught from the quote itself.
    _, cert = create_ratls_certificate(backend.quote, tee="sgx", now=NOW)
    assert extract_evidence(cert).carrier == "dice"
    err = _error(lambda: create_ratls_certificate(backend.quote, tee="tdx", now=NOW))
    assert err.field == "tee"
    assert (err.expected, err.actual) == ("tdx", "sgx")


def test_quoter_that_ignores_report_data_is_caught(platform: SimPlatform) -> None:
    backend = SimBackend(platform, tee="sgx")
    err = _error(lambda: create_ratls_certificate(lambda _rd: backend.quote(bytes(64)), tee="sgx"))
    assert err.code == "RATLS_QUOTE_INVALID"


# --- verification -------------------------------------------------------------------------------


@pytest.mark.parametrize("tee", ["sgx", "tdx"])
def test_certificate_verifies(
    tee: str, platform: SimPlatform, bundles: dict[str, CollateralBundle]
) -> None:
    backend = SimBackend(platform, tee="tdx" if tee == "tdx" else "sgx")
    key, cert = create_ratls_certificate(backend, now=NOW)
    der = cert.public_bytes(Encoding.DER)
    verified = _verify(der, platform, bundles)
    assert verified.tee == tee
    assert verified.sim is True
    claims_hash = hashlib.sha256(claims_buffer_for(spki_der(key))).digest()
    assert verified.claims["report_data"] == (claims_hash + bytes(32)).hex()


def test_swapped_key_is_refused(
    sgx_cert: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
    platform: SimPlatform,
    bundles: dict[str, CollateralBundle],
) -> None:
    """Evidence made for key A, in a certificate for key B (self-signed by B): refused."""
    key_a, cert_a = sgx_cert
    key_b = ec.generate_private_key(ec.SECP256R1())
    forged = _self_signed(key_b, [_ext(cert_a, TCG_DICE_TAGGED_EVIDENCE_OID)])
    err = _error(lambda: _verify(forged, platform, bundles))
    assert err.code == "RATLS_KEY_MISMATCH"
    assert err.expected == hashlib.sha256(spki_der(key_b)).hexdigest()
    assert err.actual == hashlib.sha256(spki_der(key_a)).hexdigest()
    assert "another public key" in str(err)


def test_swapped_key_in_legacy_extension_is_refused(
    sgx_cert: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
    platform: SimPlatform,
    bundles: dict[str, CollateralBundle],
) -> None:
    key_a, cert_a = sgx_cert
    key_b = ec.generate_private_key(ec.SECP256R1())
    forged = _self_signed(key_b, [_ext(cert_a, LEGACY_SGX_QUOTE_OID)])
    err = _error(lambda: _verify(forged, platform, bundles))
    assert err.code == "RATLS_KEY_MISMATCH"
    assert err.expected == (hashlib.sha256(spki_der(key_b)).digest() + bytes(32)).hex()
    assert err.actual == (hashlib.sha256(spki_der(key_a)).digest() + bytes(32)).hex()


def test_claims_rewritten_for_another_key_are_refused(
    sgx_cert: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
    platform: SimPlatform,
    bundles: dict[str, CollateralBundle],
) -> None:
    """The attacker rewrites pubkey-hash to its own key: the quote no longer covers the claims."""
    _, cert_a = sgx_cert
    key_b = ec.generate_private_key(ec.SECP256R1())
    quote = extract_evidence(cert_a).quote
    tagged = _cbor.encode(_cbor.Tag(60000, [quote, claims_buffer_for(spki_der(key_b))]))
    ext = x509.Extension(
        TCG_DICE_TAGGED_EVIDENCE_OID,
        False,
        x509.UnrecognizedExtension(TCG_DICE_TAGGED_EVIDENCE_OID, tagged),
    )
    forged = _self_signed(key_b, [ext])
    err = _error(lambda: _verify(forged, platform, bundles))
    assert err.code == "RATLS_CLAIMS_MISMATCH"
    assert (
        err.expected
        == (hashlib.sha256(claims_buffer_for(spki_der(key_b))).digest() + bytes(32)).hex()
    )


def test_expired_certificate_is_refused(
    sgx_cert: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
    platform: SimPlatform,
    bundles: dict[str, CollateralBundle],
) -> None:
    _, cert = sgx_cert
    later = NOW + timedelta(hours=25)
    err = _error(lambda: _verify(cert, platform, bundles, now=later))
    assert err.code == "RATLS_CERT_EXPIRED"
    assert err.actual == later.isoformat()
    err = _error(
        lambda: _verify(cert, platform, bundles, now=NOW - CERT_BACKDATE - timedelta(seconds=1))
    )
    assert err.code == "RATLS_CERT_NOT_YET_VALID"


def test_stale_collateral_is_refused(
    platform: SimPlatform, bundles: dict[str, CollateralBundle]
) -> None:
    """A long-lived certificate does not outlive its evidence's collateral."""
    _, cert = create_ratls_certificate(
        SimBackend(platform, tee="sgx"), validity=timedelta(days=3650), now=NOW
    )
    _verify(cert, platform, bundles)  # fresh: accepted
    err = _error(lambda: _verify(cert, platform, bundles, now=NOW + timedelta(days=400)))
    assert isinstance(err, VerificationError)
    assert err.code == "COLLATERAL_EXPIRED"


def test_untrusted_measurement_is_refused_by_policy(
    sgx_cert: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
    platform: SimPlatform,
    bundles: dict[str, CollateralBundle],
) -> None:
    _, cert = sgx_cert
    trusted = "00" * 32
    seen: list[str] = []

    def only_trusted(v: VerifiedEvidence) -> None:
        seen.append(str(v.claims["mrenclave"]))
        if v.claims["mrenclave"] != trusted:
            raise PolicyViolationError(
                "the peer runs an untrusted enclave",
                verified=v,
                code="MRENCLAVE_UNTRUSTED",
                field="mrenclave",
                expected=trusted,
                actual=v.claims["mrenclave"],
            )

    err = _error(lambda: _verify(cert, platform, bundles, policy=only_trusted))
    assert err.code == "MRENCLAVE_UNTRUSTED"
    assert err.actual == seen[0] != trusted

    # A policy that fails with a non-nacre exception still refuses, with a nacre error.
    def broken(v: VerifiedEvidence) -> None:
        raise KeyError("no such claim")

    err = _error(lambda: _verify(cert, platform, bundles, policy=broken))
    assert err.code == "RATLS_POLICY_ERROR"


def test_certificate_without_evidence_is_refused(
    platform: SimPlatform, bundles: dict[str, CollateralBundle]
) -> None:
    plain = _self_signed(ec.generate_private_key(ec.SECP256R1()), [])
    err = _error(lambda: _verify(plain, platform, bundles))
    assert err.code == "RATLS_NO_EVIDENCE"
    assert err.expected is not None
    assert "2.23.133.5.4.9" in err.expected


@pytest.mark.parametrize("oid", [LEGACY_SGX_QUOTE_OID, GRAMINE_LEGACY_QUOTE_OID])
def test_legacy_extension_alone_is_accepted_for_sgx(
    oid: x509.ObjectIdentifier,
    sgx_cert: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
    platform: SimPlatform,
    bundles: dict[str, CollateralBundle],
) -> None:
    key, cert = sgx_cert
    quote = _raw(cert, LEGACY_SGX_QUOTE_OID)
    legacy = x509.Extension(oid, False, x509.UnrecognizedExtension(oid, quote))
    only_legacy = _self_signed(key, [legacy])
    assert extract_evidence(only_legacy).carrier == "legacy"
    verified = _verify(only_legacy, platform, bundles)
    assert verified.tee == "sgx"
    assert (
        verified.claims["report_data"] == (hashlib.sha256(spki_der(key)).digest() + bytes(32)).hex()
    )


@pytest.mark.parametrize(("alg_id", "alg"), [(1, "sha256"), (7, "sha384"), (8, "sha512")])
def test_dice_evidence_from_other_producers_is_accepted(
    alg_id: int, alg: str, platform: SimPlatform, bundles: dict[str, CollateralBundle]
) -> None:
    """Verifiers must accept sha-256/384/512 pubkey hashes and ignore (but parse) a nonce."""
    key = ec.generate_private_key(ec.SECP256R1())
    entry = _cbor.encode([alg_id, hashlib.new(alg, spki_der(key)).digest()])
    claims = _cbor.encode({"pubkey-hash": entry, "nonce": b"session-nonce"})
    quote = platform.quote("sgx", hashlib.sha256(claims).digest() + bytes(32))
    value = _cbor.encode(_cbor.Tag(60000, [quote, claims]))
    ext = x509.Extension(
        TCG_DICE_TAGGED_EVIDENCE_OID,
        False,
        x509.UnrecognizedExtension(TCG_DICE_TAGGED_EVIDENCE_OID, value),
    )
    cert = _self_signed(key, [ext])
    evidence = extract_evidence(cert)
    assert evidence.pubkey_hash is not None
    assert evidence.pubkey_hash[0] == alg
    assert evidence.nonce == b"session-nonce"
    assert _verify(cert, platform, bundles).tee == "sgx"


def test_legacy_extension_with_a_tdx_quote_is_refused(
    platform: SimPlatform, bundles: dict[str, CollateralBundle]
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    quote = platform.quote("tdx", hashlib.sha256(spki_der(key)).digest() + bytes(32))
    ext = x509.Extension(
        LEGACY_SGX_QUOTE_OID, False, x509.UnrecognizedExtension(LEGACY_SGX_QUOTE_OID, quote)
    )
    err = _error(lambda: _verify(_self_signed(key, [ext]), platform, bundles))
    assert err.code == "RATLS_UNSUPPORTED_TEE"


def test_certificate_not_signed_by_its_key_is_refused(
    sgx_cert: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
    platform: SimPlatform,
    bundles: dict[str, CollateralBundle],
) -> None:
    """Genuine evidence and key, but the certificate fields were re-signed by someone else."""
    key, cert = sgx_cert
    other = ec.generate_private_key(ec.SECP256R1())
    forged = _self_signed(key, [_ext(cert, TCG_DICE_TAGGED_EVIDENCE_OID)], signer=other)
    err = _error(lambda: _verify(forged, platform, bundles))
    assert err.code == "RATLS_CERT_SIGNATURE"


def test_baseline_appraisal_applies_unless_relaxed(
    platform: SimPlatform, bundles: dict[str, CollateralBundle]
) -> None:
    debug = SimBackend(platform, tee="sgx", manifest=Manifest(name="dbg", debug=True))
    _, cert = create_ratls_certificate(debug, now=NOW)
    err = _error(lambda: _verify(cert, platform, bundles))
    assert err.code == "DEBUG_ENCLAVE"
    verified = verify_ratls_certificate(
        cert,
        collateral=_collateral(bundles),
        now=NOW,
        trust=platform.trust_roots(),
        baseline=BaselinePolicy(allow_debug=True),
    )
    assert verified.claims["debug"] is True


def test_simulated_evidence_needs_the_simulation_root(
    sgx_cert: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
    bundles: dict[str, CollateralBundle],
) -> None:
    _, cert = sgx_cert
    err = _error(
        lambda: verify_ratls_certificate(cert, collateral=_collateral(bundles), now=NOW, trust=None)
    )
    assert err.code == "SIMULATED_EVIDENCE"


@pytest.mark.parametrize(
    ("value", "field_part"),
    [
        (_cbor.encode(_cbor.Tag(60001, [b"q", b"c"])), "CBOR tag"),
        (_cbor.encode(_cbor.Tag(60000, [b"q"])), "tcg-dice-tagged-evidence"),
        (_cbor.encode(_cbor.Tag(60000, [b"q", _cbor.encode({"nonce": b"n"})])), "pubkey-hash"),
        (
            _cbor.encode(
                _cbor.Tag(
                    60000, [b"q", _cbor.encode({"pubkey-hash": _cbor.encode([2, bytes(32)])})]
                )
            ),
            "pubkey-hash",
        ),
        (_cbor.encode(_cbor.Tag(60000, [b"q", b"c"])) + b"\x00", "tcg-dice-tagged-evidence"),
    ],
)
def test_malformed_dice_evidence_is_refused(value: bytes, field_part: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    ext = x509.Extension(
        TCG_DICE_TAGGED_EVIDENCE_OID,
        False,
        x509.UnrecognizedExtension(TCG_DICE_TAGGED_EVIDENCE_OID, value),
    )
    err = _error(lambda: extract_evidence(_self_signed(key, [ext])))
    assert err.code == "RATLS_EVIDENCE_MALFORMED"
    assert err.field is not None
    assert field_part in err.field


# --- the CBOR subset ----------------------------------------------------------------------------


def test_cbor_round_trip_and_known_bytes() -> None:
    value: _cbor.CborValue = _cbor.Tag(60000, [b"\x01" * 30, {"a": 23, "bb": 24, 7: [256, 65536]}])
    data = _cbor.encode(value)
    assert _cbor.decode(data) == value
    # RFC 8949 appendix A style checks of the heads we emit.
    assert _cbor.encode(23) == b"\x17"
    assert _cbor.encode(24) == b"\x18\x18"
    assert _cbor.encode(2**32) == b"\x1b\x00\x00\x00\x01\x00\x00\x00\x00"
    assert _cbor.encode(_cbor.Tag(60000, 0))[:3] == b"\xd9\xea\x60"


@pytest.mark.parametrize(
    "data",
    [
        b"\x18\x01",  # 1 in two bytes: not shortest
        b"\x5f\x41\x00\xff",  # indefinite byte string
        b"\x20",  # negative integer
        b"\xf5",  # true (simple value)
        b"\xfb" + bytes(8),  # float
        b"\xa2\x61a\x01\x61a\x02",  # duplicate map key
        b"\x42\x00",  # byte string shorter than its length
        b"\x01\x01",  # trailing bytes
        b"\x62\xc3\x28",  # invalid UTF-8
        b"\x81" * 20 + b"\x00",  # nested too deep
        b"\x98\x41" + b"\x00" * 65,  # too many items
    ],
)
def test_cbor_refuses_outside_the_subset(data: bytes) -> None:
    with pytest.raises(_cbor.CborError):
        _cbor.decode(data)


# --- attested connections -----------------------------------------------------------------------


@dataclass
class _Server:
    """One-connection RA-TLS server in a thread: echoes one message, upper-cased."""

    ctx: RatlsContext
    listener: socket.socket = field(init=False)
    received: list[bytes] = field(default_factory=list)
    peer: list[VerifiedEvidence | None] = field(default_factory=list)
    error: list[BaseException] = field(default_factory=list)
    thread: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(10)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.listener.getsockname()[:2]
        return str(host), int(port)

    def _run(self) -> None:
        try:
            conn, _ = accept_verified(self.listener, self.ctx)
            with conn:
                self.peer.append(conn.ratls_peer)
                data = conn.recv(1024)
                self.received.append(data)
                conn.sendall(data.upper())
        except BaseException as exc:
            self.error.append(exc)
        finally:
            self.listener.close()

    def join(self) -> None:
        self.thread.join(timeout=15)
        assert not self.thread.is_alive()


@pytest.fixture
def verifier(platform: SimPlatform, bundles: dict[str, CollateralBundle]) -> RatlsVerifier:
    return RatlsVerifier(
        collateral=_collateral(bundles), trust=platform.trust_roots(), clock=lambda: NOW
    )


def _measurement_policy(claim: str, allowed: set[str]) -> Callable[[VerifiedEvidence], None]:
    def policy(v: VerifiedEvidence) -> None:
        if str(v.claims[claim]) not in allowed:
            raise PolicyViolationError(
                "untrusted measurement",
                verified=v,
                code="MEASUREMENT_UNTRUSTED",
                field=claim,
                expected=" or ".join(sorted(allowed)),
                actual=v.claims[claim],
            )

    return policy


@pytest.fixture(scope="module")
def client_creds(platform: SimPlatform) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A client in a simulated TD with its own measurement."""
    backend = SimBackend(
        platform, tee="tdx", manifest=Manifest(name="client", entrypoint="/client")
    )
    key, cert = create_ratls_certificate(backend, subject_cn="client", now=NOW)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key, cert


def _mrenclave(
    cert: x509.Certificate, platform: SimPlatform, bundles: dict[str, CollateralBundle]
) -> str:
    return str(_verify(cert, platform, bundles).claims["mrenclave"])


def test_server_attested_connection_exchanges_data(
    sgx_cert: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
    verifier: RatlsVerifier,
    platform: SimPlatform,
    bundles: dict[str, CollateralBundle],
) -> None:
    key, cert = sgx_cert
    server = _Server(server_context(key, cert, verify_client=None))
    with wrap_client(socket.create_connection(server.address), verifier, "localhost") as sock:
        assert isinstance(sock, RatlsSocket)
        assert sock.version() == "TLSv1.3"
        assert sock.ratls_peer is not None
        assert sock.ratls_peer.claims["mrenclave"] == _mrenclave(cert, platform, bundles)
        sock.sendall(b"hello enclave")
        assert sock.recv(1024) == b"HELLO ENCLAVE"
    server.join()
    assert server.error == []
    assert server.peer == [None]


def test_mutual_attestation_exchanges_data(
    sgx_cert: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
    client_creds: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
    platform: SimPlatform,
    bundles: dict[str, CollateralBundle],
) -> None:
    key, cert = sgx_cert
    ckey, ccert = client_creds
    client_mr_td = str(_verify(ccert, platform, bundles).claims["mr_td"])
    server_verifier = RatlsVerifier(
        collateral=_collateral(bundles),
        trust=platform.trust_roots(),
        policy=_measurement_policy("mr_td", {client_mr_td}),
        clock=lambda: NOW,
    )
    client_verifier = RatlsVerifier(
        collateral=_collateral(bundles),
        trust=platform.trust_roots(),
        policy=_measurement_policy("mrenclave", {_mrenclave(cert, platform, bundles)}),
        clock=lambda: NOW,
    )
    server = _Server(server_context(key, cert, verify_client=server_verifier))
    ctx = client_context(client_verifier, key=ckey, cert=ccert)
    with ctx.wrap_socket(socket.create_connection(server.address)) as sock:
        assert isinstance(sock, RatlsSocket)
        assert sock.ratls_peer is not None
        assert sock.ratls_peer.tee == "sgx"
        sock.sendall(b"mutual")
        assert sock.recv(1024) == b"MUTUAL"
    server.join()
    assert server.error == []
    assert server.received == [b"mutual"]
    [peer] = server.peer
    assert peer is not None
    assert peer.tee == "tdx"
    assert peer.claims["mr_td"] == client_mr_td


def test_server_refuses_client_with_untrusted_measurement(
    sgx_cert: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
    client_creds: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
    platform: SimPlatform,
    bundles: dict[str, CollateralBundle],
    verifier: RatlsVerifier,
) -> None:
    key, cert = sgx_cert
    ckey, ccert = client_creds
    strict = RatlsVerifier(
        collateral=_collateral(bundles),
        trust=platform.trust_roots(),
        policy=_measurement_policy("mr_td", {"00" * 48}),
        clock=lambda: NOW,
    )
    server = _Server(server_context(key, cert, verify_client=strict))
    err = _error(
        lambda: wrap_client(
            socket.create_connection(server.address), verifier, key=ckey, cert=ccert
        )
    )
    assert err.code == "RATLS_PEER_REFUSED"
    server.join()
    [server_err] = server.error
    assert isinstance(server_err, PolicyViolationError)
    assert server_err.code == "MEASUREMENT_UNTRUSTED"
    assert server_err.field == "mr_td"
    assert server.received == []  # no application data was read from the refused client


def test_client_refuses_server_with_untrusted_measurement(
    sgx_cert: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
    platform: SimPlatform,
    bundles: dict[str, CollateralBundle],
) -> None:
    key, cert = sgx_cert
    strict = RatlsVerifier(
        collateral=_collateral(bundles),
        trust=platform.trust_roots(),
        policy=_measurement_policy("mrenclave", {"11" * 32}),
        clock=lambda: NOW,
    )
    server = _Server(server_context(key, cert, verify_client=None))
    raw = socket.create_connection(server.address)
    err = _error(lambda: wrap_client(raw, strict))
    assert err.code == "MEASUREMENT_UNTRUSTED"
    server.join()
    assert server.error == []
    assert server.received == [b""]  # the client closed the connection without sending data


def test_client_refuses_server_whose_evidence_is_for_another_key(
    sgx_cert: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
    verifier: RatlsVerifier,
) -> None:
    _, cert_a = sgx_cert
    key_b = ec.generate_private_key(ec.SECP256R1())
    forged = _self_signed(key_b, [_ext(cert_a, TCG_DICE_TAGGED_EVIDENCE_OID)])
    server = _Server(server_context(key_b, forged, verify_client=None))
    err = _error(lambda: wrap_client(socket.create_connection(server.address), verifier))
    assert err.code == "RATLS_KEY_MISMATCH"
    server.join()


def test_server_refuses_client_that_does_not_attest(
    sgx_cert: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
    verifier: RatlsVerifier,
) -> None:
    key, cert = sgx_cert
    server = _Server(server_context(key, cert, verify_client=verifier))
    with wrap_client(socket.create_connection(server.address), verifier) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n" + bytes(16))
        assert sock.recv(1) in (b"\x01", b"")  # refused (or already closed)
    server.join()
    [server_err] = server.error
    assert isinstance(server_err, RatlsError)
    assert server_err.code == "RATLS_CLIENT_AUTH_MISSING"
    assert server.received == []


def test_server_refuses_replayed_client_certificate(
    sgx_cert: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
    client_creds: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
    verifier: RatlsVerifier,
) -> None:
    """An attacker presents a genuine client certificate but cannot sign with its key."""
    key, cert = sgx_cert
    _, ccert = client_creds
    thief = ec.generate_private_key(ec.SECP256R1())
    server = _Server(server_context(key, cert, verify_client=verifier))
    with wrap_client(socket.create_connection(server.address), verifier) as sock:
        cder = ccert.public_bytes(Encoding.DER)
        binding = sock.get_channel_binding("tls-unique")
        assert binding is not None
        message = _proof_message(cert.public_bytes(Encoding.DER), cder, binding)
        sig = thief.sign(message, ec.ECDSA(hashes.SHA256()))
        frame = CLIENT_AUTH_MAGIC + len(cder).to_bytes(4, "big") + cder
        sock.sendall(frame + len(sig).to_bytes(2, "big") + sig)
        assert sock.recv(1) == b"\x01"
    server.join()
    [server_err] = server.error
    assert isinstance(server_err, RatlsError)
    assert server_err.code == "RATLS_CLIENT_PROOF_INVALID"


def test_wrapped_listener_attests_on_accept(
    sgx_cert: tuple[ec.EllipticCurvePrivateKey, x509.Certificate], verifier: RatlsVerifier
) -> None:
    """The standard pattern ctx.wrap_socket(listener).accept() goes through the attestation too."""
    key, cert = sgx_cert
    ctx = server_context(key, cert, verify_client=verifier)
    errors: list[BaseException] = []
    with socket.create_server(("127.0.0.1", 0)) as plain:
        listener = ctx.wrap_socket(plain, server_side=True)

        def serve() -> None:
            try:
                listener.accept()
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        with wrap_client(socket.create_connection(listener.getsockname()[:2]), verifier) as sock:
            sock.sendall(b"not an attestation frame..")
            sock.recv(1)
        thread.join(timeout=15)
        listener.close()
    [err] = errors
    assert isinstance(err, RatlsError)
    assert err.code == "RATLS_CLIENT_AUTH_MISSING"


def test_unverifiable_uses_are_refused(
    sgx_cert: tuple[ec.EllipticCurvePrivateKey, x509.Certificate], verifier: RatlsVerifier
) -> None:
    key, cert = sgx_cert
    ctx = client_context(verifier)
    with socket.socket() as unconnected:
        assert _error(lambda: ctx.wrap_socket(unconnected)).field == "sock"
    with socket.socket() as s:
        err = _error(lambda: ctx.wrap_socket(s, do_handshake_on_connect=False))
        assert err.field == "do_handshake_on_connect"
    assert _error(lambda: ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO())).field == "wrap_bio"
    with socket.socket() as s:
        assert _error(lambda: ctx.wrap_socket(s, server_side=True)).field == "server_side"
    other = ec.generate_private_key(ec.SECP256R1())
    assert _error(lambda: server_context(other, cert, verify_client=None)).field == "key"
    assert _error(lambda: client_context(verifier, key=key)).field == "key/cert"
    bare = RatlsContext(ssl.PROTOCOL_TLS_CLIENT)
    with socket.socket() as s:
        assert _error(lambda: bare.wrap_socket(s)).field == "context"
