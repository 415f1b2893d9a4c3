"""What ``nacre serve`` sets up before it serves, whether in one process or as the parent and
the workers of ``--workers N`` (:mod:`nacre.server.workers`): the options in a form a worker is
handed, the :class:`~nacre.server.ServerConfig` built from them, logging, the TLS certificate, the
one-time bootstrap and the listening socket."""

from __future__ import annotations

import gc
import logging
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from nacre.errors import UsageError
from nacre.server.config import DEFAULT_MAINTENANCE_INTERVAL, ServerConfig
from nacre.server.observe import JsonLogFormatter
from nacre.server.service import NacreService
from nacre.tlsfiles import ReloadingCertificate

if TYPE_CHECKING:
    from nacre.store import KekSealer

__all__ = [
    "GC_THRESHOLDS",
    "LISTEN_BACKLOG",
    "MAX_WORKERS",
    "ServeOptions",
    "bind_listener",
    "bootstrap",
    "check_worker_count",
    "configure_logging",
    "server_config",
    "tls_certificate",
    "tune_gc",
]

#: ``--workers`` bounds.
MAX_WORKERS: Final = 64
#: Listen backlog of the shared socket (uvicorn's default).
LISTEN_BACKLOG: Final = 2048


@dataclass(frozen=True, slots=True)
class ServeOptions:
    """What ``nacre serve`` was asked for, resolved (data directory, database URL), in a form a
    worker process is handed as JSON and rebuilds its :class:`ServerConfig` from."""

    database_url: str
    data_dir: Path
    trust_sim: bool = True
    collateral_dirs: Mapping[str, Path] = field(default_factory=dict)
    log_level: str = "info"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: Seconds between scheduled maintenance runs; 0: none in this process.
    maintenance_every: float = DEFAULT_MAINTENANCE_INTERVAL.total_seconds()

    def to_json(self) -> dict[str, Any]:
        return {
            "database_url": self.database_url,
            "data_dir": str(self.data_dir),
            "trust_sim": self.trust_sim,
            "collateral_dirs": {tee: str(path) for tee, path in self.collateral_dirs.items()},
            "log_level": self.log_level,
            "tls_cert": None if self.tls_cert is None else str(self.tls_cert),
            "tls_key": None if self.tls_key is None else str(self.tls_key),
            "maintenance_every": self.maintenance_every,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ServeOptions:
        def path(value: object) -> Path | None:
            return None if value is None else Path(str(value))

        return cls(
            database_url=str(doc["database_url"]),
            data_dir=Path(str(doc["data_dir"])),
            trust_sim=bool(doc["trust_sim"]),
            collateral_dirs={str(k): Path(str(v)) for k, v in dict(doc["collateral_dirs"]).items()},
            log_level=str(doc["log_level"]),
            tls_cert=path(doc.get("tls_cert")),
            tls_key=path(doc.get("tls_key")),
            maintenance_every=float(doc["maintenance_every"]),
        )


def check_worker_count(count: int) -> None:
    if not 1 <= count <= MAX_WORKERS:
        raise UsageError(
            "the number of worker processes is out of range",
            field="--workers",
            expected=f"1 to {MAX_WORKERS}",
            actual=count,
        )


def server_config(options: ServeOptions) -> tuple[ServerConfig, str]:
    """The :class:`ServerConfig` of ``options`` and what the KEK is sealed with (for the banner).

    Simulation trust uses the local simulated platform (``NACRE_SIM_DIR``; created on first use);
    the KEK is sealed with this machine's TEE, or the simulated one when there is none."""
    from nacre.sim import SimPlatform
    from nacre.sim.platform import default_dir
    from nacre.tee import TeeUnavailableError, current
    from nacre.tee.sim import SimBackend

    platform = SimPlatform.load_or_init(default_dir()) if options.trust_sim else None
    sealer: KekSealer
    try:
        backend = current()
        sealer, sealed_with = backend, backend.name
    except TeeUnavailableError:
        sealer = SimBackend(platform or SimPlatform.load_or_init(default_dir()))
        sealed_with = "the simulated TEE"
    config = ServerConfig(
        database_url=options.database_url,
        data_dir=options.data_dir,
        sealer=sealer,
        trust_sim=options.trust_sim,
        sim_trust=platform.trust_roots() if platform is not None else None,
        collateral_dirs=dict(options.collateral_dirs),
        collateral_provider=platform.bundle if platform is not None else None,
        maintenance_interval=timedelta(seconds=options.maintenance_every)
        if options.maintenance_every > 0
        else None,
    )
    return config, sealed_with


class _WorkerField(logging.Filter):
    """Adds ``worker`` (the worker's index) to every record, so the JSON lines say who logged."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.index
        return True


def configure_logging(level: str, *, worker: int | None = None) -> None:
    """JSON lines on stderr at ``level`` for the whole process (``worker``: tag every line)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter())
    if worker is not None:
        handler.addFilter(_WorkerField(worker))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def tls_certificate(cert: Path | None, key: Path | None) -> ReloadingCertificate | None:
    """The certificate to serve HTTPS with (None: HTTP); both files or neither."""
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


def bootstrap(config: ServerConfig) -> None:
    """What must happen once before any worker starts, done by starting the service once: data
    directory, KEK (created or unsealed), migrations, signing keyring, bootstrap admin key."""
    NacreService(config).close()


def bind_listener(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` and listening (connections queue while the workers
    start); every worker serves it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
    except OSError as exc:
        sock.close()
        raise UsageError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}",
            field="--host/--port",
            expected="a local address and a free port",
            actual=f"{host}:{port}",
        ) from exc
    return sock


#: Collector thresholds of a serving process (CPython's defaults: 700, 10, 10).
GC_THRESHOLDS: Final = (20_000, 20, 20)


def tune_gc() -> None:
    """Tune the cyclic garbage collector for serving, once the app is built.

    A request allocates thousands of short-lived objects and almost no cycles; with CPython's
    defaults a young collection ran every 700 allocations and every so often a full one walked
    every object the process holds (the imported modules, the app): several percent of a
    worker's CPU and a pause felt by every request in flight (seen at 64 KBS clients: p99
    about 200 -> 160 ms). ``gc.freeze`` moves what exists now (startup objects, alive for the
    whole process) out of the collector's sight, and higher thresholds collect the young
    generation less often. Cycles are still collected: the memory garbage cycles hold is
    bounded by the thresholds."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
