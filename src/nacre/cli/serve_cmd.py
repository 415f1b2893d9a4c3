"""``nacre serve``: the attestation service and key broker on embedded defaults.

Defaults: SQLite (WAL) under the user's data directory, simulation trust on (the local simulated
platform's root; its collateral from the simulator), the KEK sealed with this machine's TEE, or
with the simulated TEE when there is none. On first start a bootstrap admin key is written to
``DATA_DIR/admin.key`` (0600) and registered with role admin. Exit 2 on usage errors.
"""

from __future__ import annotations

import logging
import sys
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import platformdirs
import typer
from rich.console import Console
from rich.markup import escape

from nacre.errors import NacreError, UsageError
from nacre.server import ADMIN_KEY_FILE, ServerConfig, create_app
from nacre.server.config import DEFAULT_MAINTENANCE_INTERVAL
from nacre.server.observe import JsonLogFormatter
from nacre.store import KekSealer, default_url
from nacre.tlsfiles import ReloadingCertificate

__all__ = ["default_data_dir", "serve_command"]


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("nacre"))


def _collateral_dirs(items: list[str]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for item in items:
        tee, sep, directory = item.partition("=")
        if not sep or tee not in ("sgx", "tdx", "snp") or not directory:
            raise UsageError(
                "--collateral is TEE=DIR",
                field="--collateral",
                expected="sgx=DIR, tdx=DIR or snp=DIR",
                actual=item,
            )
        out[tee] = Path(directory)
    return out


def _configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def serve_command(
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8080,
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="Data directory (database, sealed keys, admin key)."),
    ] = None,
    database: Annotated[
        str | None,
        typer.Option(
            "--database",
            envvar="NACRE_DATABASE_URL",
            help="Database URL (default: SQLite in the data dir); the variable keeps a "
            "password off the command line.",
        ),
    ] = None,
    trust_sim: Annotated[
        bool,
        typer.Option("--trust-sim/--no-trust-sim", help="Accept simulated evidence (marked sim)."),
    ] = True,
    collateral: Annotated[
        list[str] | None,
        typer.Option("--collateral", help="TEE=DIR: a collateral bundle directory."),
    ] = None,
    log_level: Annotated[
        str, typer.Option("--log-level", help="debug, info, warning, error.")
    ] = "info",
    tls_cert: Annotated[
        Path | None,
        typer.Option(
            "--tls-cert",
            envvar="NACRE_TLS_CERT",
            help="Serve HTTPS with this PEM certificate chain (reloaded when the file changes).",
        ),
    ] = None,
    tls_key: Annotated[
        Path | None,
        typer.Option(
            "--tls-key", envvar="NACRE_TLS_KEY", help="The certificate's PEM private key."
        ),
    ] = None,
    maintenance_every: Annotated[
        float,
        typer.Option(
            "--maintenance-every",
            min=0,
            help="Seconds between this replica's scheduled jobs (key rotation and deletion "
            "dates, expired sessions); 0: none here.",
        ),
    ] = DEFAULT_MAINTENANCE_INTERVAL.total_seconds(),
) -> None:
    """Run the attestation service, KBS v0.4.0 key broker and admin API."""
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        import uvicorn

        from nacre.sim import SimPlatform
        from nacre.sim.platform import default_dir
        from nacre.tee import TeeUnavailableError, current
        from nacre.tee.sim import SimBackend

        directory = data_dir or default_data_dir()
        url = database or default_url(directory)
        platform = SimPlatform.load_or_init(default_dir()) if trust_sim else None
        sealer: KekSealer
        try:
            backend = current()
            sealer, sealed_with = backend, backend.name
        except TeeUnavailableError:
            sealer = SimBackend(platform or SimPlatform.load_or_init(default_dir()))
            sealed_with = "the simulated TEE"
        config = ServerConfig(
            database_url=url,
            data_dir=directory,
            sealer=sealer,
            trust_sim=trust_sim,
            sim_trust=platform.trust_roots() if platform is not None else None,
            collateral_dirs=_collateral_dirs(collateral or []),
            collateral_provider=platform.bundle if platform is not None else None,
            maintenance_interval=timedelta(seconds=maintenance_every)
            if maintenance_every > 0
            else None,
        )
        _configure_logging(log_level)
        certificate = _certificate(tls_cert, tls_key)
        app = create_app(config)
    except (NacreError, OSError) as exc:
        message = str(exc) if isinstance(exc, NacreError) else f"{exc.strerror}: {exc.filename}"
        err.print(f"[bold red]error:[/] {escape(message)}")
        raise typer.Exit(2) from None
    out = Console(highlight=False, soft_wrap=True)
    scheme = "https" if certificate is not None else "http"
    out.print(f"nacre serving on [bold]{scheme}://{host}:{port}[/]")
    admin_key = directory / ADMIN_KEY_FILE
    if admin_key.exists():
        out.print(f"admin key: {admin_key}")
    else:
        out.print(
            "admin key: none in this data directory (the database already has admin keys: "
            "use the bootstrap key of the first replica, or one registered with the admin API)"
        )
    out.print(
        f"database: {escape(url.split('@')[-1] if '@' in url else url)}; KEK sealed with {sealed_with}"
    )
    if trust_sim:
        out.print("[yellow]simulation trust is on: simulated evidence is accepted (marked sim)[/]")
    if certificate is None:
        uvicorn.run(app, host=host, port=port, log_config=None, access_log=False)
        return
    context = certificate.context
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        ssl_context_factory=lambda _config, _default: context,
    )


def _certificate(cert: Path | None, key: Path | None) -> ReloadingCertificate | None:
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise UsageError(
            "HTTPS needs both a certificate and its key",
            field="--tls-cert/--tls-key",
            expected="both or neither",
            actual=f"--tls-cert {cert or '(none)'}, --tls-key {key or '(none)'}",
        )
    return ReloadingCertificate(
        cert, key, hint="pass the PEM certificate chain and key the service should present"
    )
