"""Every case in shared/vectors gets its expected verdict, TCB status, advisories, error code and key
claims, from the Python API and from the CLI (``nacre verify --json``)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import nacre
from nacre.cli import app
from nacre.errors import PolicyViolationError, VerificationError

VECTORS = Path(__file__).resolve().parents[2] / "shared" / "vectors"
INDEX = json.loads((VECTORS / "index.json").read_text())["cases"]
IDS = [c["id"] for c in INDEX]

# case.json spells a few claims differently from DESIGN.md's claim names.
_RENAME = {"mr_enclave": "mrenclave", "mr_signer": "mrsigner"}
# Decoded helper fields in case.json that are not claims of ours.
_NOT_CLAIMS = {"policy_decoded", "reported_tcb_decoded", "signing_key", "pck_ca"}


def _case(case_id: str) -> tuple[Path, dict[str, Any], datetime]:
    d = VECTORS / case_id
    case = json.loads((d / "case.json").read_text())
    now = datetime.fromisoformat(case["verification_time"].replace("Z", "+00:00"))
    return d, case, now


def _evidence(d: Path) -> Path:
    for name in ("quote.bin", "report.bin"):
        if (d / name).exists():
            return d / name
    raise AssertionError(f"no evidence in {d}")


def _expected(case: dict[str, Any]) -> dict[str, Any]:
    """case.json's expectation, with the baseline policy applied to SEV-SNP.

    SGX/TDX expectations already include the debug/SEPT_VE/MRSERVICETD policy (policy_error).
    SNP expectations come from a verifier that applies no policy ("basis"); nacre's baseline refuses
    a guest whose POLICY allows debugging (the host can then read its memory with
    SNP_DBG_DECRYPT), so such a case is expected as a DEBUG_GUEST policy rejection.
    """
    exp = dict(case["expected"])
    if case["tee"] == "sev-snp" and case["key_claims"]["policy_decoded"]["debug_allowed"]:
        assert exp["verdict"] == "ok"
        exp.update(verdict="error", error="DEBUG_GUEST")
    return exp


def _check_claims(claims: dict[str, Any], key_claims: dict[str, Any]) -> None:
    for k, v in key_claims.items():
        if k in _NOT_CLAIMS:
            continue
        name = _RENAME.get(k, k)
        assert name in claims, f"claim {name} missing"
        assert claims[name] == v, f"claim {name}: {claims[name]!r} != {v!r}"


def test_index_covers_all_case_dirs() -> None:
    dirs = {p.name for p in VECTORS.iterdir() if (p / "case.json").exists()}
    assert dirs == set(IDS)


@pytest.mark.parametrize("case_id", IDS)
def test_api_verdict(case_id: str) -> None:
    d, case, now = _case(case_id)
    exp = _expected(case)
    bundle = nacre.CollateralBundle.from_dir(d)
    data = _evidence(d).read_bytes()
    if exp["verdict"] == "ok":
        result = nacre.verify_evidence(data, collateral=bundle, now=now)
        assert result.tcb_status == exp["tcb_status"]
        assert list(result.advisory_ids) == exp["advisory_ids"]
        assert result.sim is False
        _check_claims(dict(result.claims), case["key_claims"])
        return
    with pytest.raises(VerificationError) as info:
        nacre.verify_evidence(data, collateral=bundle, now=now)
    err = info.value
    assert err.code == exp["error"], str(err)
    if exp["error"] in ("DEBUG_ENCLAVE", "DEBUG_TD", "DEBUG_GUEST"):
        assert isinstance(err, PolicyViolationError)
        assert err.verified.tcb_status == exp["tcb_status"]
        assert list(err.verified.advisory_ids) == exp["advisory_ids"]
        _check_claims(dict(err.verified.claims), case["key_claims"])
    assert err.field, "a rejection names the field"


@pytest.mark.parametrize("case_id", IDS)
def test_cli_json_verdict(case_id: str) -> None:
    d, case, _now = _case(case_id)
    exp = _expected(case)
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "verify",
            str(_evidence(d)),
            "--collateral",
            str(d),
            "--at",
            case["verification_time"],
            "--json",
        ],
    )
    out = json.loads(res.stdout)
    tee = {"sev-snp": "snp"}.get(case["tee"], case["tee"])
    assert out["tee"] == tee
    if exp["verdict"] == "ok":
        assert res.exit_code == 0, res.stdout
        assert out["verdict"] == "ok"
        assert out["error"] is None
        assert out["tcb_status"] == exp["tcb_status"]
        assert out["advisory_ids"] == exp["advisory_ids"]
        _check_claims(out["claims"], case["key_claims"])
    else:
        assert res.exit_code == 1, res.stdout
        assert out["verdict"] == "rejected"
        assert out["error"]["code"] == exp["error"]
        assert out["tcb_status"] == exp["tcb_status"]
        assert out["error"]["field"]
        assert out["error"]["message"]
    assert set(out) >= {
        "verdict",
        "tee",
        "version",
        "tcb_status",
        "advisory_ids",
        "claims",
        "error",
    }


@pytest.mark.parametrize(
    "case_id", ["sgx-v3-automata-solana-debug-enclave", "tdx-v4-trustee-debug-td-50806f"]
)
def test_allow_debug_flag_accepts_debug_evidence(case_id: str) -> None:
    d, case, _ = _case(case_id)
    res = CliRunner().invoke(
        app,
        [
            "verify",
            str(d / "quote.bin"),
            "--at",
            case["verification_time"],
            "--allow-debug",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.stdout
    assert json.loads(res.stdout)["tcb_status"] == case["expected"]["tcb_status"]


def test_human_output_names_chain_collateral_and_tcb() -> None:
    d, case, _ = _case("tdx-v4-dcaprs-00806f05-outofdate")
    res = CliRunner().invoke(
        app, ["verify", str(d / "quote.bin"), "--at", case["verification_time"]]
    )
    assert res.exit_code == 0
    for text in (
        "VERIFIED",
        "OutOfDate",
        "Intel SGX Root CA",
        "PCK Platform CA",
        "TCB info",
        "INTEL-SA-00960",
        "QE",
    ):
        assert text in res.stdout


def test_human_rejection_says_what_to_do() -> None:
    d, _, _ = _case("tdx-v4-dcaprs-00806f05-outofdate")
    res = CliRunner().invoke(app, ["verify", str(d / "quote.bin"), "--at", "2025-08-28T03:00:00Z"])
    assert res.exit_code == 1
    assert "COLLATERAL_EXPIRED" in res.stdout
    assert "nacre collateral fetch" in res.stdout
    assert "expected" in res.stdout


def test_cli_usage_errors_exit_2(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["verify", str(tmp_path / "missing.bin"), "--json"])
    assert res.exit_code == 2
    assert json.loads(res.stdout)["error"]["code"] == "USAGE"
    d, _, _ = _case("tdx-v4-dcaprs-00806f05-outofdate")
    res = runner.invoke(app, ["verify", str(d / "quote.bin"), "--at", "yesterday"])
    assert res.exit_code == 2
    res = runner.invoke(app, ["verify", str(d / "quote.bin"), "--trust-sim"])
    assert res.exit_code == 2
