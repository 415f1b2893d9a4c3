"""``nacre secret put|get|list|delete``: manage KBS resources through the admin API.

Every call signs a short-lived admin JWT with ``--admin-key`` (the bootstrap key ``nacre serve``
wrote to ``DATA_DIR/admin.key``, or any registered key). ``get`` returns metadata only: a secret
never leaves the service in clear, only JWE-wrapped to an attested TEE key over the KBS protocol.

Exit codes: 0 done; 1 the service refused (its RFC 7807 problem is printed); 2 usage or I/O
errors (unreadable file or key, service unreachable).
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from nacre.errors import NacreError, UsageError
from nacre.server import ADMIN_KEY_FILE, load_admin_key, sign_admin_token
from nacre.store import MAX_RESOURCE_BYTES, ResourceName

__all__ = ["secret_app"]

ENV_SERVER = "NACRE_SERVER"
#: HTTPS to a service whose CA is not in the system store (the cluster's KBS): a PEM CA file, and
#: the name its certificate carries when it is reached through a port-forward (127.0.0.1).
ENV_CA_BUNDLE = "NACRE_CA_BUNDLE"
ENV_TLS_SERVER_NAME = "NACRE_TLS_SERVER_NAME"
_TIMEOUT = 30.0

secret_app = typer.Typer(
    help="Store, inspect and delete KBS resources (secrets).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ServerOpt = Annotated[
    str | None,
    typer.Option("--server", help=f"Service URL (default ${ENV_SERVER} or http://127.0.0.1:8080)."),
]
KeyOpt = Annotated[
    Path | None,
    typer.Option("--admin-key", help="Admin private key PEM (default DATA_DIR/admin.key)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]


def _fail(code: int, error: dict[str, Any], as_json: bool) -> NoReturn:
    if as_json:
        sys.stdout.write(json.dumps({"ok": False, "error": error}, indent=2) + "\n")
    else:
        if error.get("field") is not None and error.get("title"):
            msg = str(error["title"])
            msg += (
                f" ({error['field']}: expected {error.get('expected')}, got {error.get('actual')})"
            )
        else:
            msg = str(error.get("detail") or error.get("message") or error.get("title"))
        Console(stderr=True, highlight=False, soft_wrap=True).print(
            f"[bold red]error:[/] {escape(msg)}"
        )
    raise typer.Exit(code)


def _tls_settings() -> tuple[ssl.SSLContext | bool, dict[str, Any]]:
    """Certificate verification from $NACRE_CA_BUNDLE / $NACRE_TLS_SERVER_NAME (always on)."""
    verify: ssl.SSLContext | bool = True
    ca = os.environ.get(ENV_CA_BUNDLE)
    if ca:
        try:
            verify = ssl.create_default_context(cafile=ca)
        except (OSError, ssl.SSLError) as exc:
            raise UsageError(
                f"cannot load the CA bundle: {exc}",
                field=ENV_CA_BUNDLE,
                expected="a PEM file of CA certificates",
                actual=ca,
            ) from exc
    name = os.environ.get(ENV_TLS_SERVER_NAME)
    return verify, ({"sni_hostname": name} if name else {})


def _call(
    method: str,
    path: str,
    server: str | None,
    admin_key: Path | None,
    as_json: bool,
    body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    try:
        from nacre.cli.serve_cmd import default_data_dir

        key = load_admin_key(admin_key or default_data_dir() / ADMIN_KEY_FILE)
        token = sign_admin_token(key, now=datetime.now(UTC))
        base = (server or os.environ.get(ENV_SERVER) or "http://127.0.0.1:8080").rstrip("/")
        verify, extensions = _tls_settings()
        with httpx.Client(base_url=base, timeout=_TIMEOUT, verify=verify) as client:
            response = client.request(
                method,
                path,
                json=body,
                headers={"Authorization": f"Bearer {token}"},
                extensions=extensions,
            )
    except NacreError as exc:
        _fail(2, exc.to_dict(), as_json)
    except httpx.HTTPError as exc:
        _fail(2, {"code": "UNREACHABLE", "message": f"cannot reach the service: {exc}"}, as_json)
    try:
        payload = response.json()
    except ValueError:
        payload = {"title": response.text[:200]}
    if response.status_code >= 400:
        _fail(1, payload if isinstance(payload, dict) else {"title": str(payload)}, as_json)
    return payload if isinstance(payload, dict) else {"result": payload}


def _name(name: str, as_json: bool) -> ResourceName:
    try:
        return ResourceName.parse(name)
    except UsageError as exc:
        _fail(2, exc.to_dict(), as_json)


def _print(result: dict[str, Any], as_json: bool, human: str) -> None:
    if as_json:
        sys.stdout.write(json.dumps({"ok": True, **result}, indent=2) + "\n")
    else:
        Console(highlight=False, soft_wrap=True).print(human)


def _read(path: Path, what: str, limit: int, as_json: bool) -> bytes:
    try:
        with path.open("rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        _fail(
            2,
            {"code": "USAGE", "field": what, "message": f"cannot read {path}: {exc.strerror}"},
            as_json,
        )
    if len(data) > limit:
        _fail(
            2,
            {
                "code": "LIMIT_EXCEEDED",
                "field": what,
                "expected": f"<= {limit} bytes",
                "actual": f"> {limit} bytes",
                "message": f"{path} is too large",
            },
            as_json,
        )
    return data


@secret_app.command("put")
def put_command(
    name: Annotated[str, typer.Argument(help="repo/type/tag")],
    file: Annotated[Path, typer.Option("--file", help="The secret's bytes.")],
    server: ServerOpt = None,
    admin_key: KeyOpt = None,
    policy: Annotated[
        Path | None, typer.Option("--policy", help="Release policy file (CEL or YAML/JSON).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Store a new version of a resource, optionally with its release policy."""
    rname = _name(name, as_json)
    body: dict[str, Any] = {
        "data": base64.b64encode(_read(file, "--file", MAX_RESOURCE_BYTES, as_json)).decode()
    }
    if policy is not None:
        text = _read(policy, "--policy", 256 * 1024, as_json)
        try:
            body["policy"] = text.decode("utf-8")
        except UnicodeDecodeError:
            _fail(
                2,
                {"code": "USAGE", "field": "--policy", "message": "the policy is not UTF-8 text"},
                as_json,
            )
    result = _call("PUT", f"/admin/v1/resources/{rname}", server, admin_key, as_json, body)
    _print(
        result,
        as_json,
        f"stored {escape(str(rname))} version {result.get('version')}"
        + (f" (policy {escape(str(result.get('policy_id')))})" if result.get("policy_id") else ""),
    )


