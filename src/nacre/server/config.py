"""Configuration of one ``nacre serve`` instance, and the server's named limits."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from nacre.collateral.bundle import CollateralBundle
    from nacre.collateral.trust import TrustRoots
    from nacre.store import KekSealer

__all__ = [
    "ADMIN_TOKEN_MAX_TTL",
    "DEFAULT_MAINTENANCE_INTERVAL",
    "DEFAULT_SESSION_TTL",
    "DEFAULT_TOKEN_TTL",
    "MAX_ADMIN_BODY_BYTES",
    "MAX_REQUEST_BYTES",
    "CollateralProvider",
    "ServerConfig",
    "utc_now",
]

#: How often each replica looks for due scheduled work (rotation dates have a granularity of days).
DEFAULT_MAINTENANCE_INTERVAL: Final = timedelta(minutes=1)
#: Largest body of an attestation or KBS request (a quote with its chain is ~5 KiB; evidence is
#: capped at 64 KiB in base64 plus JSON framing).
MAX_REQUEST_BYTES: Final = 256 * 1024
#: Largest admin request body: a 1 MiB resource in base64 plus JSON framing.
MAX_ADMIN_BODY_BYTES: Final = 2 * 1024 * 1024
#: Trustee's default KBS session lifetime (``timeout`` = 5 minutes).
DEFAULT_SESSION_TTL: Final = timedelta(minutes=5)
#: Lifetime of an EAR token (Trustee's default is 5 minutes too).
DEFAULT_TOKEN_TTL: Final = timedelta(minutes=5)
#: Threads running the blocking KBS handlers (``ServerConfig.worker_threads`` None): the handlers
#: are mostly Python under one GIL, so more threads mainly hand the GIL to each other. On SQLite the
#: only waits are commits (~0.5 ms): a few threads overlap them (benchmarks/kbs.py, 2 cores, 64
#: clients: 2-4 threads ~8.4-8.7 ms server CPU per handshake, 32 threads ~9.1-9.7). PostgreSQL
#: adds network round trips: more threads overlap them.
SQLITE_WORKER_THREADS: Final = 4
DEFAULT_WORKER_THREADS: Final = 16
#: Longest admin JWT lifetime accepted (``exp - iat``).
ADMIN_TOKEN_MAX_TTL: Final = timedelta(minutes=15)

CollateralProvider = Callable[[str], "CollateralBundle"]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything :func:`nacre.server.create_app` needs. All shared state lives in the database:
    sessions and nonces, resources, policies, keys, the EAR signing keyring (envelope-encrypted
    under the KEK) and the admin public keys. ``data_dir`` holds only the sealed KEK
    (``kek.json``) and, on the replica that bootstrapped, the bootstrap admin private key
    (``admin.key``, 0600). Replicas share the database and are each provisioned with the same
    ``kek.json`` (copy it into each replica's data directory; it opens only under the same
    sealing identity); they then serve any request, including a handshake another began. A
    replica started with a different KEK refuses to start (``ENVELOPE_INVALID``: restore the
    ``kek.json`` that belongs to this database). Files of earlier versions (``ear_keyring.bin``,
    ``admin_keys.json``) are imported into the database on first start and renamed ``.migrated``.

    ``trust``: production roots (default: the pinned Intel/AMD roots). ``trust_sim``: also accept
    evidence chaining to ``sim_trust`` (a :meth:`TrustRoots.simulation` root); such results carry
    ``nacre.sim: true``. Collateral per TEE comes from ``collateral_dirs[tee]`` (a bundle
    directory) or, failing that, from ``collateral_provider(tee)`` (``SimPlatform.bundle`` for
    the simulator); the PCK chain is the one embedded in the quote.
    """

    database_url: str
    data_dir: Path
    sealer: KekSealer
    trust_sim: bool = False
    sim_trust: TrustRoots | None = None
    trust: TrustRoots | None = None
    collateral_dirs: Mapping[str, Path] = field(default_factory=dict)
    collateral_provider: CollateralProvider | None = None
    session_ttl: timedelta = DEFAULT_SESSION_TTL
    token_ttl: timedelta = DEFAULT_TOKEN_TTL
    #: How long one EAR signing key signs before the keyring rotates it.
    signing_key_lifetime: timedelta = timedelta(days=30)
    issuer: str | None = None
    max_request_bytes: int = MAX_REQUEST_BYTES
    max_admin_body_bytes: int = MAX_ADMIN_BODY_BYTES
    #: Create ``data_dir/admin.key`` (and register it as admin) when no admin key exists yet.
    bootstrap_admin: bool = True
    #: The clock (tests move it forward to expire sessions and rotate keys).
    clock: Callable[[], datetime] = utc_now
    #: How often this replica runs the scheduled jobs (key rotation and destruction dates,
    #: expired sessions; :mod:`nacre.server.maintenance`); None: never (another replica does).
    maintenance_interval: timedelta | None = DEFAULT_MAINTENANCE_INTERVAL
    #: Threads running the blocking KBS handlers (the other routes use anyio's thread pool);
    #: None: :data:`SQLITE_WORKER_THREADS` on SQLite, else :data:`DEFAULT_WORKER_THREADS`.
    worker_threads: int | None = None
