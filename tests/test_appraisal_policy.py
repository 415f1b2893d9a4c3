"""Appraisal policies (issue 4 item 1): documents, reference values, CEL rules, status and vector,
on real verified evidence (shared vectors at their case times, and the simulated platform)."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

import nacre
from nacre.appraisal import (
    AppraisalResult,
    Policy,
    PolicyDocumentError,
    Rule,
    appraise,
    load_policy,
    parse_policy,
    policy_from_dict,
)
from nacre.appraisal.cel import MAX_CEL_EXPR_CHARS
from nacre.cli import app
from nacre.errors import NacreError
from nacre.sim.measure import Manifest, ManifestFile
from nacre.sim.platform import SimPlatform
from nacre.verify import verify
from nacre.verify.result import VerifiedEvidence

VECTORS = Path(__file__).resolve().parents[2] / "shared" / "vectors"

SGX_OK = "sgx-v3-phala-processor-ca"  # ConfigurationAndSWHardeningNeeded, advisories 289/615
SGX_DEBUG = "sgx-v3-automata-solana-debug-enclave"
TDX_OK = "tdx-v4-gtg-cos113-00806f05-uptodate"
TDX_DEBUG = "tdx-v4-trustee-debug-td-50806f"
SNP_OK = "snp-v2-milan-virtee"

ALL_STATUSES = [
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
]


# -- evidence ------------------------------------------------------------------------------


def _case(case_id: str) -> tuple[Path, Path, str]:
    d = VECTORS / case_id
    case = json.loads((d / "case.json").read_text())
    ev = d / "quote.bin" if (d / "quote.bin").exists() else d / "report.bin"
    return d, ev, str(case["verification_time"])


_VERIFIED: dict[str, VerifiedEvidence] = {}


def vector(case_id: str) -> VerifiedEvidence:
    """The case's evidence verified (no baseline policy) at its case time."""
    if case_id not in _VERIFIED:
        d, ev, when = _case(case_id)
        now = datetime.fromisoformat(when.replace("Z", "+00:00"))
        _VERIFIED[case_id] = verify(
            ev.read_bytes(), collateral=nacre.CollateralBundle.from_dir(d), now=now
        )
    return _VERIFIED[case_id]


def pol(**doc: Any) -> Policy:
    return policy_from_dict({"version": 1, "name": "t", **doc})


def check(result: AppraisalResult, name: str) -> tuple[bool, str, str, str]:
    [c] = [c for c in result.checks if c.name == name]
    return c.passed, c.expected, c.actual, c.message


def names(result: AppraisalResult) -> list[str]:
    return [c.name for c in result.checks]


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> SimPlatform:
    return SimPlatform.init(tmp_path_factory.mktemp("sim"))


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    body = b"print('model server')\n"
    return Manifest(
        name="model-server",
        entrypoint="app.py",
        files=(ManifestFile("app.py", hashlib.sha256(body).digest()),),
        isv_prod_id=7,
        isv_svn=3,
    )


def sim_verified(p: SimPlatform, tee: str, m: Manifest | None = None) -> VerifiedEvidence:
    now = datetime.now(UTC)
    quote = p.quote(tee, b"\x42" * 64, m)
    return verify(quote, collateral=p.bundle(tee, now=now), now=now, trust=p.trust_roots())


# -- reference values per TEE, on the shared vectors -----------------------------------------


