"""``nacre serve``: the attestation service and key broker on embedded defaults.

Defaults: SQLite (WAL) under the user's data directory, simulation trust on (the local simulated
platform's root; its collateral from the simulator), the KEK sealed with this machine's TEE, or
with the simulated TEE when there is none. On first start a bootstrap admin key is written to
``DATA_DIR/admin.key`` (0600) and registered with role admin. Exit 2 on usage errors.

``--workers N`` (N > 1) serves one listening socket from N worker processes supervised by this
one (:mod:`nacre.server.workers`); exit 1 when the workers cannot be kept running.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated

import platformdirs
import typer
from rich.console import Console
from rich.markup import escape

from nacre.errors import NacreError, UsageError
from nacre.server import ADMIN_KEY_FILE, create_app
from nacre.server.config import DEFAULT_MAINTENANCE_INTERVAL
from nacre.server.serve_setup import (
    MAX_WORKERS,
    ServeOptions,
    bind_listener,
    bootstrap,
    check_worker_count,
    configure_logging,
    server_config,
    tls_certificate,
    tune_gc,
)
from nacre.server.workers import Supervisor, WorkersFailedError
from nacre.store import default_url

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
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            help=f"Worker processes serving one listening socket (1 to {MAX_WORKERS}; 1: this "
            "process serves). One process uses about one core: give N up to the cores to use. "
            "Each worker is a replica on this data directory and database (on SQLite they "
            "share one writer; PostgreSQL scales further); /metrics sums them all; scheduled "
            "jobs run in worker 0; a worker that dies is restarted.",
        ),
    ] = 1,
) -> None:
    """Run the attestation service, KBS v0.4.0 key broker and admin API.

    With --workers N, N supervised processes serve one port (SIGINT/SIGTERM stops them all).
    """
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    listener: socket.socket | None = None
    supervisor: Supervisor | None = None
    try:
        import uvicorn

        check_worker_count(workers)
        directory = data_dir or default_data_dir()
        url = database or default_url(directory)
        options = ServeOptions(
            database_url=url,
            data_dir=directory,
            trust_sim=trust_sim,
            collateral_dirs=_collateral_dirs(collateral or []),
            log_level=log_level,
            tls_cert=tls_cert,
            tls_key=tls_key,
            maintenance_every=maintenance_every,
        )
        config, sealed_with = server_config(options)
        configure_logging(log_level)
        certificate = tls_certificate(tls_cert, tls_key)
        if workers == 1:
            app = create_app(config)
        else:
            # Once, before any worker: data dir, KEK, migrations, bootstrap admin key; then
            # the socket every worker serves (bound here, so a busy port is an error here).
            bootstrap(config)
            listener = bind_listener(host, port)
            port = int(listener.getsockname()[1])
            supervisor = Supervisor(options, listener, workers)
    except (NacreError, OSError) as exc:
        if listener is not None:
            listener.close()
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
    if supervisor is not None:
        out.print(f"workers: {workers} processes on one listening socket")
        _run_workers(supervisor, err)
        return
    tune_gc()
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


def _run_workers(supervisor: Supervisor, err: Console) -> None:
    """Supervise the workers until SIGINT/SIGTERM; exit 1 when they could not be kept running
    (or did not all stop cleanly)."""
    try:
        status = supervisor.run()
    except NacreError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}")
        raise typer.Exit(1 if isinstance(exc, WorkersFailedError) else 2) from None
    finally:
        supervisor.listener.close()
    if status != 0:
        raise typer.Exit(status)
