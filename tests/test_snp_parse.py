"""SEV-SNP ATTESTATION_REPORT parser: real vectors, layout, truncation, versions, properties."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nacre.errors import MalformedEvidenceError, UnsupportedEvidenceError
from nacre.evidence.snp import (
    REPORT_SIZE,
    SIGNED_SIZE,
    SnpReport,
    TcbVersion,
    extract_snp_from_hcl,
    parse_snp_report,
    product_from_cpuid,
    tcb_layout_for_product,
)

VECTORS = Path(__file__).resolve().parents[2] / "shared" / "vectors"
SNP_CASES = sorted(p for p in VECTORS.glob("snp-*") if p.is_dir())


def _case(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((path / "case.json").read_text())
    return data


def _report(path: Path) -> bytes:
    return (path / "report.bin").read_bytes()


def _with(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value) :]


V2 = _report(VECTORS / "snp-v2-milan-virtee")
V3 = _report(VECTORS / "snp-v3-genoa-azure-trustee")


def test_the_snp_vector_set_is_present() -> None:
    assert [p.name for p in SNP_CASES] == [
        "snp-v2-milan-go-sev-guest",
        "snp-v2-milan-virtee",
        "snp-v3-genoa-azure-trustee",
        "snp-v3-milan-vlek-trustee",
    ]


@pytest.mark.parametrize("case_dir", SNP_CASES, ids=lambda p: p.name)
def test_vector_fields_equal_case_claims(case_dir: Path) -> None:
    claims = _case(case_dir)["claims"]
    r = parse_snp_report(_report(case_dir))

    assert r.version == claims["version"] == _case(case_dir)["report_version"]
    for name in ("guest_svn", "policy", "vmpl", "signature_algo", "platform_info"):
        assert getattr(r, name) == claims[name], name
    for name in (
        "family_id",
        "image_id",
        "report_data",
        "measurement",
        "host_data",
        "id_key_digest",
        "author_key_digest",
        "report_id",
        "report_id_ma",
        "chip_id",
    ):
        assert getattr(r, name).hex() == claims[name], name
    for name in ("current_tcb", "reported_tcb", "committed_tcb", "launch_tcb"):
        tcb = getattr(r, name)
        assert tcb.hex() == claims[name], name
        assert tcb.to_dict() == claims[f"{name}_decoded"], name
    for name in (
        "current_build",
        "current_minor",
        "current_major",
        "committed_build",
        "committed_minor",
        "committed_major",
    ):
        assert getattr(r, name) == claims[name], name
    assert int(r.author_key_en) == claims["author_key_en"]
    assert int(r.mask_chip_key) == claims["mask_chip_key"]
    assert r.signing_key == claims["signing_key"]
    assert r.signature_r.hex() == claims["sig_r"]
    assert r.signature_s.hex() == claims["sig_s"]
    if r.version >= 3:
        assert r.cpuid_fam_id == claims["cpuid_fam_id"]
        assert r.cpuid_mod_id == claims["cpuid_mod_id"]
        assert r.cpuid_step == claims["cpuid_step"]
    else:
        assert "cpuid_fam_id" not in claims
        assert r.cpuid_fam_id is None
        assert r.cpuid_mod_id is None
        assert r.cpuid_step is None
    assert r.launch_mit_vector is None
    assert r.current_mit_vector is None

    policy = dataclasses.asdict(r.policy_decoded)
    assert {k: policy[k] for k in claims["policy_decoded"]} == claims["policy_decoded"]
    info = dataclasses.asdict(r.platform_info_decoded)
    assert {k: info[k] for k in claims["platform_info_decoded"]} == claims["platform_info_decoded"]
    assert r.debug_allowed == claims["policy_decoded"]["debug_allowed"]


@pytest.mark.parametrize("case_dir", SNP_CASES, ids=lambda p: p.name)
def test_vector_round_trips_byte_exact(case_dir: Path) -> None:
    data = _report(case_dir)
    assert len(data) == REPORT_SIZE == 0x4A0
    assert parse_snp_report(data).to_bytes() == data


@pytest.mark.parametrize("case_dir", SNP_CASES, ids=lambda p: p.name)
def test_offsets_match_the_abi_table(case_dir: Path) -> None:
    # Offsets written out from the ABI spec table, independently of the module's constants.
    data = _report(case_dir)
    r = parse_snp_report(data)
    assert data[0x050:0x090] == r.report_data
    assert data[0x090:0x0C0] == r.measurement
    assert data[0x0C0:0x0E0] == r.host_data
    assert data[0x180:0x188] == r.reported_tcb.to_bytes()
    assert data[0x1A0:0x1E0] == r.chip_id
    assert data[0x2A0:0x2E8] == r.signature_r
    assert data[0x2E8:0x330] == r.signature_s
    assert SIGNED_SIZE == 0x2A0


def test_azure_hcl_report_carries_the_snp_report() -> None:
    case_dir = VECTORS / "snp-v3-genoa-azure-trustee"
    hcl = (case_dir / "hcl_report.bin").read_bytes()
    assert extract_snp_from_hcl(hcl) == _report(case_dir)


def test_hcl_without_magic_is_rejected() -> None:
    with pytest.raises(MalformedEvidenceError) as exc:
        extract_snp_from_hcl(b"XXXX" + bytes(0x500))
    assert exc.value.code == "REPORT_MALFORMED"
    assert exc.value.field == "hcl header"
    assert exc.value.actual == b"XXXX".hex()


def test_truncated_hcl_is_rejected() -> None:
    hcl = (VECTORS / "snp-v3-genoa-azure-trustee" / "hcl_report.bin").read_bytes()
    with pytest.raises(MalformedEvidenceError) as exc:
        extract_snp_from_hcl(hcl[:0x400])
    assert exc.value.expected == f">= {0x20 + 0x4A0} bytes"
    assert exc.value.actual == f"{0x400} bytes"


@pytest.mark.parametrize(
    ("data", "cut", "field"),
    [
        (V2, 0, "version"),
        (V2, 3, "version"),
        (V2, 0x10, "family_id"),
        (V2, 0x50 + 10, "report_data"),
        (V2, 0x188, "reserved_18b"),  # version 2: no CPUID fields
        (V3, 0x189, "cpuid_mod_id"),
        (V3, 0x1A0 + 63, "chip_id"),
        (V2, 0x1F8, "reserved_208"),
        (V3, 0x2A0 + 1, "signature_r"),
        (V3, 0x2E8, "signature_s"),
        (V3, REPORT_SIZE - 1, "signature_reserved"),
    ],
)
def test_truncated_report_names_the_field(data: bytes, cut: int, field: str) -> None:
    with pytest.raises(MalformedEvidenceError) as exc:
        parse_snp_report(data[:cut])
    assert exc.value.code == "REPORT_MALFORMED"
    assert exc.value.field == field
    assert exc.value.actual == f"{max(cut - _offset_of(field, data), 0)} bytes left"


def _offset_of(field: str, data: bytes) -> int:
    offsets = {
        "version": 0,
        "family_id": 0x10,
        "report_data": 0x50,
        "reserved_18b": 0x188 if data is V2 else 0x18B,
        "cpuid_mod_id": 0x189,
        "chip_id": 0x1A0,
        "reserved_208": 0x1F8,
        "signature_r": 0x2A0,
        "signature_s": 0x2E8,
        "signature_reserved": 0x330,
    }
    return offsets[field]


def test_trailing_bytes_are_rejected() -> None:
    with pytest.raises(MalformedEvidenceError) as exc:
        parse_snp_report(V2 + b"\x00")
    assert exc.value.field == "report size"
    assert exc.value.expected == "1184 bytes"
    assert exc.value.actual == "1185 bytes"


@pytest.mark.parametrize("version", [0, 1, 6, 0xFFFFFFFF])
def test_unknown_versions_are_unsupported(version: int) -> None:
    data = _with(V3, 0, version.to_bytes(4, "little"))
    with pytest.raises(UnsupportedEvidenceError) as exc:
        parse_snp_report(data)
    assert exc.value.code == "REPORT_MALFORMED"
    assert exc.value.field == "version"
    assert exc.value.expected == "2 or 3 or 4 or 5"
    assert exc.value.actual == str(version)


@pytest.mark.parametrize("algo", [0, 2, 0x100])
def test_signature_algorithm_must_be_ecdsa_p384(algo: int) -> None:
    with pytest.raises(UnsupportedEvidenceError) as exc:
        parse_snp_report(_with(V2, 0x34, algo.to_bytes(4, "little")))
    assert exc.value.field == "signature_algo"
    assert exc.value.actual == str(algo)
    assert exc.value.expected is not None
    assert exc.value.expected.startswith("1 ")


def test_version_4_reads_like_version_3() -> None:
    r = parse_snp_report(_with(V3, 0, (4).to_bytes(4, "little")))
    assert (r.cpuid_fam_id, r.cpuid_mod_id, r.cpuid_step) == (0x19, 0x11, 0x01)
    assert r.launch_mit_vector is None
    assert r.product == "Genoa"


def test_version_5_has_mitigation_vectors() -> None:
    data = _with(V3, 0, (5).to_bytes(4, "little"))
    data = _with(data, 0x1F8, (0x1122334455667788).to_bytes(8, "little"))
    data = _with(data, 0x200, (0x0F).to_bytes(8, "little"))
    r = parse_snp_report(data)
    assert r.launch_mit_vector == 0x1122334455667788
    assert r.current_mit_vector == 0x0F
    assert len(r.reserved_208) == 152
    assert r.to_bytes() == data


def test_version_2_keeps_the_cpuid_bytes_as_reserved() -> None:
    data = _with(V2, 0x188, b"\x19\x01\x01")
    r = parse_snp_report(data)
    assert r.cpuid_fam_id is None
    assert r.reserved_18b[:3] == b"\x19\x01\x01"
    assert len(r.reserved_18b) == 24
    assert r.to_bytes() == data


def test_turin_cpuid_selects_the_turin_tcb_layout() -> None:
    data = _with(V3, 0x188, b"\x1a\x02\x00")
    tcb = bytes([1, 4, 0, 23, 0, 0, 0, 0x54])  # fmc, bootloader, tee, snp, reserved x3, microcode
    data = _with(data, 0x180, tcb)
    r = parse_snp_report(data)
    assert r.product == "Turin"
    assert r.reported_tcb == TcbVersion(fmc=1, bootloader=4, tee=0, snp=23, microcode=0x54)
    assert r.reported_tcb.to_dict() == {
        "fmc": 1,
        "bootloader": 4,
        "tee": 0,
        "snp": 23,
        "microcode": 0x54,
    }
    assert r.to_bytes() == data


@given(st.binary(min_size=8, max_size=8), st.sampled_from(["milan", "turin"]))
def test_tcb_version_round_trips_in_both_layouts(raw: bytes, layout: str) -> None:
    tcb = TcbVersion.from_bytes(raw, "turin" if layout == "turin" else "milan")
    assert tcb.to_bytes() == raw
    assert tcb.layout == layout


def test_milan_tcb_layout() -> None:
    tcb = TcbVersion.from_bytes(bytes.fromhex("0300000000000873"), "milan")
    assert tcb.to_dict() == {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 0x73}
    assert tcb.hex() == "0300000000000873"


@pytest.mark.parametrize(
    ("family", "model", "product"),
    [
        (0x19, 0x01, "Milan"),
        (0x19, 0x11, "Genoa"),
        (0x19, 0xA0, "Genoa"),
        (0x1A, 0x02, "Turin"),
        (0x19, 0x50, None),
        (0x17, 0x31, None),
    ],
)
def test_product_from_cpuid(family: int, model: int, product: str | None) -> None:
    assert product_from_cpuid(family, model) == product


def test_tcb_layout_for_product() -> None:
    assert tcb_layout_for_product("Milan-B0") == "milan"
    assert tcb_layout_for_product("Genoa") == "milan"
    assert tcb_layout_for_product("Turin-B0") == "turin"


def test_policy_bits() -> None:
    policy = parse_snp_report(_with(V2, 0x08, (0x1F0000 | 0x0203).to_bytes(8, "little")))
    p = policy.policy_decoded
    assert (p.abi_major, p.abi_minor) == (2, 3)
    assert p.smt_allowed
    assert p.reserved_bit17_must_be_1
    assert p.migrate_ma_allowed
    assert p.debug_allowed
    assert p.single_socket_only
    assert not p.cxl_allowed
    assert policy.debug_allowed


def test_signing_key_and_mask_bits() -> None:
    r = parse_snp_report(_with(V2, 0x48, (0b11111).to_bytes(4, "little")))
    assert r.author_key_en
    assert r.mask_chip_key
    assert r.signing_key == 7


def test_report_is_frozen_and_slotted() -> None:
    r = parse_snp_report(V2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.vmpl = 3  # type: ignore[misc]
    assert not hasattr(r, "__dict__")


def test_replace_checks_sizes_and_version_fields() -> None:
    r = parse_snp_report(V2)
    with pytest.raises(ValueError, match="measurement must be 48 bytes"):
        dataclasses.replace(r, measurement=b"\x00" * 47)
    with pytest.raises(ValueError, match="cpuid_fam_id does not exist in report version 2"):
        dataclasses.replace(r, cpuid_fam_id=0x19)
    with pytest.raises(ValueError, match="vmpl must fit in 32 unsigned bits"):
        dataclasses.replace(r, vmpl=-1)
    changed = dataclasses.replace(r, measurement=bytes(range(48)))
    assert changed.to_bytes()[0x90:0xC0] == bytes(range(48))


def _parse_or_error(data: bytes) -> SnpReport | MalformedEvidenceError:
    try:
        return parse_snp_report(data)
    except MalformedEvidenceError as exc:  # any other exception fails the property
        return exc


@given(st.binary(max_size=REPORT_SIZE + 64))
def test_any_bytes_parse_or_raise_malformed(data: bytes) -> None:
    outcome = _parse_or_error(data)
    if isinstance(outcome, MalformedEvidenceError):
        assert outcome.code == "REPORT_MALFORMED"
        assert outcome.field
    else:
        assert outcome.to_bytes() == data


@st.composite
def _plausible_reports(draw: st.DrawFn) -> bytes:
    body = draw(st.binary(min_size=REPORT_SIZE - 8, max_size=REPORT_SIZE - 8))
    version = draw(st.sampled_from([2, 3, 4, 5]))
    return version.to_bytes(4, "little") + body[:0x30] + (1).to_bytes(4, "little") + body[0x30:]


@given(_plausible_reports())
def test_any_well_framed_report_round_trips(data: bytes) -> None:
    assert len(data) == REPORT_SIZE
    report = parse_snp_report(data)
    assert report.to_bytes() == data
    assert isinstance(report, SnpReport)