def test_sgx_reference_values_pass_and_warning_for_allowed_non_uptodate_tcb() -> None:
    v = vector(SGX_OK)
    c = v.claims
    p = pol(
        tcb_status=["UpToDate", "ConfigurationAndSWHardeningNeeded"],
        sgx={
            "mrenclave": ["00" * 32, str(c["mrenclave"]).upper()],
            "mrsigner": ["0x" + str(c["mrsigner"])],
            "isv_prod_id": [c["isv_prod_id"]],
            "min_isv_svn": 0,
            "config_id": [c["config_id"]],
        },
    )
    r = appraise(v, p)
    assert all(x.passed for x in r.checks), r.checks
    assert r.status == "warning"  # allowed, but not UpToDate
    assert names(r) == [
        "tee",
        "sim",
        "tcb_status",
        "debug",
        "sgx.mrenclave",
        "sgx.mrsigner",
        "sgx.isv_prod_id",
        "sgx.min_isv_svn",
        "sgx.config_id",
    ]
    tw = r.trustworthiness.to_dict()
    assert tw["hardware"] == 32  # unsafe_hw: genuine, known vulnerabilities
    assert tw["executables"] == 2
    assert tw["instance-identity"] == 2
    assert tw["file-system"] == tw["storage-opaque"] == tw["sourced-data"] == 0
    assert "INTEL-SA-00615" in check(r, "tcb_status")[3]


def test_sgx_reference_mismatches_are_all_reported() -> None:
    v = vector(SGX_OK)
    p = pol(
        sgx={
            "mrenclave": ["ab" * 32],
            "mrsigner": ["cd" * 32],
            "isv_prod_id": [5],
            "min_isv_svn": 2,
        }
    )
    r = appraise(v, p)
    assert r.status == "contraindicated"
    assert not r.passed
    failed = [c.name for c in r.failed_checks]
    # the default tcb_status list is [UpToDate]: the vector's status is refused too
    assert failed == [
        "tcb_status",
        "sgx.mrenclave",
        "sgx.mrsigner",
        "sgx.isv_prod_id",
        "sgx.min_isv_svn",
    ]
    _ok, expected, actual, message = check(r, "sgx.mrenclave")
    assert expected == "ab" * 32
    assert actual == v.claims["mrenclave"]
    assert "not among" in message
    assert check(r, "sgx.min_isv_svn")[1:3] == (">= 2", "0")
    tw = r.trustworthiness.to_dict()
    assert tw["executables"] == 33  # unrecognized_rt
    assert tw["hardware"] == 96


@pytest.mark.parametrize(
    ("allowed", "status"), [(["UpToDate"], "contraindicated"), (ALL_STATUSES, "warning")]
)
def test_tcb_status_allowed_or_not(allowed: list[str], status: str) -> None:
    r = appraise(vector(SGX_OK), pol(tcb_status=allowed))
    assert r.status == status
    assert check(r, "tcb_status")[2] == "ConfigurationAndSWHardeningNeeded"


def test_tdx_reference_values_affirming_and_rtmr_mismatch() -> None:
    v = vector(TDX_OK)
    c = v.claims
    good = {
        k: [c[k]] for k in ("mr_td", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "mr_config_id", "mr_owner")
    }
    r = appraise(v, pol(tdx=good))
    assert r.status == "affirming", [x for x in r.checks if not x.passed]
    assert {"tdx.td_attributes.reserved", "tdx.sept_ve_disable", "tdx.mr_td", "tdx.rtmr3"} <= set(
        names(r)
    )
    assert r.trustworthiness.to_dict() == {
        "instance-identity": 2,
        "configuration": 2,
        "executables": 2,
        "file-system": 0,
        "hardware": 2,
        "runtime-opaque": 2,
        "storage-opaque": 0,
        "sourced-data": 0,
    }
    bad = dict(good, rtmr2=["11" * 48], mr_config_id=["22" * 48])
    r = appraise(v, pol(tdx=bad))
    assert r.status == "contraindicated"
    assert [x.name for x in r.failed_checks] == ["tdx.rtmr2", "tdx.mr_config_id"]
    assert r.trustworthiness.configuration == 96
    assert r.trustworthiness.executables == 33


def test_policy_for_other_tee_refuses() -> None:
    r = appraise(vector(TDX_OK), pol(sgx={}))
    assert r.status == "contraindicated"
    assert check(r, "tee")[:3] == (False, "sgx", "tdx")
    assert r.trustworthiness.instance_identity == 97
    # no TEE section at all: any TEE, the rules decide
    assert appraise(vector(TDX_OK), pol()).status == "affirming"


