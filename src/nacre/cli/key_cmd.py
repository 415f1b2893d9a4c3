"""``nacre key ...``: HSM-like keys kept inside the service, through its ``/kms/v1`` API.

Every call signs a short-lived admin JWT with ``--admin-key`` (roles: ``admin`` manages,
``key-user`` uses, ``auditor`` lists). Key material never leaves the service: ``encrypt``,
``decrypt`` and ``sign`` send the data to the service and print what it answers.

    nacre key create db-key --type AES-256 [--policy-id P] [--exportable] [--rotation-days N]
    nacre key import old-key --type EC-P256 --file key.pem [same options as create]
    nacre key list | show KEY | rotate KEY | disable KEY | enable KEY
    nacre key schedule-delete KEY --days 7 | cancel-delete KEY
    nacre key encrypt KEY [--in FILE] [--out FILE] [--aad TEXT]   (stdin/stdout by default)
    nacre key decrypt KEY [--in FILE] [--out FILE] [--aad TEXT]
    nacre key sign KEY --file FILE [--hex]        prints the signature (base64, or hex)
    nacre key verify KEY --file FILE --signature SIG [--hex]

Exit codes: 0 done (``verify``: the signature is valid); 1 the service refused (its RFC 7807
problem is printed) or the signature is invalid; 2 usage or I/O errors.
"""

from __future__ import annotations

import base64
import binascii
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import typer
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from nacre.cli.secret_cmd import JsonOpt, KeyOpt, ServerOpt, _call, _fail, _print, _read
from nacre.kms import KEY_TYPES, MAX_AAD_BYTES, MAX_DATA_BYTES
from nacre.token import JweError, encrypt_for_tee_key

__all__ = ["key_app"]

