"""``nacre sim init|quote|bundle``: a simulated SGX/TDX platform (exit 0 ok, 2 usage or I/O error)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from cryptography.hazmat.primitives import hashes
from rich.console import Console
from rich.markup import escape

from nacre.cli.render import render_usage_error
from nacre.errors import NacreError, UsageError
from nacre.sim.measure import Manifest
from nacre.sim.platform import SimPlatform

__all__ = ["bundle_command", "init_command", "quote_command", "sim_app"]

sim_app = typer.Typer(
    help="A simulated SGX/TDX platform: real quote bytes under a simulation PKI.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_DirOption = Annotated[
    Path | None,
    typer.Option("--dir", help="Platform directory (default: NACRE_SIM_DIR or the user data dir)."),
]
_JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]


def _json_out(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


def _fail(exc: NacreError, as_json: bool) -> typer.Exit:
    if as_json:
        _json_out({"error": exc.to_dict()})
    else:
        render_usage_error(exc)
    return typer.Exit(2)


def _write(path: Path, data: bytes, what: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    except OSError as exc:
        raise UsageError(
            f"cannot write the {what} to {path}: {exc.strerror}",
            field="--out",
            expected="a writable path",
            actual=str(path),
        ) from exc


@sim_app.command("init")
def init_command(
    sim_dir: _DirOption = None,
    tcb_status: Annotated[
        str, typer.Option("--tcb-status", help="TCB status the collateral gives the platform.")
    ] = "UpToDate",
    advisory: Annotated[
        list[str] | None,
        typer.Option("--advisory", help="Advisory ID of the platform's TCB level (repeatable)."),
    ] = None,
    collateral_days: Annotated[
        int, typer.Option("--collateral-days", help="Validity of issued collateral, in days.")
    ] = 30,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing platform.")] = False,
    as_json: _JsonOption = False,
) -> None:
    """Create a simulated platform: PKI, keys (0600), TCB level."""
    try:
        p = SimPlatform.init(
            sim_dir,
            tcb_status=tcb_status,
            advisory_ids=tuple(advisory or ()),
            collateral_days=collateral_days,
            force=force,
        )
    except NacreError as exc:
        raise _fail(exc, as_json) from None
    facts = {
        "dir": str(p.dir),
        "fmspc": p.fmspc.hex(),
        "tcb_status": p.tcb_status,
        "root_sha256": p.root_certificate.fingerprint(hashes.SHA256()).hex(),
        "error": None,
    }
    if as_json:
        _json_out(facts)
        return
    out = Console(highlight=False, soft_wrap=True)
    out.print(f"[bold green]created[/] simulated platform in {escape(str(p.dir))}")
    out.print(f"  FMSPC {facts['fmspc']}, TCB status {p.tcb_status}")
    out.print("  evidence from it verifies only with: nacre verify --trust-sim")


def _report_data(text: str) -> bytes:
    try:
        data = bytes.fromhex(text)
    except ValueError:
        raise UsageError(
            "--report-data is not hex",
            field="--report-data",
            expected="up to 128 hex digits (64 bytes)",
            actual=text[:40],
        ) from None
    if len(data) > 64:
        raise UsageError(
            "--report-data is longer than 64 bytes",
            field="--report-data",
            expected="up to 128 hex digits (64 bytes)",
            actual=f"{len(data)} bytes",
        )
    return data


@sim_app.command("quote")
def quote_command(
    tee: Annotated[str, typer.Option("--tee", help="sgx (v3 quote) or tdx (v4 quote).")],
    report_data: Annotated[
        str, typer.Option("--report-data", help="Report data, hex (<= 64 bytes, zero-padded).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Where to write the quote.")],
    sim_dir: _DirOption = None,
    manifest: Annotated[
        Path | None, typer.Option("--manifest", help="Workload manifest (TOML or JSON).")
    ] = None,
    as_json: _JsonOption = False,
) -> None:
    """Write a quote of the workload in MANIFEST (default: an empty workload)."""
    try:
        rd = _report_data(report_data)
        p = SimPlatform.load(sim_dir)
        m = Manifest.load(manifest) if manifest is not None else None
        quote = p.quote(tee, rd, m)
        _write(out, quote, "quote")
        measurement = p.measure(m)
    except NacreError as exc:
        raise _fail(exc, as_json) from None
    if as_json:
        _json_out(
            {
                "out": str(out),
                "tee": tee,
                "bytes": len(quote),
                "measurement": measurement.to_dict(),
                "error": None,
            }
        )
        return
    out_console = Console(highlight=False, soft_wrap=True)
    out_console.print(f"[bold green]wrote[/] {tee.upper()} quote ({len(quote)} bytes) to {out}")
    if tee == "sgx":
        out_console.print(f"  MRENCLAVE {measurement.mr_enclave.hex()}")
        out_console.print(f"  MRSIGNER  {measurement.mr_signer.hex()}")
    else:
        out_console.print(f"  MRTD {measurement.mr_td.hex()}")


@sim_app.command("bundle")
def bundle_command(
    tee: Annotated[str, typer.Option("--tee", help="sgx or tdx.")],
    out: Annotated[Path, typer.Option("--out", help="Bundle directory to write.")],
    sim_dir: _DirOption = None,
    as_json: _JsonOption = False,
) -> None:
    """Write the platform's collateral for TEE as a bundle (with sim_root_ca.pem)."""
    try:
        p = SimPlatform.load(sim_dir)
        bundle = p.bundle(tee)
        try:
            bundle.write_dir(out)
        except OSError as exc:
            raise UsageError(
                f"cannot write the bundle to {out}: {exc.strerror}",
                field="--out",
                expected="a writable directory",
                actual=str(out),
            ) from exc
    except NacreError as exc:
        raise _fail(exc, as_json) from None
    names = sorted(bundle.files)
    if as_json:
        _json_out({"out": str(out), "tee": tee, "files": names, "error": None})
        return
    Console(highlight=False, soft_wrap=True).print(
        f"[bold green]wrote[/] {len(names)} files to {escape(str(out))}"
    )