@pytest.mark.parametrize("case_id", [SGX_DEBUG, TDX_DEBUG])
def test_debug_refused_unless_allowed(case_id: str) -> None:
    v = vector(case_id)
    assert v.claims["debug"] is True
    section: dict[str, Any] = {"sgx": {}} if v.tee == "sgx" else {"tdx": {}}
    r = appraise(v, pol(tcb_status=ALL_STATUSES, **section))
    assert r.status == "contraindicated"
    assert check(r, "debug")[:3] == (False, "production (debug off)", "debug")
    assert r.trustworthiness.runtime_opaque == 96
    assert r.trustworthiness.configuration == 96
    r = appraise(v, pol(tcb_status=ALL_STATUSES, allow_debug=True, **section))
    assert r.status == "warning"  # passes, but a debug workload is never affirming
    assert check(r, "debug")[0] is True
    assert r.trustworthiness.configuration == 32
    assert r.trustworthiness.runtime_opaque == 96


def test_snp_reference_values_policy_bits_min_tcb_vmpl() -> None:
    v = vector(SNP_OK)
    c = v.claims
    p = pol(
        snp={
            "measurement": [c["measurement"]],
            "host_data": [c["host_data"]],
            "policy_bits": {"debug": False, "migrate_ma": False, "smt": True},
            "min_tcb": {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115},
            "vmpl": [0],
        }
    )
    r = appraise(v, p)
    assert r.status == "affirming", r.failed_checks
    assert check(r, "tcb_status")[0] is True
    assert "no Intel TCB status" in check(r, "tcb_status")[3]
    assert {"snp.policy_bits.smt", "snp.min_tcb.microcode", "snp.vmpl"} <= set(names(r))
    p = pol(
        snp={
            "measurement": ["00" * 48],
            "policy_bits": {"smt": False},
            "min_tcb": {"microcode": 116, "snp": 8},
            "vmpl": [1, 2],
        }
    )
    r = appraise(v, p)
    assert [x.name for x in r.failed_checks] == [
        "snp.measurement",
        "snp.policy_bits.smt",
        "snp.min_tcb.microcode",
        "snp.vmpl",
    ]
    assert check(r, "snp.min_tcb.microcode")[1:3] == (">= 116", "115")
    assert r.trustworthiness.hardware == 96


# -- simulated evidence ---------------------------------------------------------------------


def test_sim_contraindicated_unless_allowed(sim: SimPlatform, manifest: Manifest) -> None:
    v = sim_verified(sim, "sgx", manifest)
    assert v.sim is True
    m = sim.measure(manifest)
    sgx = {
        "mrenclave": [m.mr_enclave.hex()],
        "mrsigner": [m.mr_signer.hex()],
        "isv_prod_id": [7],
        "min_isv_svn": 3,
    }
    r = appraise(v, pol(sgx=sgx))
    assert r.status == "contraindicated"
    assert [x.name for x in r.failed_checks] == ["sim"]
    assert r.trustworthiness.instance_identity == 96
    r = appraise(v, pol(sgx=sgx, allow_sim=True))
    assert r.status == "affirming"
    assert r.trustworthiness.instance_identity == 2
    # one more ISVSVN required, and a different workload: both fail, both named
    other = sim.measure(Manifest(name="other", entrypoint="evil.py"))
    r = appraise(
        v, pol(sgx={**sgx, "min_isv_svn": 4, "mrenclave": [other.mr_enclave.hex()]}, allow_sim=True)
    )
    assert [x.name for x in r.failed_checks] == ["sgx.mrenclave", "sgx.min_isv_svn"]