key_app = typer.Typer(
    help="HSM-like keys kept inside the service: create, rotate, use.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

KeyArg = Annotated[str, typer.Argument(help="The key id (its name).")]
InOpt = Annotated[Path | None, typer.Option("--in", help="Input file (default stdin).")]
OutOpt = Annotated[Path | None, typer.Option("--out", help="Output file (default stdout).")]
AadOpt = Annotated[
    str, typer.Option("--aad", help="Additional authenticated data (UTF-8 text; default none).")
]
HexOpt = Annotated[bool, typer.Option("--hex", help="Signatures in hex instead of base64.")]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _path(key_id: str, op: str = "") -> str:
    return f"/kms/v1/keys/{key_id}" + (f"/{op}" if op else "")


def _input(path: Path | None, as_json: bool) -> bytes:
    if path is not None:
        return _read(path, "--in", MAX_DATA_BYTES + 1024, as_json)
    stream: BinaryIO = sys.stdin.buffer
    data = stream.read(MAX_DATA_BYTES + 1025)
    if len(data) > MAX_DATA_BYTES + 1024:
        _fail(
            2,
            {
                "code": "LIMIT_EXCEEDED",
                "field": "stdin",
                "expected": f"<= {MAX_DATA_BYTES} bytes",
                "message": "the input is too large",
            },
            as_json,
        )
    return data


def _output(data: bytes, path: Path | None, as_json: bool) -> None:
    if path is None:
        out: BinaryIO = sys.stdout.buffer
        out.write(data)
        out.flush()
        return
    try:
        path.write_bytes(data)
    except OSError as exc:
        _fail(
            2,
            {"code": "USAGE", "field": "--out", "message": f"cannot write {path}: {exc.strerror}"},
            as_json,
        )


def _aad(text: str, as_json: bool) -> str:
    raw = text.encode("utf-8")
    if len(raw) > MAX_AAD_BYTES:
        _fail(
            2,
            {"code": "LIMIT_EXCEEDED", "field": "--aad", "message": "--aad is too large"},
            as_json,
        )
    return _b64(raw)


def _describe(info: dict[str, Any]) -> str:
    parts = [
        f"{escape(str(info.get('id')))}: {info.get('type')}, {info.get('state')}, "
        f"version {info.get('current_version')}"
    ]
    if info.get("policy_id"):
        parts.append(f"policy {escape(str(info['policy_id']))}")
    if info.get("exportable"):
        parts.append("exportable")
    if info.get("deletion_date"):
        parts.append(f"destroyed at {info['deletion_date']}")
    return ", ".join(parts)


# -- management ---------------------------------------------------------------------------------


PolicyIdOpt = Annotated[
    str | None,
    typer.Option("--policy-id", help="Resource policy deciding which workloads may use it."),
]
ExportableOpt = Annotated[
    bool, typer.Option("--exportable", help="May leave as a JWE to an attested TEE key.")
]
RotationOpt = Annotated[
    int | None, typer.Option("--rotation-days", help="Rotate automatically every N days.")
]
ExpiresOpt = Annotated[str | None, typer.Option("--expires-at", help="ISO-8601 time with offset.")]
TypeOpt = Annotated[str, typer.Option("--type", help=f"One of {', '.join(KEY_TYPES)}.")]


def _new_key_body(
    name: str,
    key_type: str,
    policy_id: str | None,
    exportable: bool,
    rotation_days: int | None,
    expires_at: str | None,
    as_json: bool,
) -> dict[str, Any]:
    """The members ``create`` and ``import`` share, checked before anything is sent."""
    if key_type not in KEY_TYPES:
        _fail(
            2,
            {
                "code": "USAGE",
                "field": "--type",
                "expected": ", ".join(KEY_TYPES),
                "actual": key_type,
                "message": f"unknown key type {key_type}",
            },
            as_json,
        )
    body: dict[str, Any] = {"type": key_type, "name": name, "exportable": exportable}
    if policy_id is not None:
        body["policy_id"] = policy_id
    if rotation_days is not None:
        body["rotation_days"] = rotation_days
    if expires_at is not None:
        try:
            when = datetime.fromisoformat(expires_at)
        except ValueError:
            when = None
        if when is None or when.tzinfo is None:
            _fail(
                2,
                {
                    "code": "USAGE",
                    "field": "--expires-at",
                    "expected": "ISO-8601 with offset",
                    "actual": expires_at,
                    "message": "--expires-at is not an ISO-8601 time with offset",
                },
                as_json,
            )
        body["expires_at"] = when.isoformat()
    return body


@key_app.command("create")
def create_command(
    name: Annotated[str, typer.Argument(help="The new key's id.")],
    key_type: TypeOpt = "AES-256",
    policy_id: PolicyIdOpt = None,
    exportable: ExportableOpt = False,
    rotation_days: RotationOpt = None,
    expires_at: ExpiresOpt = None,
    server: ServerOpt = None,
    admin_key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a key inside the service (role admin)."""
    body = _new_key_body(name, key_type, policy_id, exportable, rotation_days, expires_at, as_json)
    result = _call("POST", "/kms/v1/keys", server, admin_key, as_json, body)
    _print(result, as_json, "created " + _describe(result))


#: Largest key file read for import (an RSA-3072 private key in PEM is about 2.5 KB).
_MAX_KEY_FILE_BYTES = 16 * 1024


def _import_plaintext(data: bytes, key_type: str, as_json: bool) -> bytes:
    """What the import JWE carries: the raw 32 bytes for AES-256 (a 32-byte file or 64 hex
    digits), PKCS#8 DER for the others (read from PEM or DER, PKCS#8 or traditional)."""
    if key_type == "AES-256":
        text = data.strip()
        if len(data) == 32:
            return data
        try:
            raw = bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            raw = b""
        if len(raw) == 32:
            return raw
        _fail(
            2,
            {
                "code": "USAGE",
                "field": "--file",
                "expected": "32 bytes, or 64 hex digits",
                "actual": f"{len(data)} bytes",
                "message": "an AES-256 key file holds exactly 32 bytes (or their hex)",
            },
            as_json,
        )
    try:
        if b"-----BEGIN" in data:
            key = serialization.load_pem_private_key(data, password=None)
        else:
            key = serialization.load_der_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        _fail(
            2,
            {
                "code": "USAGE",
                "field": "--file",
                "expected": "an unencrypted private key, PEM or DER",
                "actual": type(exc).__name__,
                "message": f"the key file is not a private key: {exc}",
            },
            as_json,
        )
    return key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@key_app.command("import")
def import_command(
    name: Annotated[str, typer.Argument(help="The new key's id.")],
    key_file: Annotated[
        Path,
        typer.Option(
            "--file",
            help="The material: AES-256 as 32 bytes or 64 hex digits; other types as an "
            "unencrypted private key (PEM or DER).",
        ),
    ],
    key_type: TypeOpt = "AES-256",
    policy_id: PolicyIdOpt = None,
    exportable: ExportableOpt = False,
    rotation_days: RotationOpt = None,
    expires_at: ExpiresOpt = None,
    server: ServerOpt = None,
    admin_key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Bring existing key material into the service (role admin). The material is wrapped here,
    to the service's import key (ECDH-ES+A256KW, A256GCM), and never sent in clear."""
    body = _new_key_body(name, key_type, policy_id, exportable, rotation_days, expires_at, as_json)
    plaintext = _import_plaintext(
        _read(key_file, "--file", _MAX_KEY_FILE_BYTES, as_json), key_type, as_json
    )
    wrapping = _call("GET", "/kms/v1/import/wrapping-key", server, admin_key, as_json)
    try:
        body["wrapped"] = encrypt_for_tee_key(plaintext, wrapping["jwk"])
    except (JweError, KeyError, TypeError) as exc:
        _fail(
            1,
            {
                "code": "IMPORT_KEY_INVALID",
                "field": "jwk",
                "message": f"the service's import key cannot be used: {exc}",
            },
            as_json,
        )
    result = _call("POST", "/kms/v1/import", server, admin_key, as_json, body)
    _print(result, as_json, "imported " + _describe(result))


@key_app.command("list")
def list_command(
    include_destroyed: Annotated[
        bool, typer.Option("--all", help="Include destroyed keys.")
    ] = False,
    server: ServerOpt = None,
    admin_key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Keys' metadata (roles admin, auditor, key-user)."""
    path = "/kms/v1/keys" + ("?include_destroyed=true" if include_destroyed else "")
    result = _call("GET", path, server, admin_key, as_json)
    if as_json:
        _print(result, True, "")
        return
    table = Table("id", "type", "state", "version", "policy", "exportable", box=None)
    for item in result.get("keys", []):
        table.add_row(
            str(item["id"]),
            str(item["type"]),
            str(item["state"]),
            str(item["current_version"]),
            str(item["policy_id"] or "-"),
            "yes" if item["exportable"] else "no",
        )
    Console(highlight=False).print(table)


@key_app.command("show")
def show_command(
    key_id: KeyArg, server: ServerOpt = None, admin_key: KeyOpt = None, as_json: JsonOpt = False
) -> None:
    """A key's metadata, versions and public key (asymmetric keys)."""
    result = _call("GET", _path(key_id), server, admin_key, as_json)
    human = _describe(result)
    if result.get("public_key_pem"):
        human += "\n" + escape(str(result["public_key_pem"]).rstrip())
    _print(result, as_json, human)


def _transition(
    op: str,
    key_id: str,
    server: str | None,
    admin_key: Path | None,
    as_json: bool,
    body: dict[str, Any] | None = None,
) -> None:
    result = _call("POST", _path(key_id, op), server, admin_key, as_json, body)
    _print(result, as_json, _describe(result))


@key_app.command("rotate")
def rotate_command(
    key_id: KeyArg, server: ServerOpt = None, admin_key: KeyOpt = None, as_json: JsonOpt = False
) -> None:
    """A new version becomes current (older versions still decrypt and verify)."""
    _transition("rotate", key_id, server, admin_key, as_json)


@key_app.command("disable")
def disable_command(
    key_id: KeyArg, server: ServerOpt = None, admin_key: KeyOpt = None, as_json: JsonOpt = False
) -> None:
    """Refuse every use of the key until it is enabled again."""
    _transition("disable", key_id, server, admin_key, as_json)


@key_app.command("enable")
def enable_command(
    key_id: KeyArg, server: ServerOpt = None, admin_key: KeyOpt = None, as_json: JsonOpt = False
) -> None:
    """Enable a disabled key."""
    _transition("enable", key_id, server, admin_key, as_json)


@key_app.command("schedule-delete")
def schedule_delete_command(
    key_id: KeyArg,
    days: Annotated[int, typer.Option("--days", help="Waiting period (7..30 days).")] = 30,
    server: ServerOpt = None,
    admin_key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Destroy the key after a waiting period (cancel with cancel-delete)."""
    _transition("schedule-delete", key_id, server, admin_key, as_json, {"days": days})


@key_app.command("cancel-delete")
def cancel_delete_command(
    key_id: KeyArg, server: ServerOpt = None, admin_key: KeyOpt = None, as_json: JsonOpt = False
) -> None:
    """Stop a scheduled deletion (the key stays disabled until enabled)."""
    _transition("cancel-delete", key_id, server, admin_key, as_json)


# -- use ----------------------------------------------------------------------------------------


@key_app.command("encrypt")
def encrypt_command(
    key_id: KeyArg,
    infile: InOpt = None,
    outfile: OutOpt = None,
    aad: AadOpt = "",
    server: ServerOpt = None,
    admin_key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Encrypt --in (or stdin) inside the service; the ciphertext goes to --out (or stdout)."""
    _transform(
        "encrypt",
        ("plaintext", "ciphertext"),
        key_id,
        infile,
        outfile,
        aad,
        server,
        admin_key,
        as_json,
    )


@key_app.command("decrypt")
def decrypt_command(
    key_id: KeyArg,
    infile: InOpt = None,
    outfile: OutOpt = None,
    aad: AadOpt = "",
    server: ServerOpt = None,
    admin_key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Decrypt --in (or stdin) inside the service; the plaintext goes to --out (or stdout)."""
    _transform(
        "decrypt",
        ("ciphertext", "plaintext"),
        key_id,
        infile,
        outfile,
        aad,
        server,
        admin_key,
        as_json,
    )


def _transform(
    op: str,
    members: tuple[str, str],
    key_id: str,
    infile: Path | None,
    outfile: Path | None,
    aad: str,
    server: str | None,
    admin_key: Path | None,
    as_json: bool,
) -> None:
    """Send --in (or stdin) as ``members[0]`` to ``op``; write the answer's ``members[1]``."""
    sent, answered = members
    body = {sent: _b64(_input(infile, as_json)), "aad": _aad(aad, as_json)}
    result = _call("POST", _path(key_id, op), server, admin_key, as_json, body)
    if as_json:
        _print(result, True, "")
        return
    _output(base64.b64decode(result[answered]), outfile, as_json)


@key_app.command("sign")
def sign_command(
    key_id: KeyArg,
    file: Annotated[Path, typer.Option("--file", help="The message to sign.")],
    as_hex: HexOpt = False,
    prehashed: Annotated[
        bool, typer.Option("--prehashed", help="--file holds the digest itself.")
    ] = False,
    server: ServerOpt = None,
    admin_key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Sign --file inside the service; prints the signature (base64, or hex with --hex)."""
    message = _read(file, "--file", MAX_DATA_BYTES, as_json)
    body = {"message": _b64(message), "prehashed": prehashed}
    result = _call("POST", _path(key_id, "sign"), server, admin_key, as_json, body)
    signature = base64.b64decode(result["signature"])
    text = signature.hex() if as_hex else result["signature"]
    if as_json:
        _print({**result, "signature_hex": signature.hex()}, True, "")
    else:
        sys.stdout.write(text + "\n")


@key_app.command("verify")
def verify_command(
    key_id: KeyArg,
    file: Annotated[Path, typer.Option("--file", help="The signed message.")],
    signature: Annotated[str, typer.Option("--signature", help="The signature (base64 or hex).")],
    as_hex: HexOpt = False,
    prehashed: Annotated[
        bool, typer.Option("--prehashed", help="--file holds the digest itself.")
    ] = False,
    server: ServerOpt = None,
    admin_key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Check a signature inside the service; exit 0 when it is valid, 1 when it is not."""
    message = _read(file, "--file", MAX_DATA_BYTES, as_json)
    try:
        raw = bytes.fromhex(signature) if as_hex else base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        _fail(
            2,
            {
                "code": "USAGE",
                "field": "--signature",
                "expected": "hex" if as_hex else "base64",
                "message": "--signature does not decode",
            },
            as_json,
        )
    body = {"message": _b64(message), "signature": _b64(raw), "prehashed": prehashed}
    result = _call("POST", _path(key_id, "verify"), server, admin_key, as_json, body)
    valid = result.get("valid") is True
    _print(
        result,
        as_json,
        f"signature {'[green]valid[/]' if valid else '[red]INVALID[/]'} "
        f"({result.get('algorithm')}, key {escape(key_id)} version {result.get('version')})",
    )
    if not valid:
        raise typer.Exit(1)