@secret_app.command("get")
def get_command(
    name: Annotated[str, typer.Argument(help="repo/type/tag")],
    server: ServerOpt = None,
    admin_key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A resource's metadata (never the secret)."""
    rname = _name(name, as_json)
    result = _call("GET", f"/admin/v1/resources/{rname}", server, admin_key, as_json)
    _print(
        result,
        as_json,
        f"{escape(str(rname))}: version {result.get('version')}, policy "
        f"{escape(str(result.get('policy_id')))}, updated {result.get('updated_at')}",
    )


@secret_app.command("list")
def list_command(
    server: ServerOpt = None, admin_key: KeyOpt = None, as_json: JsonOpt = False
) -> None:
    """All resources (metadata only)."""
    result = _call("GET", "/admin/v1/resources", server, admin_key, as_json)
    if as_json:
        _print(result, True, "")
        return
    table = Table("name", "version", "policy", "updated", box=None)
    for item in result.get("resources", []):
        table.add_row(
            str(item["name"]),
            str(item["version"]),
            str(item["policy_id"] or "-"),
            str(item["updated_at"]),
        )
    Console(highlight=False).print(table)


@secret_app.command("delete")
def delete_command(
    name: Annotated[str, typer.Argument(help="repo/type/tag")],
    server: ServerOpt = None,
    admin_key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Delete a resource (it is no longer released; the audit log keeps the record)."""
    rname = _name(name, as_json)
    result = _call("DELETE", f"/admin/v1/resources/{rname}", server, admin_key, as_json)
    _print(result, as_json, f"deleted {escape(str(rname))}")
