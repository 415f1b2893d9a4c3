"""Negative cases: byte flips on real quotes and collateral, and re-signed collateral under a test
PKI, each with the error code and field it must produce."""

from __future__ import annotations

import copy
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

import nacre
from dcap_forge import Forge, forge_from_case
from nacre.collateral.bundle import CollateralBundle
from nacre.collateral.trust import TrustRoots
from nacre.errors import CollateralError, PolicyViolationError, VerificationError
from nacre.evidence.dcap import parse_quote
from nacre.verify import VerifyCache, verify

VECTORS = Path(__file__).resolve().parents[2] / "shared" / "vectors"
TDX = VECTORS / "tdx-v4-dcaprs-00806f05-outofdate"
TDX_NOW = datetime.fromisoformat("2025-02-28T03:00:00+00:00")
SGX = VECTORS / "sgx-v3-phala-processor-ca"
SGX_NOW = datetime.fromisoformat("2025-07-04T10:00:00+00:00")


def _offsets(case: Path) -> dict[str, int]:
    raw = (case / "quote.bin").read_bytes()
    q = parse_quote(raw)
    body_end = len(q.signed_bytes)
    sig_start = body_end + 4
    qe_start = sig_start + 128 + (6 if q.header.version > 3 else 0)
    return {
        "report_data": body_end - 1,
        "quote_signature": sig_start + 5,
        "attestation_key": sig_start + 64 + 7,
        "qe_report": qe_start + 70,
        "qe_report_signature": qe_start + 384 + 3,
        "qe_auth_data": qe_start + 384 + 64 + 2 + 1,
    }


FLIPS = [
    ("report_data", "QUOTE_SIGNATURE_INVALID"),
    ("quote_signature", "QUOTE_SIGNATURE_INVALID"),
    ("attestation_key", "QE_REPORT_DATA_MISMATCH"),
    ("qe_report", "QE_REPORT_SIGNATURE_INVALID"),
    ("qe_report_signature", "QE_REPORT_SIGNATURE_INVALID"),
    ("qe_auth_data", "QE_REPORT_DATA_MISMATCH"),
]


@pytest.mark.parametrize(("case", "now"), [(TDX, TDX_NOW), (SGX, SGX_NOW)], ids=["tdx", "sgx"])
@pytest.mark.parametrize(("region", "code"), FLIPS)
def test_quote_byte_flip(case: Path, now: datetime, region: str, code: str) -> None:
    raw = bytearray((case / "quote.bin").read_bytes())
    raw[_offsets(case)[region]] ^= 0x01
    with pytest.raises(VerificationError) as info:
        verify(bytes(raw), collateral=CollateralBundle.from_dir(case), now=now)
    assert info.value.code == code
    assert info.value.field
    assert info.value.expected
    assert info.value.actual


def _bundle_with(case: Path, name: str, data: bytes) -> CollateralBundle:
    files = dict(CollateralBundle.from_dir(case).files)
    files[name] = data
    return CollateralBundle(files)


@pytest.mark.parametrize(
    ("name", "old", "new", "code"),
    [
        ("tcb_info.json", b'"UpToDate"', b'"Revoked" ', "TCB_INFO_SIGNATURE_INVALID"),
        ("qe_identity.json", b'"isvprodid":2', b'"isvprodid":3', "QE_IDENTITY_SIGNATURE_INVALID"),
    ],
)
def test_collateral_tampering(name: str, old: bytes, new: bytes, code: str) -> None:
    data = (TDX / name).read_bytes()
    assert old in data
    bundle = _bundle_with(TDX, name, data.replace(old, new, 1))
    with pytest.raises(CollateralError) as info:
        verify((TDX / "quote.bin").read_bytes(), collateral=bundle, now=TDX_NOW)
    assert info.value.code == code


@pytest.mark.parametrize(
    ("at", "code"),
    [
        ("2025-03-20T00:00:00+00:00", "COLLATERAL_EXPIRED"),
        ("2025-02-01T00:00:00+00:00", "COLLATERAL_NOT_YET_VALID"),
    ],
)
def test_collateral_time_window(at: str, code: str) -> None:
    with pytest.raises(CollateralError) as info:
        verify(
            (TDX / "quote.bin").read_bytes(),
            collateral=CollateralBundle.from_dir(TDX),
            now=datetime.fromisoformat(at),
        )
    assert info.value.code == code
    assert "refresh" in str(info.value) or "--at" in str(info.value)


def test_cache_rechecks_time_on_every_call() -> None:
    cache = VerifyCache()
    quote = (TDX / "quote.bin").read_bytes()
    bundle = CollateralBundle.from_dir(TDX)
    verify(quote, collateral=bundle, now=TDX_NOW, cache=cache)
    assert len(cache) > 0
    with pytest.raises(CollateralError) as info:
        verify(
            quote,
            collateral=bundle,
            now=datetime.fromisoformat("2025-04-20T00:00:00+00:00"),
            cache=cache,
        )
    assert info.value.code == "COLLATERAL_EXPIRED"