def test_sim_tdx_measured_manifest(sim: SimPlatform, manifest: Manifest) -> None:
    v = sim_verified(sim, "tdx", manifest)
    m = sim.measure(manifest)
    r = appraise(
        v, pol(allow_sim=True, tdx={"mr_td": [m.mr_td.hex()], "rtmr0": [m.rtmrs[0].hex()]})
    )
    assert r.status == "affirming", r.failed_checks
    r = appraise(v, pol(allow_sim=True, tdx={"mr_td": [sim.measure().mr_td.hex()]}))
    assert [x.name for x in r.failed_checks] == ["tdx.mr_td"]


def test_sim_platform_with_advisory_tcb_is_warning(tmp_path: Path) -> None:
    p = SimPlatform.init(tmp_path, tcb_status="SWHardeningNeeded")
    v = sim_verified(p, "sgx")
    assert v.tcb_status == "SWHardeningNeeded"
    assert appraise(v, pol(allow_sim=True)).status == "contraindicated"
    r = appraise(v, pol(allow_sim=True, tcb_status=["UpToDate", "SWHardeningNeeded"]))
    assert r.status == "warning"
    assert r.trustworthiness.hardware == 32


# -- CEL rules -----------------------------------------------------------------------------


def test_cel_rules_true_false_error_non_bool() -> None:
    v = vector(SGX_OK)
    rules = [
        {"name": "is-sgx", "expr": "tee == 'sgx' && !sim && claims.isv_svn >= 0"},
        {
            "name": "no-sa-615",
            "expr": "!('INTEL-SA-00615' in advisory_ids)",
            "message": "platform affected by INTEL-SA-00615",
        },
        {"name": "missing-claim", "expr": "claims.no_such_claim == 1"},
        {"name": "not-bool", "expr": "claims.isv_svn + 1"},
        {"name": "div-zero", "expr": "1 / claims.isv_svn == 1"},
        {"name": "tcb", "expr": "tcb_status == 'ConfigurationAndSWHardeningNeeded'"},
    ]
    r = appraise(v, pol(tcb_status=ALL_STATUSES, rules=rules))
    assert r.status == "contraindicated"
    got = {c.name: c for c in r.checks if c.name.startswith("rules.")}
    assert got["rules.is-sgx"].passed
    assert got["rules.tcb"].passed
    assert not got["rules.no-sa-615"].passed
    assert got["rules.no-sa-615"].message == "platform affected by INTEL-SA-00615"
    assert got["rules.no-sa-615"].actual == "false"
    assert not got["rules.missing-claim"].passed
    assert "no_such_claim" in got["rules.missing-claim"].actual
    assert got["rules.missing-claim"].actual.startswith("error:")
    assert not got["rules.not-bool"].passed
    assert "not a boolean" in got["rules.not-bool"].actual
    assert not got["rules.div-zero"].passed
    assert "error" in got["rules.div-zero"].actual
    # only the rules failed; the rest still ran and passed
    assert {c.name for c in r.failed_checks} == {
        "rules.no-sa-615",
        "rules.missing-claim",
        "rules.not-bool",
        "rules.div-zero",
    }


def test_cel_rules_over_snp_claims() -> None:
    v = vector(SNP_OK)
    r = appraise(
        v,
        pol(
            rules=[
                {
                    "name": "tcb",
                    "expr": "claims.reported_tcb_decoded.snp >= 8 && tcb_status == null",
                },
                {"name": "vcek", "expr": "claims.signing_key == 'VCEK' && claims.vmpl == 0"},
            ]
        ),
    )
    assert r.status == "affirming", r.failed_checks


