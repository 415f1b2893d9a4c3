"""`nacre sim ...`, `nacre verify --trust-sim` and `nacre collateral serve` + `fetch`, end to end."""

from __future__ import annotations

import json
import stat
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from nacre.cli import app
from nacre.collateral.bundle import CollateralBundle
from nacre.collateral.fetch import fetch_bundle, fetch_collateral
from nacre.collateral.pcs import PcsClient
from nacre.errors import CollateralFetchError
from nacre.sim import SimPlatform
from nacre.sim.serve import CollateralServer, make_server
from nacre.verify import verify

runner = CliRunner()


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No proxies for loopback requests; the default sim dir is a temp dir, never the user's."""
    for name in (
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NACRE_SIM_DIR", str(tmp_path / "default-sim"))


def _run(*args: str) -> tuple[int, dict[str, Any]]:
    result = runner.invoke(app, list(args))
    try:
        out = json.loads(result.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"not JSON (exit {result.exit_code}): {result.output}") from None
    return result.exit_code, out


@pytest.mark.parametrize("tee", ["sgx", "tdx"])
def test_round_trip_init_quote_bundle_verify(tmp_path: Path, tee: str) -> None:
    sim = tmp_path / "sim"
    code, out = _run("sim", "init", "--dir", str(sim), "--json")
    assert code == 0
    assert out["tcb_status"] == "UpToDate"
    assert stat.S_IMODE((sim / "pck.key").stat().st_mode) == 0o600
    (tmp_path / "app.py").write_text("print('hi')\n")
    (tmp_path / "m.toml").write_text('entrypoint = "app.py"\n[[files]]\npath = "app.py"\n')
    quote = tmp_path / "case" / "quote.bin"
    rd = "ab" * 64
    code, q = _run(
        "sim", "quote", "--dir", str(sim), "--tee", tee, "--report-data", rd,
        "--manifest", str(tmp_path / "m.toml"), "--out", str(quote), "--json",
    )  # fmt: skip
    assert code == 0, q
    code, b = _run(
        "sim", "bundle", "--dir", str(sim), "--tee", tee, "--out", str(quote.parent), "--json"
    )
    assert code == 0
    assert "sim_root_ca.pem" in b["files"]
    assert "tcb_info.json" in b["files"]

    code, v = _run("verify", str(quote), "--trust-sim", "--sim-dir", str(sim), "--json")
    assert code == 0, v
    assert v["verdict"] == "ok"
    assert v["sim"] is True
    assert v["tee"] == tee
    assert v["tcb_status"] == "UpToDate"
    assert v["claims"]["report_data"] == rd
    key = "mrenclave" if tee == "sgx" else "mr_td"
    want = q["measurement"]["mrenclave" if tee == "sgx" else "mr_td"]
    assert v["claims"][key] == want

    code, v = _run("verify", str(quote), "--json")
    assert code == 1
    assert v["verdict"] == "rejected"
    assert v["error"]["code"] == "SIMULATED_EVIDENCE"
    assert "--trust-sim" in v["error"]["message"]


def test_trust_sim_falls_back_to_the_bundles_simulation_root(tmp_path: Path) -> None:
    p = SimPlatform.init(tmp_path / "elsewhere", tcb_status="OutOfDate")
    case = tmp_path / "case"
    p.bundle("sgx").write_dir(case)
    (case / "quote.bin").write_bytes(p.quote("sgx", b"\x01"))
    # NACRE_SIM_DIR names no platform: the bundle's sim_root_ca.pem is used.
    code, v = _run("verify", str(case / "quote.bin"), "--trust-sim", "--json")
    assert code == 0, v
    assert (v["sim"], v["tcb_status"], v["advisory_ids"]) == (
        True,
        "OutOfDate",
        ["NACRE-SIM-SA-00003"],
    )
    # ...but never a bundle root that is not a simulation root.
    (case / "sim_root_ca.pem").write_bytes((tmp_path / "elsewhere" / "pck_ca.pem").read_bytes())
    code, v = _run("verify", str(case / "quote.bin"), "--trust-sim", "--json")
    assert code == 2
    assert v["verdict"] == "error"


def test_revoked_platform_is_rejected_by_the_cli(tmp_path: Path) -> None:
    sim = tmp_path / "sim"
    assert _run("sim", "init", "--dir", str(sim), "--tcb-status", "Revoked", "--json")[0] == 0
    out = tmp_path / "case"
    assert (
        _run(
            "sim",
            "quote",
            "--dir",
            str(sim),
            "--tee",
            "sgx",
            "--report-data",
            "00",
            "--out",
            str(out / "q.bin"),
            "--json",
        )[0]
        == 0
    )
    assert (
        _run("sim", "bundle", "--dir", str(sim), "--tee", "sgx", "--out", str(out), "--json")[0]
        == 0
    )
    code, v = _run("verify", str(out / "q.bin"), "--trust-sim", "--sim-dir", str(sim), "--json")
    assert code == 1
    assert v["error"]["code"] == "TCB_REVOKED"
    assert v["tcb_status"] == "Revoked"


def test_sim_usage_errors(tmp_path: Path) -> None:
    code, out = _run("sim", "init", "--dir", str(tmp_path / "s"), "--tcb-status", "Fine", "--json")
    assert code == 2
    assert out["error"]["field"] == "--tcb-status"
    assert _run("sim", "init", "--dir", str(tmp_path / "s"), "--json")[0] == 0
    code, out = _run("sim", "init", "--dir", str(tmp_path / "s"), "--json")
    assert code == 2
    assert "already exists" in out["error"]["message"]
    assert _run("sim", "init", "--dir", str(tmp_path / "s"), "--force", "--json")[0] == 0
    code, out = _run(
        "sim", "quote", "--dir", str(tmp_path / "s"), "--tee", "snp", "--report-data", "00",
        "--out", str(tmp_path / "q"), "--json",
    )  # fmt: skip
    assert code == 2
    assert out["error"]["field"] == "--tee"
    code, out = _run(
        "sim", "quote", "--dir", str(tmp_path / "s"), "--tee", "sgx", "--report-data", "00" * 65,
        "--out", str(tmp_path / "q"), "--json",
    )  # fmt: skip
    assert code == 2
    assert out["error"]["field"] == "--report-data"


# --------------------------------------------------------------------------- serve + fetch


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[SimPlatform, CollateralServer]]:
    p = SimPlatform.init(tmp_path / "served-sim")
    server = make_server(p, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield p, server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.mark.parametrize("tee", ["sgx", "tdx"])
def test_fetcher_reads_a_full_bundle_from_collateral_serve(
    served: tuple[SimPlatform, CollateralServer], tee: str
) -> None:
    p, server = served
    quote = p.quote(tee, b"\x07" * 64)
    now = datetime.now(UTC)
    with PcsClient(server.url) as pcs:
        outcome = fetch_collateral(
            quote, pcs=pcs, kds=None, cache=None, now=now, trust=p.trust_roots()
        )
    bundle = outcome.bundle
    assert (outcome.tee, outcome.fmspc, outcome.pck_ca) == (tee, p.fmspc.hex(), "platform")
    assert {"tcb_info.json", "qe_identity.json", "pck_crl.der", "root_ca_crl.der"} <= set(
        bundle.files
    )
    result = verify(quote, collateral=bundle, now=now, trust=p.trust_roots())
    assert result.sim
    assert result.tcb_status == "UpToDate"


def test_headers_and_routes(served: tuple[SimPlatform, CollateralServer]) -> None:
    p, server = served
    fmspc = p.fmspc.hex().upper()
    with httpx.Client(base_url=server.url, trust_env=False) as c:
        r = c.get("/tdx/certification/v4/tcb", params={"fmspc": fmspc})
        assert r.status_code == 200
        assert r.json()["tcbInfo"]["id"] == "TDX"
        assert r.headers["TCB-Info-Issuer-Chain"].startswith("-----BEGIN%20CERTIFICATE-----%0A")
        assert (
            c.get("/sgx/certification/v4/tcb", params={"fmspc": "00906ED50000"}).status_code == 404
        )
        r = c.get("/sgx/certification/v4/qe/identity")
        assert r.json()["enclaveIdentity"]["id"] == "QE"
        assert "SGX-Enclave-Identity-Issuer-Chain" in r.headers
        assert c.get("/sgx/certification/v4/pckcrl", params={"ca": "processor"}).status_code == 404
        r = c.get("/sgx/certification/v4/pckcrl", params={"ca": "platform"})
        assert r.content.startswith(b"-----BEGIN X509 CRL-----")
        assert c.get("/sgx/certification/v3/tcb").status_code == 404


def test_default_trust_refuses_simulated_collateral_when_fetching(
    served: tuple[SimPlatform, CollateralServer],
) -> None:
    p, server = served
    with PcsClient(server.url) as pcs, pytest.raises(CollateralFetchError) as exc:
        fetch_bundle(p.quote("sgx", b""), pcs=pcs, kds=None, cache=None, now=datetime.now(UTC))
    assert exc.value.code == "CERT_CHAIN_INVALID"


def test_cli_fetch_from_serve_then_verify(
    served: tuple[SimPlatform, CollateralServer], tmp_path: Path
) -> None:
    p, server = served
    case = tmp_path / "fetched"
    case.mkdir()
    (case / "quote.bin").write_bytes(p.quote("tdx", b"\x05" * 64))
    code, out = _run(
        "collateral", "fetch", str(case / "quote.bin"), "--pccs", server.url, "--trust-sim",
        "--sim-dir", str(p.dir), "--cache-dir", str(tmp_path / "cache"), "--json",
    )  # fmt: skip
    assert code == 0, out
    assert out["fmspc"] == p.fmspc.hex()
    assert out["pck_ca"] == "platform"
    bundle = CollateralBundle.from_dir(case)
    assert bundle.has("tcb_info.json")
    assert bundle.has("root_ca_crl.der")
    code, v = _run(
        "verify", str(case / "quote.bin"), "--trust-sim", "--sim-dir", str(p.dir), "--json"
    )
    assert code == 0, v
    assert v["sim"] is True
