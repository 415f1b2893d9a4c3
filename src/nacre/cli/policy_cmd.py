"""``nacre policy test|set|show``: appraisal and release policies.

``nacre policy test POLICY EVIDENCE``: verify offline, appraise, print every check. Exit 0 when the
evidence verifies and the policy's status is affirming or warning, 1 when the evidence is rejected
or the appraisal is contraindicated, 2 on usage or I/O errors (including a policy document that
does not load).

``nacre policy set ID --file DOC [--kind resource|appraisal]`` and ``nacre policy show ID`` store
and read policies on the service (``/admin/v1/policies``, signed with ``--admin-key``): resource
policies guard KBS resources and KMS keys, appraisal policies judge evidence. Exit 0 done, 1 the
service refused (its RFC 7807 problem printed), 2 usage or I/O errors.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from nacre.appraisal import AppraisalResult, appraise, load_policy
from nacre.cli.render import render_rejection, render_usage_error
from nacre.cli.secret_cmd import JsonOpt, KeyOpt, ServerOpt, _call, _fail, _print, _read
from nacre.errors import NacreError, VerificationError
from nacre.verify.result import VerifiedEvidence

__all__ = [
    "appraisal_error",
    "policy_app",
    "policy_set_command",
    "policy_show_command",
    "policy_test_command",
    "render_appraisal",
]

policy_app = typer.Typer(
    help="Appraisal policies: reference values and CEL rules.", no_args_is_help=True
)

_STATUS_COLOR = {"affirming": "green", "warning": "yellow", "contraindicated": "red"}


def appraisal_error(result: AppraisalResult) -> dict[str, Any] | None:
    """The CLI ``error`` object for a contraindicated appraisal (first failed check named)."""
    failed = result.failed_checks
    if result.passed or not failed:
        return None
    first = failed[0]
    names = ", ".join(c.name for c in failed)
    return {
        "code": "POLICY_VIOLATION",
        "field": first.name,
        "expected": first.expected,
        "actual": first.actual,
        "message": f"policy {result.policy_name!r} refuses the evidence: {first.message}"
        + (f" ({len(failed)} failed checks: {names})" if len(failed) > 1 else ""),
    }


def render_appraisal(v: VerifiedEvidence, result: AppraisalResult) -> None:
    out = Console(highlight=False, soft_wrap=True)
    color = _STATUS_COLOR[result.status]
    head = "REJECTED" if not result.passed else "VERIFIED"
    out.print(
        f"[bold {color}]{head}[/] {v.tee} evidence, policy [bold]{result.policy_name}[/]: "
        f"[{color}]{result.status}[/]" + (" [bold yellow](SIMULATED)[/]" if v.sim else "")
    )
    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    for col in ("", "check", "expected", "actual", "why"):
        table.add_column(col, overflow="fold")
    for c in result.checks:
        mark = "[green]✔[/]" if c.passed else "[red]✘[/]"
        name = c.name if c.passed else f"[red]{c.name}[/]"
        table.add_row(mark, name, c.expected, c.actual, c.message)
    out.print(table)
    vector = ", ".join(f"{k} {n}" for k, n in result.trustworthiness.to_dict().items() if n)
    out.print(f"trustworthiness: {vector}")


def _json_out(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


@policy_app.command("test")
def policy_test_command(
    policy_file: Annotated[Path, typer.Argument(help="Policy document (YAML or JSON).")],
    evidence: Annotated[Path, typer.Argument(help="SGX/TDX quote or SEV-SNP report.")],
    collateral: Annotated[
        Path | None,
        typer.Option(help="Collateral bundle directory (default: the evidence's directory)."),
    ] = None,
    at: Annotated[
        str | None, typer.Option("--at", help="Verify as of this ISO-8601 time (default: now).")
    ] = None,
    trust_sim: Annotated[
        bool,
        typer.Option("--trust-sim", help="Trust nacre's simulation root (results say sim)."),
    ] = False,
    sim_dir: Annotated[
        Path | None,
        typer.Option("--sim-dir", help="Simulated platform whose root --trust-sim trusts."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Verify EVIDENCE offline and appraise it with POLICY_FILE, printing every check."""
    from nacre.cli.verify_cmd import read_evidence, verify_offline

    try:
        policy = load_policy(policy_file)
        data = read_evidence(evidence)
        result = verify_offline(data, evidence, collateral, at, None, trust_sim, sim_dir)
    except VerificationError as exc:
        if as_json:
            _json_out({"verdict": "rejected", "error": exc.to_dict(), "appraisal": None})
        else:
            render_rejection(exc, None)
        raise typer.Exit(1) from None
    except NacreError as exc:
        if as_json:
            _json_out({"verdict": "error", "error": exc.to_dict(), "appraisal": None})
        else:
            render_usage_error(exc)
        raise typer.Exit(2) from None
    appraisal = appraise(result, policy)
    if as_json:
        _json_out(
            {
                "verdict": "ok" if appraisal.passed else "rejected",
                **result.to_dict(),
                "error": appraisal_error(appraisal),
                "appraisal": appraisal.to_dict(),
            }
        )
    else:
        render_appraisal(result, appraisal)
    if not appraisal.passed:
        raise typer.Exit(1)


_POLICY_KINDS = ("resource", "appraisal")
_MAX_POLICY_BYTES = 256 * 1024


@policy_app.command("set")
def policy_set_command(
    policy_id: Annotated[str, typer.Argument(help="The policy id.")],
    file: Annotated[Path, typer.Option("--file", help="Policy document (CEL or YAML/JSON).")],
    kind: Annotated[
        str, typer.Option("--kind", help="resource (KBS resources, KMS keys) or appraisal.")
    ] = "resource",
    server: ServerOpt = None,
    admin_key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Store a new version of a policy on the service (checked there before it is stored)."""
    if kind not in _POLICY_KINDS:
        _fail(
            2,
            {
                "code": "USAGE",
                "field": "--kind",
                "expected": " | ".join(_POLICY_KINDS),
                "actual": kind,
                "message": f"unknown policy kind {kind}",
            },
            as_json,
        )
    raw = _read(file, "--file", _MAX_POLICY_BYTES, as_json)
    try:
        document = raw.decode("utf-8")
    except UnicodeDecodeError:
        _fail(
            2,
            {"code": "USAGE", "field": "--file", "message": "the policy is not UTF-8 text"},
            as_json,
        )
    body = {"kind": kind, "document": document}
    result = _call("PUT", f"/admin/v1/policies/{policy_id}", server, admin_key, as_json, body)
    _print(
        result,
        as_json,
        f"stored {result.get('kind')} policy {escape(str(result.get('id')))} "
        f"version {result.get('version')}",
    )


@policy_app.command("show")
def policy_show_command(
    policy_id: Annotated[str, typer.Argument(help="The policy id.")],
    server: ServerOpt = None,
    admin_key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A policy stored on the service: its kind, version and document."""
    result = _call("GET", f"/admin/v1/policies/{policy_id}", server, admin_key, as_json)
    _print(
        result,
        as_json,
        f"{result.get('kind')} policy [bold]{escape(str(result.get('id')))}[/] version "
        f"{result.get('version')}, updated {result.get('updated_at')}\n"
        + escape(str(result.get("document", "")).rstrip()),
    )
