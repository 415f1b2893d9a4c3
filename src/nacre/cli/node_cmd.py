"""``nacre node check``: which TEE this machine offers and what is missing to use it.

Exit 0 when a usable TEE is found, 1 when none is usable (the findings say what to do), 2 on usage
errors (e.g. ``--root`` is not a directory).
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

from nacre.errors import NacreError
from nacre.node import NodeReport, discover

__all__ = ["check_command", "node_app"]

node_app = typer.Typer(
    help="Inspect this node: TEE hardware, drivers, devices and services.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_TEE_NAMES = {
    "sgx": "Intel SGX",
    "tdx": "Intel TDX guest",
    "snp": "AMD SEV-SNP guest",
    "none": "no TEE",
}
_MARKS = {"ok": "[green]✔ ok[/]", "warn": "[yellow]! warn[/]", "missing": "[red]✘ missing[/]"}


@node_app.callback()
def _node() -> None:
    """Inspect this node: TEE hardware, drivers, devices and services."""


def _json_out(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


def _render(report: NodeReport) -> None:
    out = Console(highlight=False, soft_wrap=True)
    name = _TEE_NAMES[report.tee]
    if report.usable:
        out.print(f"[bold green]USABLE[/] {name}")
    elif report.tee == "none":
        out.print("[bold red]NO TEE[/] this machine offers no SGX, TDX or SEV-SNP to workloads")
    else:
        out.print(f"[bold red]NOT USABLE[/] {name}: fix the missing items below")
    if report.epc_mib is not None:
        out.print(f"EPC: {report.epc_mib} MiB")
    table = Table(box=None, show_header=True, header_style="bold", pad_edge=False)
    table.add_column("status", no_wrap=True)
    table.add_column("check", no_wrap=True)
    table.add_column("seen")
    table.add_column("what to do")
    for f in report.findings:
        table.add_row(_MARKS[f.status], f.check, escape(f.seen), escape(f.advice or ""))
    out.print(table)


@node_app.command("check")
def check_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    root: Annotated[
        Path,
        typer.Option(
            "--root",
            help="Read /proc, /sys and /dev under this directory (a fake tree: device nodes "
            "and sockets may then be regular files).",
        ),
    ] = Path("/"),
) -> None:
    """Say which TEE this machine offers and what is missing to use it."""
    try:
        report = discover(root)
    except NacreError as exc:
        if as_json:
            _json_out({"tee": None, "usable": False, "findings": [], "error": exc.to_dict()})
        else:
            err = Console(stderr=True, highlight=False, soft_wrap=True)
            err.print(f"[bold red]error[/] {escape(f'[{exc.code}] {exc.message}')}")
            if exc.field is not None:
                err.print(f"  field:    {escape(exc.field)}")
                err.print(f"  expected: {escape(str(exc.expected))}")
                err.print(f"  actual:   {escape(str(exc.actual))}")
            if exc.hint:
                err.print(f"  what to do: {escape(exc.hint)}")
        raise typer.Exit(2) from None
    if as_json:
        _json_out({**report.to_dict(), "error": None})
    else:
        _render(report)
    raise typer.Exit(0 if report.usable else 1)
