"""``nacre demo``: the end-to-end story runs on this machine and reports every step."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nacre.cli import app

STEPS = 6


def test_demo_json_reports_every_step(tmp_path: Path) -> None:
    args = ["demo", "--json", "--data-dir", str(tmp_path / "demo")]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    # A kept data directory can be run again (platform and database reused).
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["ok"] is True
    steps = summary["steps"]
    assert [s["step"] for s in steps] == list(range(1, STEPS + 1))
    assert all(s["ok"] for s in steps), steps
    assert summary["url"].startswith("http://127.0.0.1:")
    assert summary["data_dir"] == str(tmp_path / "demo")

    by_name = {s["name"][:3]: s["facts"] for s in steps}
    registered = steps[1]["facts"]
    assert registered["resource"] == "models/llm/key"
    assert registered["mrenclave"] in registered["release_policy"]
    assert by_name["(a)"]["key_bytes"] == 32
    refused = by_name["(b)"]
    assert refused["status"] == 403
    assert refused["check"]
    assert refused["mrenclave"] != registered["mrenclave"]
    assert by_name["(c)"]["verified"] is True
    assert "POST /kms/v1/keys/" in by_name["(c)"]["via"]
    assert by_name["(c)"]["modified_workload_status"] == 403
    assert by_name["(c)"]["modified_workload_refused"] == "policy.rule"
    assert by_name["(d)"]["entries"] > 0
    # Nothing secret is printed: the model key never appears in the summary.
    assert "key_b64" not in result.stdout


def test_demo_human_output_and_temp_dir() -> None:
    result = CliRunner().invoke(app, ["demo"])
    assert result.exit_code == 0, result.output
    for marker in ("1. ", "2. ", "3. (a)", "4. (b)", "5. (c)", "6. (d)", "refused"):
        assert marker in result.stdout, marker
    assert "every step behaved as expected" in result.stdout


def test_demo_without_the_server_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nacre.server", None)  # import nacre.server -> ImportError
    result = CliRunner().invoke(app, ["demo", "--json"])
    assert result.exit_code == 2, result.output
    error = json.loads(result.stdout)["error"]
    assert error["field"] == "nacre.server"
    assert "not importable" in error["message"]