def test_tdx_collateral_for_sgx_quote_is_refused() -> None:
    files = dict(CollateralBundle.from_dir(SGX).files)
    tdx = VECTORS / "tdx-v4-phala-b0c06f-uptodate"
    for name in ("tcb_info.json", "tcb_info_issuer_chain.pem"):
        files[name] = (tdx / name).read_bytes()
    with pytest.raises(VerificationError) as info:
        verify((SGX / "quote.bin").read_bytes(), collateral=CollateralBundle(files), now=SGX_NOW)
    assert info.value.code == "COLLATERAL_MISMATCH"


def test_missing_collateral_file_is_named() -> None:
    files = dict(CollateralBundle.from_dir(TDX).files)
    del files["pck_crl.der"]
    with pytest.raises(CollateralError) as info:
        verify((TDX / "quote.bin").read_bytes(), collateral=CollateralBundle(files), now=TDX_NOW)
    assert info.value.code == "COLLATERAL_MISSING"
    assert info.value.field == "pck_crl.der"


def test_intel_root_in_bundle_is_not_trusted_by_default() -> None:
    f = forge_from_case(TDX)
    # A forged chain ending in a self-signed root nacre does not pin is refused, whatever the bundle.
    files = dict(f.bundle().files)
    files["root_ca_crl.der"] = (TDX / "root_ca_crl.der").read_bytes()
    with pytest.raises(VerificationError) as info:
        verify(f.quote(), collateral=CollateralBundle(files), now=TDX_NOW)
    assert info.value.code == "CERT_CHAIN_INVALID"
    assert "trust" in str(info.value)


# ---- re-signed under a test PKI ---------------------------------------------------------------


def _forge() -> Forge:
    return forge_from_case(TDX)


def test_forged_chain_verifies_with_its_root_trusted() -> None:
    f = _forge()
    r = verify(f.quote(), collateral=f.bundle(), now=TDX_NOW, trust=f.trust)
    assert r.tcb_status == "OutOfDate"