def test_cel_compile_errors_name_the_rule() -> None:
    with pytest.raises(PolicyDocumentError) as info:
        pol(
            rules=[
                {"name": "ok", "expr": "true"},
                {"name": "broken-rule", "expr": "claims.isv_svn >="},
            ]
        )
    err = info.value
    assert err.code == "POLICY_INVALID"
    assert err.field == "rules[1].expr"
    assert "broken-rule" in err.message
    assert "does not compile" in err.message
    with pytest.raises(PolicyDocumentError, match=r"rules\[0\]\.expr: longer than"):
        pol(rules=[{"name": "long", "expr": "true && " * (MAX_CEL_EXPR_CHARS // 8) + "true"}])
    with pytest.raises(PolicyDocumentError, match="does not compile"):
        pol(rules=[{"name": "deep", "expr": "(" * 500 + "true" + ")" * 500}])


def test_hand_built_rule_without_program_fails_closed() -> None:
    p = Policy(name="hand", rules=(Rule(name="r", expr="true"),))
    r = appraise(vector(TDX_OK), p)
    assert check(r, "rules.r")[0] is False


# -- the document --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "field", "text"),
    [
        (
            {"sgx": {"mrenclav": ["00" * 32]}},
            "sgx.mrenclav",
            "unknown key; did you mean mrenclave?",
        ),
        ({"tdx": {"rtmr9": ["00" * 48]}}, "tdx.rtmr9", "unknown key; did you mean rtmr"),
        (
            {"snp": {"policy_bits": {"debgu": False}}},
            "snp.policy_bits.debgu",
            "did you mean debug?",
        ),
        ({"snp": {"min_tcb": {"ucode": 1}}}, "snp.min_tcb.ucode", "unknown key"),
        ({"allow_debugging": True}, "allow_debugging", "did you mean allow_debug?"),
        ({"rules": [{"name": "a", "exp": "true"}]}, "rules[0].exp", "did you mean expr?"),
        ({"sgx": {"mrenclave": ["00" * 31]}}, "sgx.mrenclave[0]", "wrong length: 62 hex digits"),
        ({"tdx": {"mr_td": ["00" * 32]}}, "tdx.mr_td[0]", "expected 96"),
        ({"snp": {"host_data": ["zz" * 32]}}, "snp.host_data[0]", "not a hex string"),
        ({"sgx": {"mrenclave": []}}, "sgx.mrenclave", "empty list matches nothing"),
        ({"sgx": {"mrenclave": "00" * 32}}, "sgx.mrenclave", "expected a list"),
        ({"sgx": {"min_isv_svn": True}}, "sgx.min_isv_svn", "expected an integer"),
        ({"sgx": {"min_isv_svn": 70000}}, "sgx.min_isv_svn", "out of range"),
        ({"snp": {"vmpl": [4]}}, "snp.vmpl[0]", "out of range"),
        ({"allow_sim": "yes"}, "allow_sim", "expected true or false"),
        ({"tcb_status": ["UpToDat"]}, "tcb_status[0]", "did you mean UpToDate?"),
        ({"tcb_status": ["Revoked"]}, "tcb_status[0]", "never acceptable"),
        (
            {"rules": [{"name": "a", "expr": "true"}, {"name": "a", "expr": "true"}]},
            "rules[1].name",
            "duplicate",
        ),
        ({"rules": [{"expr": "true"}]}, "rules[0].name", "required"),
        ({"sgx": []}, "sgx", "expected a mapping"),
    ],
)
def test_document_errors_name_the_path(doc: dict[str, Any], field: str, text: str) -> None:
    with pytest.raises(PolicyDocumentError) as info:
        pol(**doc)
    err = info.value
    assert isinstance(err, NacreError)
    assert err.code == "POLICY_INVALID"
    assert err.field == field
    assert text in err.message
    assert err.message.startswith(f"{field}: ")


def test_version_and_name_required() -> None:
    with pytest.raises(PolicyDocumentError, match="version: required"):
        policy_from_dict({"name": "x"})
    with pytest.raises(PolicyDocumentError, match="unsupported policy schema version") as info:
        policy_from_dict({"version": 2, "name": "x"})
    assert info.value.expected == "1"
    with pytest.raises(PolicyDocumentError, match="name: required"):
        policy_from_dict({"version": 1})
    with pytest.raises(PolicyDocumentError, match="expected a mapping"):
        policy_from_dict(["version", 1])


def test_defaults_fail_closed() -> None:
    p = pol()
    assert p.tcb_status == ("UpToDate",)
    assert p.allow_debug is False
    assert p.allow_sim is False
    assert p.tees == ()


def _doc() -> dict[str, Any]:
    return {
        "version": 1,
        "name": "both-formats",
        "tcb_status": ["UpToDate", "SWHardeningNeeded"],
        "sgx": {"mrenclave": ["AB" * 32], "min_isv_svn": 2},
        "snp": {"policy_bits": {"debug": False}, "min_tcb": {"snp": 8}},
        "rules": [{"name": "r", "expr": "tee != 'tdx'", "message": "no TDX"}],
    }


def test_yaml_and_json_load_the_same_policy(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(_doc()))
    (tmp_path / "p.json").write_text(json.dumps(_doc()))
    (tmp_path / "p.policy").write_text(json.dumps(_doc()))  # sniffed
    a, b, c = (load_policy(tmp_path / n) for n in ("p.yaml", "p.json", "p.policy"))
    assert a == b == c
    assert a.sgx is not None
    assert a.sgx.mrenclave == ("ab" * 32,)
    assert a.rules[0].program is not None


def test_yaml_specifics(tmp_path: Path) -> None:
    # an unquoted all-digit hex value is a number in YAML: say so
    with pytest.raises(PolicyDocumentError, match="quote hex values") as info:
        parse_policy("version: 1\nname: x\nsgx:\n  mrenclave: [" + "1" * 64 + "]\n")
    assert info.value.field == "sgx.mrenclave[0]"
    with pytest.raises(PolicyDocumentError, match="duplicate key"):
        parse_policy("version: 1\nname: x\nname: y\n")
    with pytest.raises(PolicyDocumentError, match="duplicate key"):
        parse_policy('{"version": 1, "name": "x", "name": "y"}')
    with pytest.raises(PolicyDocumentError, match="not valid YAML"):
        parse_policy("version: 1\nname: [x\n")
    with pytest.raises(PolicyDocumentError, match="not valid JSON"):
        parse_policy('{"version": 1,', format="json")
    # no arbitrary Python objects from YAML tags
    with pytest.raises(PolicyDocumentError, match="not valid YAML"):
        parse_policy("version: 1\nname: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(PolicyDocumentError, match="cannot read policy"):
        load_policy(tmp_path / "missing.yaml")
    with pytest.raises(PolicyDocumentError, match="larger than"):
        parse_policy("#" * (300 * 1024))


def test_appraise_accepts_only_verified_evidence() -> None:
    with pytest.raises(TypeError, match="VerifiedEvidence"):
        appraise({"tee": "sgx", "claims": {}}, pol())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Policy"):
        appraise(vector(TDX_OK), {"version": 1})  # type: ignore[arg-type]


def test_result_is_frozen_and_serialises() -> None:
    r = appraise(vector(TDX_OK), pol(name="n"))
    with pytest.raises(AttributeError):
        r.status = "affirming"  # type: ignore[misc]
    d = r.to_dict()
    assert d["status"] == "affirming"
    assert d["policy"] == "n"
    assert set(d["checks"][0]) == {"name", "passed", "expected", "actual", "message"}
    assert json.loads(json.dumps(d)) == d


# -- CLI -----------------------------------------------------------------------------------


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def _write(tmp_path: Path, doc: dict[str, Any], name: str = "policy.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc) if name.endswith(".yaml") else json.dumps(doc))
    return path


def test_verify_policy_exit_codes_and_json(tmp_path: Path, runner: CliRunner) -> None:
    _d, ev, when = _case(TDX_OK)
    claims = vector(TDX_OK).claims
    good = _write(tmp_path, {"version": 1, "name": "good", "tdx": {"mr_td": [claims["mr_td"]]}})
    res = runner.invoke(app, ["verify", str(ev), "--at", when, "--policy", str(good), "--json"])
    assert res.exit_code == 0, res.stdout
    out = json.loads(res.stdout)
    assert {"verdict", "tee", "version", "tcb_status", "advisory_ids", "claims", "error"} <= set(
        out
    )
    assert out["verdict"] == "ok"
    assert out["error"] is None
    assert out["appraisal"]["status"] == "affirming"
    assert out["appraisal"]["policy"] == "good"
    assert all(c["passed"] for c in out["appraisal"]["checks"])

    bad = _write(
        tmp_path,
        {"version": 1, "name": "bad", "tdx": {"mr_td": ["00" * 48], "rtmr1": ["11" * 48]}},
        "bad.json",
    )
    res = runner.invoke(app, ["verify", str(ev), "--at", when, "--policy", str(bad), "--json"])
    assert res.exit_code == 1, res.stdout
    out = json.loads(res.stdout)
    assert out["verdict"] == "rejected"
    assert out["error"]["code"] == "POLICY_VIOLATION"
    assert out["error"]["field"] == "tdx.mr_td"
    assert "2 failed checks" in out["error"]["message"]
    assert out["appraisal"]["status"] == "contraindicated"
    failed = [c["name"] for c in out["appraisal"]["checks"] if not c["passed"]]
    assert failed == ["tdx.mr_td", "tdx.rtmr1"]

    # human output names the failed checks
    res = runner.invoke(app, ["verify", str(ev), "--at", when, "--policy", str(bad)])
    assert res.exit_code == 1
    assert "tdx.rtmr1" in res.stdout
    assert "contraindicated" in res.stdout


def test_verify_policy_usage_errors_exit_2(tmp_path: Path, runner: CliRunner) -> None:
    _, ev, when = _case(TDX_OK)
    broken = _write(tmp_path, {"version": 1, "name": "x", "tdx": {"mr_tdd": ["00" * 48]}})
    res = runner.invoke(app, ["verify", str(ev), "--at", when, "--policy", str(broken), "--json"])
    assert res.exit_code == 2
    err = json.loads(res.stdout)["error"]
    assert err["code"] == "POLICY_INVALID"
    assert err["field"] == "tdx.mr_tdd"
    good = _write(tmp_path, {"version": 1, "name": "x"}, "g.yaml")
    res = runner.invoke(
        app, ["verify", str(ev), "--at", when, "--policy", str(good), "--allow-debug"]
    )
    assert res.exit_code == 2


def test_verify_policy_debug_vector(tmp_path: Path, runner: CliRunner) -> None:
    _, ev, when = _case(SGX_DEBUG)
    doc: dict[str, Any] = {"version": 1, "name": "dbg", "tcb_status": ALL_STATUSES, "sgx": {}}
    res = runner.invoke(
        app, ["verify", str(ev), "--at", when, "--policy", str(_write(tmp_path, doc)), "--json"]
    )
    assert res.exit_code == 1
    assert json.loads(res.stdout)["error"]["field"] == "debug"
    doc["allow_debug"] = True
    res = runner.invoke(
        app, ["verify", str(ev), "--at", when, "--policy", str(_write(tmp_path, doc)), "--json"]
    )
    assert res.exit_code == 0, res.stdout
    assert json.loads(res.stdout)["appraisal"]["status"] == "warning"


def test_verify_policy_with_rejected_evidence(tmp_path: Path, runner: CliRunner) -> None:
    _, ev, _ = _case(TDX_OK)
    good = _write(tmp_path, {"version": 1, "name": "x"})
    res = runner.invoke(
        app, ["verify", str(ev), "--at", "2030-01-01T00:00:00Z", "--policy", str(good), "--json"]
    )
    assert res.exit_code == 1
    out = json.loads(res.stdout)
    assert out["verdict"] == "rejected"
    assert out["appraisal"] is None


def test_policy_test_command(
    tmp_path: Path, runner: CliRunner, sim: SimPlatform, manifest: Manifest
) -> None:
    quote = tmp_path / "quote.bin"
    quote.write_bytes(sim.quote("sgx", b"\x01" * 64, manifest))
    sim.bundle("sgx").write_dir(tmp_path / "bundle")
    m = sim.measure(manifest)
    doc: dict[str, Any] = {
        "version": 1,
        "name": "sim-model",
        "allow_sim": True,
        "sgx": {"mrenclave": [m.mr_enclave.hex()], "min_isv_svn": 3},
        "rules": [{"name": "prod-7", "expr": "claims.isv_prod_id == 7"}],
    }
    policy = _write(tmp_path, doc)
    args = ["policy", "test", str(policy), str(quote), "--collateral", str(tmp_path / "bundle")]
    res = runner.invoke(app, [*args, "--trust-sim", "--sim-dir", str(sim.dir), "--json"])
    assert res.exit_code == 0, res.stdout
    out = json.loads(res.stdout)
    assert out["sim"] is True
    assert out["appraisal"]["status"] == "affirming"
    assert [c["name"] for c in out["appraisal"]["checks"]][-1] == "rules.prod-7"

    res = runner.invoke(app, [*args, "--trust-sim", "--sim-dir", str(sim.dir)])
    assert res.exit_code == 0, res.stdout
    for text in ("affirming", "sgx.mrenclave", "sgx.min_isv_svn", "rules.prod-7", "SIMULATED"):
        assert text in res.stdout

    doc["allow_sim"] = False
    policy = _write(tmp_path, doc)
    res = runner.invoke(app, [*args, "--trust-sim", "--sim-dir", str(sim.dir), "--json"])
    assert res.exit_code == 1
    out = json.loads(res.stdout)
    assert out["error"]["field"] == "sim"

    # without --trust-sim the simulated quote does not verify at all
    res = runner.invoke(app, [*args, "--json"])
    assert res.exit_code == 1
    assert json.loads(res.stdout)["appraisal"] is None

    res = runner.invoke(app, ["policy", "test", str(tmp_path / "nope.yaml"), str(quote)])
    assert res.exit_code == 2


# -- TD attribute checks, on a re-signed TDX quote (tests/dcap_forge.py) -------------------


def _forged_td(attrs: int) -> VerifiedEvidence:
    from dataclasses import replace

    from dcap_forge import forge_from_case
    from nacre.evidence.tdx import TdReport10

    d, _, when = _case(TDX_OK)
    f = forge_from_case(d)
    assert isinstance(f.base.body, TdReport10)
    f.base = replace(f.base, body=replace(f.base.body, td_attributes=attrs.to_bytes(8, "little")))
    now = datetime.fromisoformat(when.replace("Z", "+00:00"))
    return verify(f.quote(), collateral=f.bundle(), now=now, trust=f.trust)


def test_td_attributes_sept_ve_and_reserved_bits() -> None:
    sept_ve_disable = 1 << 28
    v = _forged_td(0)  # SEPT_VE_DISABLE clear
    assert v.claims["sept_ve_disable"] is False
    r = appraise(v, pol(tdx={}))
    assert [c.name for c in r.failed_checks] == ["tdx.sept_ve_disable"]
    assert "inject #VE" in check(r, "tdx.sept_ve_disable")[3]
    r = appraise(v, pol(tdx={"unsafe_allow_sept_ve": True}))
    assert r.status == "affirming"
    v = _forged_td(sept_ve_disable | 1 << 5)  # a reserved bit
    for hatch in (False, True):
        r = appraise(v, pol(tdx={"unsafe_allow_sept_ve": hatch, "allow_service_td": hatch}))
        assert [c.name for c in r.failed_checks] == ["tdx.td_attributes.reserved"]
        assert check(r, "tdx.td_attributes.reserved")[2] == f"{sept_ve_disable | 1 << 5:#018x}"
