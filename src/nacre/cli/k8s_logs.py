"""Logging and error output shared by the ``nacre k8s`` processes (long-running, log-driven)."""

from __future__ import annotations

import json
import logging
import sys
from typing import Annotated, Final

import typer
from rich.console import Console
from rich.markup import escape

from nacre.errors import NacreError
from nacre.server.observe import JsonLogFormatter

__all__ = ["JsonLogOpt", "LogLevelOpt", "configure_logging", "exit_with"]

#: The logging options every ``nacre k8s`` process takes.
JsonLogOpt = Annotated[
    bool, typer.Option("--json", envvar="NACRE_K8S_JSON", help="Log JSON lines.")
]
LogLevelOpt = Annotated[
    str, typer.Option("--log-level", envvar="NACRE_K8S_LOG_LEVEL", help="debug, info, ...")
]

#: Attributes every LogRecord has; anything else was passed with ``extra=`` and is printed.
_RECORD_ATTRS: Final = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
}
#: Libraries that log every request at INFO: their lines would drown the components' own.
_CHATTY: Final = ("httpx", "httpcore", "kubernetes.client.rest", "urllib3")


class _TextLogFormatter(logging.Formatter):
    """``time level logger: message key=value ...``: the plain-text twin of ``--json``."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = [
            f"{k}={v}"
            for k, v in vars(record).items()
            if k not in _RECORD_ATTRS and not k.startswith("_")
        ]
        return " ".join([line, *extras])


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of the record (not at set-up)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def configure_logging(as_json: bool, level: str) -> None:
    """Log lines (JSON with ``--json``) on stderr at ``level`` for the whole process."""
    handler = _StderrHandler()
    if as_json:
        handler.setFormatter(JsonLogFormatter())
    else:
        handler.setFormatter(_TextLogFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in _CHATTY:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))


def exit_with(exc: NacreError, code: int, *, as_json: bool = False) -> typer.Exit:
    """Print ``exc`` (field, expected, actual, what to do) and return the Exit to raise."""
    if as_json:
        sys.stdout.write(json.dumps({"ok": False, "error": exc.to_dict()}) + "\n")
        return typer.Exit(code)
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    err.print(f"[bold red]error[/] {escape(f'[{exc.code}] {exc.message}')}")
    if exc.field is not None:
        err.print(f"  field:    {escape(exc.field)}")
        err.print(f"  expected: {escape(str(exc.expected))}")
        err.print(f"  actual:   {escape(str(exc.actual))}")
    if exc.hint:
        err.print(f"  what to do: {escape(exc.hint)}")
    return typer.Exit(code)
