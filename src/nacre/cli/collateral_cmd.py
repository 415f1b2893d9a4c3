"""``nacre collateral fetch EVIDENCE``: fetch a collateral bundle from Intel PCS/PCCS or AMD KDS.

Exit 0 when every file was written, 2 on usage, I/O or fetch errors (the error names the field,
the expected and the actual value, and what to do).
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from nacre.collateral.disk_cache import DiskCache, default_cache_dir
from nacre.collateral.fetch import FetchOutcome, fetch_collateral
from nacre.collateral.kds import AMD_KDS_URL, KdsClient
from nacre.collateral.pcs import INTEL_PCS_URL, PcsClient
from nacre.collateral.recheck import collateral_validator
from nacre.collateral.trust import SIM_ROOT_CA_FILE, TrustRoots, default_sim_dir
from nacre.errors import LimitExceededError, NacreError, UsageError
from nacre.limits import MAX_EVIDENCE_BYTES

__all__ = ["collateral_app", "fetch_command", "serve_command", "sim_trust"]

collateral_app = typer.Typer(
    help="Fetch collateral (Intel PCS/PCCS v4, AMD KDS) into a bundle directory.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _read_evidence(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if size > MAX_EVIDENCE_BYTES:
            raise LimitExceededError(
                f"evidence {path} is larger than any quote or report",
                field="EVIDENCE",
                expected=f"<= {MAX_EVIDENCE_BYTES} bytes",
                actual=f"{size} bytes",
            )
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(
            f"cannot read evidence {path}: {exc.strerror}",
            field="EVIDENCE",
            expected="a readable quote or report file",
            actual=str(path),
        ) from exc


def _write(outcome: FetchOutcome, out: Path) -> None:
    try:
        outcome.bundle.write_dir(out)
    except OSError as exc:
        raise UsageError(
            f"cannot write the bundle to {out}: {exc.strerror}",
            field="--out",
            expected="a writable directory",
            actual=str(out),
        ) from exc


def _json_out(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


def sim_trust(sim_dir: Path | None, bundle_root: bytes | None = None) -> TrustRoots:
    """``--trust-sim``: the simulation root of ``sim_dir`` (default: the local platform, if any),
    else ``bundle_root`` (a bundle's ``sim_root_ca.pem``), which must be a simulation root."""
    local = (sim_dir or default_sim_dir()) / SIM_ROOT_CA_FILE
    if local.is_file():
        return TrustRoots.simulation(local)
    if sim_dir is None and bundle_root is not None:
        from nacre.collateral.certs import load_certificate

        return TrustRoots.simulation(load_certificate(bundle_root, field="sim_root_ca.pem"))
    raise UsageError(
        "--trust-sim: no simulation root to trust",
        field="--trust-sim",
        expected=f"a simulated platform at {local}"
        + ("" if sim_dir else " or sim_root_ca.pem in the bundle"),
        actual="none found",
        hint="create a platform with: nacre sim init (or point --sim-dir / NACRE_SIM_DIR at one)",
    )


@collateral_app.command("fetch")
def fetch_command(
    evidence: Annotated[
        Path, typer.Argument(help="SGX/TDX quote, SEV-SNP report or Azure HCL report.")
    ],
    pccs: Annotated[
        str,
        typer.Option(
            "--pccs",
            help="Intel PCS or PCCS base URL (https; plain http only to a loopback address).",
        ),
    ] = INTEL_PCS_URL,
    kds: Annotated[str, typer.Option("--kds", help="AMD KDS base URL.")] = AMD_KDS_URL,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Bundle directory (default: the evidence's directory)."),
    ] = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option("--cache-dir", help=f"Collateral cache (default: {default_cache_dir()})."),
    ] = None,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Fetch everything; read and write no cache.")
    ] = False,
    ca_bundle: Annotated[
        Path | None,
        typer.Option(
            "--ca-bundle",
            help="PEM CA certificates to trust in addition to the default store (private PCCS).",
        ),
    ] = None,
    product: Annotated[
        str | None,
        typer.Option(
            "--product", help="AMD product line (Milan, Genoa, Turin); v2 reports need it."
        ),
    ] = None,
    trust_sim: Annotated[
        bool,
        typer.Option(
            "--trust-sim", help="Accept collateral of nacre's simulated platform (nacre sim)."
        ),
    ] = False,
    sim_dir: Annotated[
        Path | None,
        typer.Option("--sim-dir", help="Simulated platform directory (default: NACRE_SIM_DIR)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Fetch the collateral EVIDENCE needs and write it as a bundle for `nacre verify`."""
    console = Console(highlight=False, soft_wrap=True)
    err_console = Console(stderr=True, highlight=False, soft_wrap=True)

    def step(message: str) -> None:
        if not as_json:
            console.print(f"[dim]•[/] {escape(message)}")

    def dropped(url: str, reason: str) -> None:
        step(f"cache: dropped {url}: {reason}")

    try:
        data = _read_evidence(evidence)
        now = datetime.now(UTC)
        trust = sim_trust(sim_dir) if trust_sim else None
        cache = None
        if not no_cache:
            cache = DiskCache(cache_dir, validate=collateral_validator(trust), on_drop=dropped)
        with (
            PcsClient(pccs, ca_bundle=ca_bundle) as pcs,
            KdsClient(kds, ca_bundle=ca_bundle) as kds_client,
        ):
            outcome = fetch_collateral(
                data,
                pcs=pcs,
                kds=kds_client,
                cache=cache,
                now=now,
                product=product,
                trust=trust,
                on_step=step,
            )
        out_dir = out if out is not None else evidence.parent
        _write(outcome, out_dir)
    except NacreError as exc:
        if as_json:
            _json_out(
                {"out": None, "files": [], "fmspc": None, "tee": None, "error": exc.to_dict()}
            )
        else:
            err_console.print(f"[bold red]error[/] {escape(f'[{exc.code}] {exc.message}')}")
            if exc.field is not None:
                err_console.print(f"  field:    {escape(exc.field)}")
                err_console.print(f"  expected: {escape(str(exc.expected))}")
                err_console.print(f"  actual:   {escape(str(exc.actual))}")
            if exc.hint:
                err_console.print(f"  what to do: {escape(exc.hint)}")
        raise typer.Exit(2) from None

    names = sorted(outcome.bundle.files)
    if as_json:
        _json_out(
            {
                "out": str(out_dir),
                "files": names,
                "fmspc": outcome.fmspc,
                "tee": outcome.tee,
                "pck_ca": outcome.pck_ca,
                "product": outcome.product,
                "sources": [
                    {"what": s.what, "url": s.url, "from_cache": s.from_cache}
                    for s in outcome.sources
                ],
                "error": None,
            }
        )
        return
    table = Table(box=None, show_header=True, header_style="bold", pad_edge=False)
    table.add_column("file")
    table.add_column("bytes", justify="right")
    for name in names:
        table.add_row(name, str(len(outcome.bundle.files[name])))
    console.print(f"[bold green]wrote[/] {len(names)} files to {escape(str(out_dir))}")
    console.print(table)
    console.print(escape(f"verify with: nacre verify {evidence} --collateral {out_dir}"))


@collateral_app.command("serve")
def serve_command(
    sim_dir: Annotated[
        Path | None,
        typer.Option("--dir", help="Simulated platform directory (default: NACRE_SIM_DIR)."),
    ] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port (0: any free port).")] = 8081,
) -> None:
    """Serve the simulated platform's collateral under the Intel PCS v4 paths (plain HTTP)."""
    from nacre.sim.platform import SimPlatform
    from nacre.sim.serve import make_server

    console = Console(highlight=False, soft_wrap=True)
    try:
        platform = SimPlatform.load(sim_dir)
        server = make_server(platform, host, port)
    except NacreError as exc:
        Console(stderr=True).print(f"[bold red]error[/] {escape(str(exc))}")
        raise typer.Exit(2) from None
    except OSError as exc:
        Console(stderr=True).print(f"[bold red]error[/] cannot listen on {host}:{port}: {exc}")
        raise typer.Exit(2) from None
    console.print(f"serving simulated collateral (FMSPC {platform.fmspc.hex()}) at {server.url}")
    console.print(
        escape(f"fetch with: nacre collateral fetch QUOTE --pccs {server.url} --trust-sim")
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
