"""SEV-SNP verification: real vectors, byte flips, chains, bindings, and a fake AMD hierarchy.

The fake hierarchy (an ARK and ASK of our own, RSA-PSS SHA-384 like AMD's, and P-384 VCEKs with
AMD's extensions) signs modified reports, so the bindings a real vector cannot break (TCB, chip
ID, product, Turin layout) are tested end to end. It is trusted only through
``TrustRoots.from_certificates``, never by the default roots.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import random
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

import amd_forge
import nacre.collateral.amd as amd
from nacre.collateral.amd import SnpCollateral, load_snp_collateral
from nacre.collateral.trust import TrustRoots
from nacre.errors import CollateralError, NacreError, UsageError, VerificationError
from nacre.evidence.snp import SnpReport, TcbVersion, extract_snp_from_hcl, parse_snp_report
from nacre.verify.cache import VerifyCache
from nacre.verify.snp import check_chip_id, check_reported_tcb, verify_snp

VECTORS = Path(__file__).resolve().parents[2] / "shared" / "vectors"
SNP_CASES = sorted(p for p in VECTORS.glob("snp-*") if p.is_dir())
DEFAULT = TrustRoots.default()
DESIGN_CLAIMS = {
    "measurement",
    "host_data",
    "report_data",
    "id_key_digest",
    "policy",
    "debug",
    "vmpl",
    "chip_id",
    "reported_tcb",
    "current_tcb",
    "family_id",
    "image_id",
    "guest_svn",
}
EXTRA_CLAIMS = {"signing_key", "product", "reported_tcb_decoded"}


def _files(case_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in case_dir.iterdir() if p.is_file()}


def _case(case_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((case_dir / "case.json").read_text())
    return data


def _time(case_dir: Path) -> datetime:
    return datetime.fromisoformat(_case(case_dir)["verification_time"])


def _flip(data: bytes, offset: int, mask: int = 0x01) -> bytes:
    return data[:offset] + bytes([data[offset] ^ mask]) + data[offset + 1 :]


def _verify(
    report: bytes,
    files: Mapping[str, bytes],
    now: datetime,
    trust: TrustRoots = DEFAULT,
    cache: VerifyCache | None = None,
) -> Any:
    return verify_snp(report, load_snp_collateral(files), now=now, trust=trust, cache=cache)


def _rejects(code: str, report: bytes, files: Mapping[str, bytes], now: datetime, **kw: Any) -> Any:
    with pytest.raises(VerificationError) as exc:
        _verify(report, files, now, **kw)
    assert exc.value.code == code, str(exc.value)
    assert exc.value.field, "every error names its field"
    return exc.value


MILAN = VECTORS / "snp-v2-milan-virtee"
GENOA = VECTORS / "snp-v3-genoa-azure-trustee"
VLEK = VECTORS / "snp-v3-milan-vlek-trustee"


# --------------------------------------------------------------------------- real vectors


def test_every_snp_vector_is_expected_to_verify() -> None:
    assert len(SNP_CASES) == 4
    assert all(_case(p)["expected"]["verdict"] == "ok" for p in SNP_CASES)


@pytest.mark.parametrize("case_dir", SNP_CASES, ids=lambda p: p.name)
def test_vector_verifies_with_expected_claims(case_dir: Path) -> None:
    case = _case(case_dir)
    files = _files(case_dir)
    result = _verify(files["report.bin"], files, _time(case_dir))

    assert result.tee == "snp"
    assert result.version == case["report_version"]
    assert result.tcb_status is None
    assert result.advisory_ids == ()
    assert result.verified_at == _time(case_dir)
    assert result.sim is False
    assert set(result.claims) == DESIGN_CLAIMS | EXTRA_CLAIMS
    for name, value in case["key_claims"].items():
        if name == "policy_decoded":
            decoded = dataclasses.asdict(result.evidence.policy_decoded)
            assert {k: decoded[k] for k in value} == value
        else:
            assert result.claims[name] == value, name
    assert result.claims["debug"] is case["key_claims"]["policy_decoded"]["debug_allowed"]
    assert result.claims["current_tcb"] == case["claims"]["current_tcb"]
    assert result.claims["reported_tcb_decoded"] == case["expected"]["reported_tcb"]
    assert result.claims["signing_key"] == case["expected"]["signing_key"]
    assert result.claims["product"] == case["leaf_cert"]["product_name"].split("-")[0]

    kind = case["expected"]["signing_key"]
    assert [link.role for link in result.chain] == [
        kind,
        "ASK" if kind == "VCEK" else "ASVK",
        "ARK",
    ]
    leaf = result.chain[0]
    assert leaf.subject == case["leaf_cert"]["subject"]
    assert leaf.not_after == datetime.fromisoformat(case["leaf_cert"]["not_after"])
    assert [c.step for c in result.checks] == [
        "parse",
        "anchor",
        "chain",
        "signing_key",
        "signature",
        "tcb",
        "chip_id",
        "product",
    ]
    assert all(c.passed for c in result.checks)
    assert len(result.collateral) == 3


def test_azure_hcl_report_verifies() -> None:
    files = _files(GENOA)
    report = extract_snp_from_hcl(files["hcl_report.bin"])
    result = _verify(report, files, _time(GENOA))
    assert result.claims["measurement"] == _case(GENOA)["key_claims"]["measurement"]


def test_a_bundle_without_ark_uses_the_trusted_anchor() -> None:
    files = {k: v for k, v in _files(MILAN).items() if k in ("report.bin", "vcek.der", "ask.pem")}
    result = _verify(files["report.bin"], files, _time(MILAN))
    assert result.chain[-1].subject.startswith("CN=ARK-Milan")


# --------------------------------------------------------------------------- byte flips

# (offset, xor mask, expected code): the report is signed over 0x000-0x29F, so any flip there fails
# the signature, unless an earlier step (parse, signing key) refuses it first.
FLIPS = [
    (0x000, 0xFF, "REPORT_MALFORMED"),  # version -> unsupported
    (0x034, 0x02, "REPORT_MALFORMED"),  # signature algorithm
    (0x048, 0x04, "SIGNING_KEY_MISMATCH"),  # SIGNING_KEY VCEK <-> VLEK
    (0x048, 0x02, "REPORT_SIGNATURE_INVALID"),  # MASK_CHIP_KEY: unsigned report
    (0x008, 0x01, "REPORT_SIGNATURE_INVALID"),  # policy
    (0x030, 0x01, "REPORT_SIGNATURE_INVALID"),  # vmpl
    (0x050, 0x01, "REPORT_SIGNATURE_INVALID"),  # report_data
    (0x090, 0x01, "REPORT_SIGNATURE_INVALID"),  # measurement
    (0x0BF, 0x80, "REPORT_SIGNATURE_INVALID"),  # measurement, last byte
    (0x180, 0x01, "REPORT_SIGNATURE_INVALID"),  # reported_tcb
    (0x1A0, 0x01, "REPORT_SIGNATURE_INVALID"),  # chip_id
    (0x29F, 0x01, "REPORT_SIGNATURE_INVALID"),  # last signed byte
    (0x2A0, 0x01, "REPORT_SIGNATURE_INVALID"),  # signature r
    (0x2E8, 0x01, "REPORT_SIGNATURE_INVALID"),  # signature s
    (0x2CF, 0x01, "REPORT_SIGNATURE_INVALID"),  # r, last significant byte
    (0x2D0, 0x01, "REPORT_SIGNATURE_INVALID"),  # r, first padding byte (must stay zero)
    (0x330, 0x01, "REPORT_MALFORMED"),  # reserved after the signature: not signed, must be zero
    (0x49F, 0x80, "REPORT_MALFORMED"),  # last byte of the report
]


@pytest.mark.parametrize("case_dir", SNP_CASES, ids=lambda p: p.name)
@pytest.mark.parametrize(("offset", "mask", "code"), FLIPS)
def test_byte_flip_is_rejected(case_dir: Path, offset: int, mask: int, code: str) -> None:
    files = _files(case_dir)
    _rejects(code, _flip(files["report.bin"], offset, mask), files, _time(case_dir))


def test_flipped_measurement_names_the_signature() -> None:
    files = _files(MILAN)
    err = _rejects(
        "REPORT_SIGNATURE_INVALID", _flip(files["report.bin"], 0x90), files, _time(MILAN)
    )
    assert err.field == "signature"
    assert err.step == "signature"


def test_mask_chip_key_means_the_report_is_unsigned() -> None:
    files = _files(MILAN)
    masked = _flip(files["report.bin"], 0x48, 0x02)
    err = _rejects("REPORT_SIGNATURE_INVALID", masked, files, _time(MILAN))
    assert (err.field, err.expected, err.actual) == ("mask_chip_key", "0", "1")


def test_reserved_signing_key_values_are_malformed() -> None:
    files = _files(MILAN)
    report = _flip(files["report.bin"], 0x48, 0b01000)  # SIGNING_KEY 0 -> 2 (reserved)
    err = _rejects("REPORT_MALFORMED", report, files, _time(MILAN))
    assert (err.field, err.actual) == ("signing_key", "2")
    unsigned = _flip(files["report.bin"], 0x48, 0b11100)  # SIGNING_KEY 7: none
    err = _rejects("REPORT_SIGNATURE_INVALID", unsigned, files, _time(MILAN))
    assert err.actual == "7 (none)"


def test_a_rejection_carries_the_checks_up_to_the_failed_step() -> None:
    files = _files(MILAN)
    err = _rejects(
        "REPORT_SIGNATURE_INVALID", _flip(files["report.bin"], 0x90), files, _time(MILAN)
    )
    assert [c.step for c in err.checks] == ["parse", "anchor", "chain", "signing_key", "signature"]
    assert [c.passed for c in err.checks] == [True, True, True, True, False]

    err = _rejects("REPORT_MALFORMED", _flip(files["report.bin"], 0x000, 0xFF), files, _time(MILAN))
    assert [(c.step, c.passed) for c in err.checks] == [("parse", False)]


def test_report_signature_is_verified_even_when_the_chain_is_cached() -> None:
    files = _files(MILAN)
    cache = VerifyCache()
    _verify(files["report.bin"], files, _time(MILAN), cache=cache)
    _verify(files["report.bin"], files, _time(MILAN), cache=cache)
    assert (cache.misses, cache.hits) == (1, 1)
    _rejects(
        "REPORT_SIGNATURE_INVALID",
        _flip(files["report.bin"], 0x2A0),
        files,
        _time(MILAN),
        cache=cache,
    )
    assert cache.hits == 2


def _mutants(
    files: Mapping[str, bytes], count: int, seed: int
) -> list[tuple[str, dict[str, bytes]]]:
    """``count`` copies of ``files``, each with one bit flipped (inside the DER of PEM files)."""
    rng = random.Random(seed)
    names = sorted(n for n in files if n.endswith((".der", ".pem")) or n == "report.bin")
    out = []
    for _ in range(count):
        name = rng.choice(names)
        if name.endswith(".pem"):
            ders = [
                c.public_bytes(Encoding.DER) for c in x509.load_pem_x509_certificates(files[name])
            ]
            i = rng.randrange(len(ders))
            ders[i] = _flip(ders[i], rng.randrange(len(ders[i])), 1 << rng.randrange(8))
            data = b"".join(
                b"-----BEGIN CERTIFICATE-----\n"
                + base64.encodebytes(der)
                + b"-----END CERTIFICATE-----\n"
                for der in ders
            )
        else:
            data = _flip(files[name], rng.randrange(len(files[name])), 1 << rng.randrange(8))
        out.append((name, {**files, name: data}))
    return out


@pytest.mark.parametrize("case_dir", SNP_CASES, ids=lambda p: p.name)
def test_every_single_bit_flip_is_rejected_with_a_nacre_error(case_dir: Path) -> None:
    # Every byte of report and collateral is either signed, compared with a trusted anchor, or
    # required to be zero: a one-bit change anywhere must be refused, and only as a NacreError.
    files = _files(case_dir)
    now = _time(case_dir)
    codes: set[str] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # cryptography on damaged subject names
        for name, mutant in _mutants(files, 150, seed=len(case_dir.name)):
            with pytest.raises(NacreError) as exc:
                _verify(mutant["report.bin"], mutant, now, cache=VerifyCache())
            assert exc.value.field, f"{name}: {exc.value}"
            codes.add(exc.value.code)
    amd._LOADED.clear()
    assert codes <= {
        "CERT_CHAIN_INVALID",
        "CERT_EXTENSION_MALFORMED",
        "REPORT_MALFORMED",
        "REPORT_SIGNATURE_INVALID",
        "SIGNING_KEY_MISMATCH",
    }
    assert {"CERT_CHAIN_INVALID", "REPORT_SIGNATURE_INVALID"} <= codes


# --------------------------------------------------------------------------- validity


@pytest.mark.parametrize("case_dir", SNP_CASES, ids=lambda p: p.name)
def test_after_leaf_not_after_is_expired(case_dir: Path) -> None:
    files = _files(case_dir)
    not_after = datetime.fromisoformat(_case(case_dir)["leaf_cert"]["not_after"])
    cache = VerifyCache()
    _verify(files["report.bin"], files, _time(case_dir), cache=cache)  # warm the chain cache
    err = _rejects(
        "CERT_EXPIRED", files["report.bin"], files, not_after + timedelta(seconds=1), cache=cache
    )
    assert f"{not_after:%Y-%m-%d}" in err.message
    assert err.expected == f"not after {not_after.isoformat()}"
    assert err.actual == (not_after + timedelta(seconds=1)).isoformat()
    # The last instant of the window is still valid.
    _verify(files["report.bin"], files, not_after, cache=cache)


def test_before_leaf_not_before_is_not_yet_valid() -> None:
    files = _files(VLEK)
    not_before = datetime.fromisoformat(_case(VLEK)["leaf_cert"]["not_before"])
    err = _rejects(
        "CERT_NOT_YET_VALID", files["report.bin"], files, not_before - timedelta(seconds=1)
    )
    assert err.field == "vlek.der notBefore"


def test_naive_time_is_refused() -> None:
    files = _files(MILAN)
    with pytest.raises(UsageError) as exc:
        _verify(files["report.bin"], files, datetime(2025, 6, 1))
    assert exc.value.field == "now"


# --------------------------------------------------------------------------- anchors and chains


def test_genoa_ark_with_a_milan_chain_is_rejected() -> None:
    files = _files(MILAN)
    files["ark.pem"] = (GENOA / "ark.pem").read_bytes()
    files.pop("cert_chain.pem")
    err = _rejects("CERT_CHAIN_INVALID", files["report.bin"], files, _time(MILAN))
    assert err.field == "ark.pem"
    assert err.actual is not None
    assert err.actual.startswith("ARK-Genoa")
    assert err.expected is not None
    assert err.expected.startswith("ARK-Milan")


def test_trusting_only_the_genoa_ark_rejects_a_milan_chain() -> None:
    files = {k: v for k, v in _files(MILAN).items() if k in ("report.bin", "vcek.der", "ask.pem")}
    trust = TrustRoots.from_certificates([DEFAULT.amd["Genoa"]])
    err = _rejects("CERT_CHAIN_INVALID", files["report.bin"], files, _time(MILAN), trust=trust)
    assert err.field == "ask.pem signature"


def test_genoa_ask_under_a_milan_vcek_is_rejected() -> None:
    files = _files(MILAN)
    files["ask.pem"] = (GENOA / "ask.pem").read_bytes()
    files.pop("cert_chain.pem")
    files.pop("ark.pem")
    err = _rejects("CERT_CHAIN_INVALID", files["report.bin"], files, _time(MILAN))
    assert "signature" in (err.field or "")


def test_vlek_report_with_a_vcek_is_a_signing_key_mismatch() -> None:
    files = _files(MILAN)
    report = (VLEK / "report.bin").read_bytes()
    err = _rejects("SIGNING_KEY_MISMATCH", report, files, _time(VLEK))
    assert err.expected is not None
    assert err.expected.startswith("VLEK")
    assert err.actual is not None
    assert err.actual.startswith("VCEK")


def test_vcek_report_with_a_vlek_is_a_signing_key_mismatch() -> None:
    files = _files(VLEK)
    report = (VECTORS / "snp-v2-milan-go-sev-guest" / "report.bin").read_bytes()
    err = _rejects("SIGNING_KEY_MISMATCH", report, files, _time(VLEK))
    assert err.field == "signing_key"


def test_another_chips_vcek_fails_the_report_signature() -> None:
    files = _files(MILAN)
    files["vcek.der"] = (VECTORS / "snp-v2-milan-go-sev-guest" / "vcek.der").read_bytes()
    _rejects("REPORT_SIGNATURE_INVALID", files["report.bin"], files, _time(MILAN))


# --------------------------------------------------------------------------- collateral loading


@pytest.mark.parametrize("case_dir", SNP_CASES, ids=lambda p: p.name)
def test_leaf_loads_with_warnings_as_errors(case_dir: Path) -> None:
    # AMD leaves carry serial number 0; our loader handles the deprecation deliberately.
    files = _files(case_dir)
    amd._LOADED.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        collateral = load_snp_collateral(files)
        verify_snp(
            files["report.bin"], collateral, now=_time(case_dir), trust=DEFAULT, cache=VerifyCache()
        )
    assert collateral.leaf_file in ("vcek.der", "vlek.der")


@pytest.mark.parametrize("case_dir", SNP_CASES, ids=lambda p: p.name)
def test_leaf_extensions_match_the_case(case_dir: Path) -> None:
    case = _case(case_dir)
    collateral = load_snp_collateral(_files(case_dir))
    ext = collateral.extensions
    assert collateral.leaf_kind == case["expected"]["signing_key"]
    assert ext.product_name == case["leaf_cert"]["product_name"]
    tcb = {"bootloader": ext.bootloader, "tee": ext.tee, "snp": ext.snp, "microcode": ext.microcode}
    assert tcb == case["leaf_cert"]["tcb_extensions"]
    assert ext.tcb.hex() == case["key_claims"]["reported_tcb"]
    assert ext.struct_version == 0
    if collateral.leaf_kind == "VCEK":
        assert ext.hw_id is not None
        assert ext.hw_id.hex() == case["key_claims"]["chip_id"]
        assert ext.csp_id is None
        assert collateral.intermediate_role == "ASK"
    else:
        assert ext.hw_id is None
        assert ext.csp_id == "CN=cc-us-east-2.amazonaws.com"
        assert collateral.intermediate_role == "ASVK"


def test_missing_leaf_is_reported() -> None:
    files = _files(MILAN)
    files.pop("vcek.der")
    with pytest.raises(CollateralError) as exc:
        load_snp_collateral(files)
    assert exc.value.code == "COLLATERAL_MISSING"
    assert exc.value.expected == "vcek.der or vlek.der"


def test_missing_intermediate_is_reported() -> None:
    files = {"vcek.der": (MILAN / "vcek.der").read_bytes()}
    with pytest.raises(CollateralError) as exc:
        load_snp_collateral(files)
    assert exc.value.code == "COLLATERAL_MISSING"
    assert exc.value.expected == "ask.pem or cert_chain.pem"


def test_both_leaves_are_ambiguous() -> None:
    files = _files(MILAN)
    files["vlek.der"] = (VLEK / "vlek.der").read_bytes()
    with pytest.raises(CollateralError) as exc:
        load_snp_collateral(files)
    assert exc.value.code == "CERT_CHAIN_INVALID"
    assert exc.value.actual == "both"


def test_vlek_in_vcek_file_is_refused() -> None:
    files = _files(MILAN)
    files["vcek.der"] = (VLEK / "vlek.der").read_bytes()
    with pytest.raises(CollateralError) as exc:
        load_snp_collateral(files)
    assert exc.value.field == "vcek.der subject CN"
    assert (exc.value.expected, exc.value.actual) == ("SEV-VCEK", "SEV-VLEK")


def test_ask_and_cert_chain_must_agree() -> None:
    files = _files(MILAN)
    files["ask.pem"] = (GENOA / "ask.pem").read_bytes()
    with pytest.raises(CollateralError) as exc:
        load_snp_collateral(files)
    assert exc.value.code == "CERT_CHAIN_INVALID"
    assert exc.value.field == "ask.pem"


def test_cert_chain_alone_is_enough() -> None:
    files = {k: v for k, v in _files(GENOA).items() if k in ("vcek.der", "cert_chain.pem")}
    collateral = load_snp_collateral(files)
    assert collateral.intermediate_file == "cert_chain.pem"
    assert collateral.ark_file == "cert_chain.pem"
    report = (GENOA / "report.bin").read_bytes()
    assert verify_snp(report, collateral, now=_time(GENOA), trust=DEFAULT).claims["product"] == (
        "Genoa"
    )


# --------------------------------------------------------------------------- trust anchors


def test_turin_ark_ships_and_self_verifies() -> None:
    ark = DEFAULT.amd["Turin"]
    cn = ark.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == "ARK-Turin"
    assert ark.issuer == ark.subject
    key = ark.public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    assert key.key_size == 4096
    key.verify(
        ark.signature,
        ark.tbs_certificate_bytes,
        padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48),
        hashes.SHA384(),
    )
    ark.verify_directly_issued_by(ark)
    digest = hashlib.sha256(ark.public_bytes(Encoding.DER)).hexdigest()
    assert digest == "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a"


@pytest.mark.parametrize("product", ["Milan", "Genoa"])
def test_vector_arks_are_the_pinned_anchors(product: str) -> None:
    case_dir = MILAN if product == "Milan" else GENOA
    ark = x509.load_pem_x509_certificate((case_dir / "ark.pem").read_bytes())
    assert ark == DEFAULT.amd[product]


# --------------------------------------------------------------------------- a fake AMD hierarchy

_T0 = datetime(2024, 1, 1, tzinfo=UTC)
_NOW = datetime(2025, 6, 1, tzinfo=UTC)
_PSS = amd_forge.PSS
_AMD = amd_forge.AMD_OID
_name = amd_forge.name
_der_int = amd_forge.der_int
_ia5 = amd_forge.ia5


def _ca(
    key: rsa.RSAPrivateKey, cn: str, issuer_key: rsa.RSAPrivateKey, issuer: str
) -> x509.Certificate:
    return amd_forge.ca(key, cn, issuer_key, issuer, not_before=_T0)


@dataclass(frozen=True)
class FakeAmd:
    ark: x509.Certificate
    ask_key: rsa.RSAPrivateKey
    ask: x509.Certificate

    def vcek(
        self,
        *,
        product: str = "Milan-B0",
        tcb: Mapping[str, int],
        hw_id: bytes,
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP384R1())
        spl = {
            "3.1": tcb["bootloader"],
            "3.2": tcb["tee"],
            "3.3": tcb["snp"],
            "3.8": tcb["microcode"],
            **{f"3.{i}": 0 for i in (4, 5, 6, 7)},
        }
        if "fmc" in tcb:
            spl["3.9"] = tcb["fmc"]
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name("SEV-VCEK"))
            .issuer_name(self.ask.subject)
            .public_key(key.public_key())
            .serial_number(1)
            .not_valid_before(_T0)
            .not_valid_after(_T0 + timedelta(days=2555))
        )
        raw = {"1": _der_int(0), "2": _ia5(product), "4": hw_id}
        raw.update({k: _der_int(v) for k, v in spl.items()})
        for suffix, value in raw.items():
            oid = x509.ObjectIdentifier(_AMD + suffix)
            builder = builder.add_extension(x509.UnrecognizedExtension(oid, value), critical=False)
        return key, builder.sign(self.ask_key, hashes.SHA384(), rsa_padding=_PSS)

    def files(self, vcek: x509.Certificate) -> dict[str, bytes]:
        return {
            "vcek.der": vcek.public_bytes(Encoding.DER),
            "ask.pem": self.ask.public_bytes(Encoding.PEM),
            "ark.pem": self.ark.public_bytes(Encoding.PEM),
        }

    @property
    def trust(self) -> TrustRoots:
        return TrustRoots.from_certificates([self.ark])


@pytest.fixture(scope="module")
def fake() -> FakeAmd:
    ark_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ask_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ark = _ca(ark_key, "ARK-Test", ark_key, "ARK-Test")
    return FakeAmd(ark=ark, ask_key=ask_key, ask=_ca(ask_key, "SEV-Test", ark_key, "ARK-Test"))


def _sign(report: SnpReport, key: ec.EllipticCurvePrivateKey) -> bytes:
    body = report.to_bytes()[:0x2A0]
    r, s = decode_dss_signature(key.sign(body, ec.ECDSA(hashes.SHA384())))
    signed = dataclasses.replace(
        report, signature_r=r.to_bytes(72, "little"), signature_s=s.to_bytes(72, "little")
    )
    return signed.to_bytes()


def _base(case_dir: Path = MILAN) -> SnpReport:
    return parse_snp_report((case_dir / "report.bin").read_bytes())


def test_fake_hierarchy_verifies(fake: FakeAmd) -> None:
    report = _base()
    key, vcek = fake.vcek(tcb=report.reported_tcb.to_dict(), hw_id=report.chip_id)
    result = _verify(_sign(report, key), fake.files(vcek), _NOW, trust=fake.trust)
    assert result.claims["measurement"] == report.measurement.hex()


def test_fake_bundle_ark_is_not_trusted_by_default(fake: FakeAmd) -> None:
    report = _base()
    key, vcek = fake.vcek(tcb=report.reported_tcb.to_dict(), hw_id=report.chip_id)
    err = _rejects("CERT_CHAIN_INVALID", _sign(report, key), fake.files(vcek), _NOW)
    assert err.field == "ark.pem"


@pytest.mark.parametrize("component", ["bootloader", "tee", "snp", "microcode"])
def test_reported_tcb_mismatch_is_detected(fake: FakeAmd, component: str) -> None:
    report = _base()
    issued_for = report.reported_tcb.to_dict()
    issued_for[component] += 1
    key, vcek = fake.vcek(tcb=issued_for, hw_id=report.chip_id)
    err = _rejects(
        "VCEK_TCB_MISMATCH", _sign(report, key), fake.files(vcek), _NOW, trust=fake.trust
    )
    assert err.field == f"reported_tcb.{component}"
    assert err.actual == str(report.reported_tcb.to_dict()[component])
    assert err.expected is not None
    assert err.expected.startswith(str(issued_for[component]))


def test_reported_tcb_reserved_bytes_are_compared(fake: FakeAmd) -> None:
    report = _base()
    tcb = dataclasses.replace(report.reported_tcb, reserved=b"\x00\x01\x00\x00")
    key, vcek = fake.vcek(tcb=report.reported_tcb.to_dict(), hw_id=report.chip_id)
    signed = _sign(dataclasses.replace(report, reported_tcb=tcb), key)
    err = _rejects("VCEK_TCB_MISMATCH", signed, fake.files(vcek), _NOW, trust=fake.trust)
    assert err.field == "reported_tcb.reserved byte 3"


@pytest.mark.parametrize("case_dir", SNP_CASES, ids=lambda p: p.name)
def test_check_reported_tcb_on_a_modified_dataclass(case_dir: Path) -> None:
    report = _base(case_dir)
    extensions = load_snp_collateral(_files(case_dir)).extensions
    check_reported_tcb(report.reported_tcb, extensions)
    lower = dataclasses.replace(report.reported_tcb, snp=report.reported_tcb.snp - 1)
    with pytest.raises(VerificationError) as exc:
        check_reported_tcb(lower, extensions, leaf="VLEK")
    assert exc.value.code == "VLEK_TCB_MISMATCH"
    assert exc.value.field == "reported_tcb.snp"


def test_chip_id_mismatch_is_detected(fake: FakeAmd) -> None:
    report = _base()
    other = bytes(b ^ 0xFF for b in report.chip_id)
    key, vcek = fake.vcek(tcb=report.reported_tcb.to_dict(), hw_id=other)
    err = _rejects("CHIP_ID_MISMATCH", _sign(report, key), fake.files(vcek), _NOW, trust=fake.trust)
    assert (err.expected, err.actual) == (other.hex(), report.chip_id.hex())


def test_masked_chip_id_with_a_vcek_fails_closed(fake: FakeAmd) -> None:
    report = dataclasses.replace(_base(), chip_id=bytes(64))
    key, vcek = fake.vcek(tcb=report.reported_tcb.to_dict(), hw_id=_base().chip_id)
    err = _rejects("CHIP_ID_MASKED", _sign(report, key), fake.files(vcek), _NOW, trust=fake.trust)
    assert err.field == "chip_id"


def test_check_chip_id_directly() -> None:
    extensions = load_snp_collateral(_files(MILAN)).extensions
    report = _base()
    check_chip_id(report.chip_id, extensions)
    with pytest.raises(VerificationError) as exc:
        check_chip_id(_flip(report.chip_id, 63), extensions)
    assert exc.value.code == "CHIP_ID_MISMATCH"


def test_cpuid_must_agree_with_the_product(fake: FakeAmd) -> None:
    report = _base(GENOA)  # CPUID family 19h model 11h: Genoa
    key, vcek = fake.vcek(
        product="Milan-B0", tcb=report.reported_tcb.to_dict(), hw_id=report.chip_id
    )
    err = _rejects("PRODUCT_MISMATCH", _sign(report, key), fake.files(vcek), _NOW, trust=fake.trust)
    assert err.expected == "a Milan CPU"
    assert err.actual == "family 0x19 model 0x11 (Genoa)"


def test_turin_report_uses_the_turin_tcb_layout(fake: FakeAmd) -> None:
    turin_tcb = TcbVersion(fmc=2, bootloader=3, tee=1, snp=5, microcode=0x44)
    report = dataclasses.replace(
        _base(GENOA),
        cpuid_fam_id=0x1A,
        cpuid_mod_id=0x02,
        cpuid_step=0x01,
        chip_id=bytes(range(1, 9)) + bytes(56),
        reported_tcb=turin_tcb,
    )
    key, vcek = fake.vcek(product="Turin-B0", tcb=turin_tcb.to_dict(), hw_id=bytes(range(1, 9)))
    result = _verify(_sign(report, key), fake.files(vcek), _NOW, trust=fake.trust)
    assert result.claims["product"] == "Turin"
    assert result.claims["reported_tcb"] == "0203010500000044"
    assert result.claims["reported_tcb_decoded"] == {
        "fmc": 2,
        "bootloader": 3,
        "tee": 1,
        "snp": 5,
        "microcode": 0x44,
    }

    # The same bytes read in the Milan layout would name other SVNs: the FMC is checked.
    key, vcek = fake.vcek(
        product="Turin-B0", tcb={**turin_tcb.to_dict(), "fmc": 3}, hw_id=bytes(range(1, 9))
    )
    err = _rejects(
        "VCEK_TCB_MISMATCH", _sign(report, key), fake.files(vcek), _NOW, trust=fake.trust
    )
    assert err.field == "reported_tcb.fmc"


def test_leaf_of_a_collateral_dataclass_is_what_was_loaded(fake: FakeAmd) -> None:
    report = _base()
    _, vcek = fake.vcek(tcb=report.reported_tcb.to_dict(), hw_id=report.chip_id)
    collateral = load_snp_collateral(fake.files(vcek))
    assert isinstance(collateral, SnpCollateral)
    assert collateral.leaf == vcek
    assert collateral.product == "Milan"
    assert collateral.extensions.stepping == "B0"
