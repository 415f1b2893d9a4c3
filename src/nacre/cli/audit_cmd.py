"""``nacre audit verify``: check the hash-chained audit log offline.

Exit 0 when the chain verifies, 1 when a link is broken (the first broken entry is reported),
2 on usage errors (no database, not a nacre database, unreadable URL, both ``--database`` and
``--data-dir``). Verifying never creates or upgrades a schema.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import platformdirs
import typer
from rich.console import Console
from rich.markup import escape
from sqlalchemy.exc import SQLAlchemyError

from nacre.errors import NacreError, UsageError
from nacre.store import ChainReport, default_url, open_store, verify_chain
from nacre.store._engine import sqlite_path

__all__ = ["audit_app", "verify_command"]

audit_app = typer.Typer(
    help="Check the audit log.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@audit_app.callback()
def _audit() -> None:
    """Check the hash-chained audit log of a nacre database."""


def _default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("nacre"))


def _resolve_url(database: str | None, data_dir: Path | None) -> str:
    if database is not None and data_dir is not None:
        raise UsageError(
            "give --database or --data-dir, not both",
            field="--database/--data-dir",
            expected="one of them",
            actual="both",
        )
    url = database if database is not None else default_url(data_dir or _default_data_dir())
    db_file = sqlite_path(url)
    if db_file is not None and not db_file.is_file():
        # Verifying must not create an empty database and call it a valid chain.
        raise UsageError(
            "no nacre database there",
            field="database",
            expected="an existing SQLite file",
            actual=str(db_file),
        )
    return url


def _render(report: ChainReport) -> None:
    out = Console(highlight=False, soft_wrap=True)
    if report.ok:
        out.print(
            f"[bold green]OK[/] audit chain verifies: {report.entries} entries, "
            f"head {report.head_seq} {report.head_hash}"
        )
        return
    out.print(
        f"[bold red]BROKEN[/] at entry {report.broken_seq}: {escape(report.reason or '')} "
        f"({report.field}: expected {escape(report.expected or '')}, "
        f"got {escape(report.actual or '')}); {report.entries} entries before it verify"
    )


@audit_app.command("verify")
def verify_command(
    database: Annotated[
        str | None,
        typer.Option("--database", help="Database URL (sqlite:///... or postgresql://...)."),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="nacre data directory (its nacre.db is checked)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Recompute every hash of the audit chain and report the first broken link."""
    try:
        url = _resolve_url(database, data_dir)
        with open_store(url, migrate=False) as store:
            report = verify_chain(store)
    except (NacreError, SQLAlchemyError) as exc:
        error = (
            exc.to_dict()
            if isinstance(exc, NacreError)
            else {
                "code": "DATABASE",
                "field": "database",
                "expected": None,
                "actual": None,
                "message": str(exc).splitlines()[0],
            }
        )
        if as_json:
            sys.stdout.write(json.dumps({"ok": False, "error": error}, indent=2) + "\n")
        else:
            Console(stderr=True, highlight=False).print(
                f"[bold red]error:[/] {escape(str(error['message']))}"
            )
        raise typer.Exit(2) from None
    if as_json:
        sys.stdout.write(json.dumps(report.to_json(), indent=2) + "\n")
    else:
        _render(report)
    raise typer.Exit(0 if report.ok else 1)
