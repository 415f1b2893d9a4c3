"""``nacre ear-key ...``: the service's EAR (attestation token) signing keys.

    nacre ear-key list      the current key and every key still in the JWKS (roles admin, auditor)
    nacre ear-key rotate    a new signing key now (role admin); the old one stays published until
                            the tokens it signed have expired

Exit codes: 0 done; 1 the service refused (its RFC 7807 problem is printed); 2 usage or I/O errors.
"""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from nacre.cli.secret_cmd import JsonOpt, KeyOpt, ServerOpt, _call, _print

__all__ = ["ear_key_app"]

ear_key_app = typer.Typer(
    help="The service's EAR signing keys: list and rotate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@ear_key_app.command("list")
def list_command(
    server: ServerOpt = None, admin_key: KeyOpt = None, as_json: JsonOpt = False
) -> None:
    """The current signing key and every key still published in the JWKS."""
    result = _call("GET", "/admin/v1/ear-keys", server, admin_key, as_json)
    if as_json:
        _print(result, True, "")
        return
    table = Table("kid", "current", "created", "signs until", "published until", box=None)
    for key in result.get("keys", []):
        table.add_row(
            str(key["kid"]),
            "yes" if key["current"] else "",
            str(key["created_at"]),
            str(key["signs_until"]),
            str(key["published_until"]),
        )
    Console(highlight=False).print(table)


@ear_key_app.command("rotate")
def rotate_command(
    server: ServerOpt = None, admin_key: KeyOpt = None, as_json: JsonOpt = False
) -> None:
    """A new signing key now (tokens already issued keep verifying until they expire)."""
    result = _call("POST", "/admin/v1/ear-keys/rotate", server, admin_key, as_json)
    verb = "rotated" if result.get("rotated") else "another replica rotated first"
    _print(result, as_json, f"{verb}: current key {result.get('current_kid')}")