def test_trust_root_file_on_cli(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.serialization import Encoding
    from typer.testing import CliRunner

    from nacre.cli import app

    f = _forge()
    (tmp_path / "quote.bin").write_bytes(f.quote())
    f.bundle().write_dir(tmp_path)
    (tmp_path / "root.pem").write_bytes(f.root.public_bytes(Encoding.PEM))
    args = ["verify", str(tmp_path / "quote.bin"), "--at", "2025-02-28T03:00:00Z", "--json"]
    assert CliRunner().invoke(app, args).exit_code == 1
    res = CliRunner().invoke(app, [*args, "--trust-root", str(tmp_path / "root.pem")])
    assert res.exit_code == 0, res.stdout


@pytest.mark.parametrize(
    ("attr", "code"),
    [
        ("pck_revoked", "PCK_REVOKED"),
        ("ca_revoked", "PCK_REVOKED"),
        ("pck_crl_from_root", "CRL_INVALID"),
    ],
)
def test_revocation(attr: str, code: str) -> None:
    f = _forge()
    setattr(f, attr, True)
    with pytest.raises(VerificationError) as info:
        verify(f.quote(), collateral=f.bundle(), now=TDX_NOW, trust=f.trust)
    assert info.value.code == code


def _levels(f: Forge) -> list[dict[str, Any]]:
    levels = f.tcb_info["tcbLevels"]
    assert isinstance(levels, list)
    return levels


def test_fmspc_mismatch() -> None:
    f = _forge()
    f.tcb_info["fmspc"] = "00906ED50000"
    with pytest.raises(VerificationError) as info:
        verify(f.quote(), collateral=f.bundle(), now=TDX_NOW, trust=f.trust)
    assert info.value.code == "FMSPC_MISMATCH"
    assert info.value.expected == "00806f050000"


def test_revoked_tcb_is_rejected_by_baseline_but_reported() -> None:
    f = _forge()
    for level in _levels(f):
        level["tcbStatus"] = "Revoked"
    with pytest.raises(PolicyViolationError) as info:
        nacre.verify_evidence(f.quote(), collateral=f.bundle(), now=TDX_NOW, trust=f.trust)
    assert info.value.code == "TCB_REVOKED"
    r = nacre.verify_evidence(
        f.quote(),
        collateral=f.bundle(),
        now=TDX_NOW,
        trust=f.trust,
        policy=nacre.BaselinePolicy(unsafe_allow_revoked_tcb=True),
    )
    assert r.tcb_status == "Revoked"


def test_tcb_not_supported_when_every_level_is_higher() -> None:
    f = _forge()
    for level in _levels(f):
        level["tcb"]["pcesvn"] = 99
    with pytest.raises(VerificationError) as info:
        verify(f.quote(), collateral=f.bundle(), now=TDX_NOW, trust=f.trust)
    assert info.value.code == "TCB_NOT_SUPPORTED"


def test_out_of_date_qe_converges_configuration_needed() -> None:
    # Intel QVL: platform ConfigurationNeeded + QE OutOfDate -> OutOfDateConfigurationNeeded.
    f = _forge()
    for level in _levels(f):
        level["tcbStatus"] = "ConfigurationNeeded"
    qe_levels = f.qe_identity["tcbLevels"]
    assert isinstance(qe_levels, list)
    for level in qe_levels:
        level["tcbStatus"] = "OutOfDate"
        level["advisoryIDs"] = ["INTEL-SA-99999"]
    r = verify(f.quote(), collateral=f.bundle(), now=TDX_NOW, trust=f.trust)
    assert r.tcb_status == "OutOfDateConfigurationNeeded"
    assert "INTEL-SA-99999" in r.advisory_ids


def test_qe_identity_mismatch() -> None:
    f = _forge()
    f.qe_identity["mrsigner"] = "00" * 32
    with pytest.raises(VerificationError) as info:
        verify(f.quote(), collateral=f.bundle(), now=TDX_NOW, trust=f.trust)
    assert info.value.code == "QE_IDENTITY_MISMATCH"
    assert info.value.field == "QE MRSIGNER"


def test_tdx_module_signer_mismatch() -> None:
    f = _forge()
    identities = copy.deepcopy(f.tcb_info.get("tdxModuleIdentities", []))
    assert isinstance(identities, list)
    assert identities
    for ident in identities:
        ident["mrsigner"] = "11" * 48
    f.tcb_info["tdxModuleIdentities"] = identities
    with pytest.raises(VerificationError) as info:
        verify(f.quote(), collateral=f.bundle(), now=TDX_NOW, trust=f.trust)
    assert info.value.code == "TDX_MODULE_MISMATCH"


def test_unsupported_cert_data_type_says_so() -> None:
    raw = bytearray((SGX / "quote.bin").read_bytes())
    q = parse_quote(bytes(raw))
    off = len(raw) - len(q.trailing) - len(q.signature.qe.certification_data.data) - 6
    raw[off] = 3  # certification data type 3: encrypted PPID, needs a PCK lookup
    with pytest.raises(VerificationError) as info:
        parse_quote(bytes(raw))
    assert (
        "unsupported certification data type 3: this quote needs a PCK certificate lookup"
        in str(info.value)
    )


def test_trust_roots_default_are_pinned() -> None:
    roots = TrustRoots.default()
    assert len(roots.intel) == 1
    assert {"Milan", "Genoa"} <= set(roots.amd)


def test_evidence_over_the_size_limit_is_refused() -> None:
    from nacre.errors import LimitExceededError, MalformedEvidenceError
    from nacre.limits import MAX_EVIDENCE_BYTES

    raw = (TDX / "quote.bin").read_bytes()
    big = raw + bytes(MAX_EVIDENCE_BYTES)
    with pytest.raises(MalformedEvidenceError) as info:
        verify(big, collateral=CollateralBundle.from_dir(TDX), now=TDX_NOW)
    assert isinstance(info.value, LimitExceededError)
    assert info.value.field == "evidence size"


def test_collateral_file_over_the_limit_is_refused(tmp_path: Path) -> None:
    from nacre.errors import LimitExceededError
    from nacre.limits import MAX_COLLATERAL_FILE_BYTES

    (tmp_path / "tcb_info.json").write_bytes(b" " * (MAX_COLLATERAL_FILE_BYTES + 1))
    with pytest.raises(LimitExceededError) as info:
        CollateralBundle.from_dir(tmp_path)
    assert info.value.field == "tcb_info.json"


def test_damaged_root_name_attribute_is_a_chain_error() -> None:
    # Found by the heavy dcap-qvl mutation campaign: this flip turns a Name attribute of the
    # quote's root certificate into a BIT STRING, which cryptography refuses with TypeError.
    case = VECTORS / "tdx-v4-phala-b0c06f-uptodate"
    raw = bytearray((case / "quote.bin").read_bytes())
    raw[0x1133] = 0x44
    with pytest.raises(VerificationError) as info:
        verify(
            bytes(raw),
            collateral=CollateralBundle.from_dir(case),
            now=datetime.fromisoformat("2025-07-04T10:00:00+00:00"),
        )
    assert info.value.code == "CERT_CHAIN_INVALID"
