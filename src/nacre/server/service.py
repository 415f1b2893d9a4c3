"""The state of one app instance (:class:`NacreService`) and helpers the routers share."""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, Final, TypeVar

from fastapi.security import HTTPBearer

from nacre.server.adminauth import AdminKeyRegistry, ensure_bootstrap_admin
from nacre.server.attest import Appraised, Attester
from nacre.server.config import DEFAULT_WORKER_THREADS, SQLITE_WORKER_THREADS, ServerConfig
from nacre.server.keys import ServiceKeyring
from nacre.server.observe import Metrics
from nacre.server.problems import Problem
from nacre.server.release import ReleasePolicy, parse_release_policy
from nacre.store import Policy, Store, open_store
from nacre.token import EarInput
from nacre.token.ear import issue_ear_with_claims

__all__ = ["BEARER", "KBS_TEES", "SWEEP_EVERY", "NacreService", "b64decode"]

KBS_TEES: Final = ("sgx", "tdx", "snp")
#: New KBS sessions between two sweeps of expired sessions and nonces (per process).
SWEEP_EVERY: Final = 256
_R = TypeVar("_R")
_B64URL: Final = re.compile(r"[A-Za-z0-9_-]*")
#: One bearer scheme for OpenAPI: EAR tokens on KBS routes, admin JWTs on admin routes.
BEARER = HTTPBearer(auto_error=False, description="EAR token (KBS) or admin JWT (admin API)")


def b64decode(text: str, field: str, *, kbs: bool = False) -> bytes:
    """Standard base64 (what guest components send), or base64url without padding."""
    data = text.strip()
    try:
        if _B64URL.fullmatch(data) and ("-" in data or "_" in data or len(data) % 4):
            return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        pass
    raise Problem(
        400,
        f"{field} is not base64",
        kind="SerdeError" if kbs else "BadRequest",
        kbs=kbs,
        code="BAD_BASE64",
        field=field,
        expected="base64 text",
        actual=text[:40],
    )


class NacreService:
    """The state of one app instance: handles to shared state, and caches of derived values.

    Everything another replica needs lives in the database: sessions and nonces, resources,
    policies, keys, the EAR signing keyring (envelope-encrypted) and the admin keys. The data
    directory holds only this replica's sealed KEK (``kek.json``: provision the same one on every
    replica) and, on the replica that bootstrapped, the bootstrap admin private key.
    """

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.store: Store = open_store(
            config.database_url, sealer=config.sealer, data_dir=config.data_dir
        )
        try:
            self.metrics = Metrics()
            now = self.now()
            self.keyring = ServiceKeyring(
                self.store,
                max_token_ttl=config.token_ttl,
                key_lifetime=config.signing_key_lifetime,
            )
            self.registry = AdminKeyRegistry(self.store)
            # Upgrade path: state earlier versions kept in files moves into the database once.
            self.keyring.migrate_file(config.data_dir, config.sealer, now)
            self.registry.migrate_file(config.data_dir, now)
            self.keyring.signing_ring(now)  # load, create or rotate on startup
            self.attester = Attester(config, self.store)
            self.bootstrap_key = None
            if config.bootstrap_admin:
                self.bootstrap_key = ensure_bootstrap_admin(config.data_dir, self.registry, now)
        except BaseException:
            self.store.close()
            raise
        threads = config.worker_threads or (
            SQLITE_WORKER_THREADS
            if self.store.engine.dialect.name == "sqlite"
            else DEFAULT_WORKER_THREADS
        )
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="nacre-kbs")
        self._lock = threading.Lock()
        self._release_policies: dict[str, tuple[str, ReleasePolicy]] = {}
        self._auth_count = 0

    @property
    def executor(self) -> ThreadPoolExecutor:
        """The worker threads :meth:`offload` uses."""
        return self._executor

    async def offload(self, fn: Callable[..., _R], *args: Any) -> _R:
        """Run a blocking handler on this service's worker threads (the hot KBS routes: a
        ``concurrent.futures`` pool costs the event loop less per call than anyio's)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def now(self) -> datetime:
        return self.config.clock()

    def release_policy(self, policy_id: str) -> ReleasePolicy:
        return self.parsed_release_policy(self.store.get_policy(policy_id))

    def parsed_release_policy(self, stored: Policy) -> ReleasePolicy:
        """``stored`` (a row just read) parsed. The parse is cached per policy id with the very
        document it came from and reused only for an identical document, so a policy changed
        through any replica takes effect with the next read of its row; one entry per id."""
        with self._lock:
            cached = self._release_policies.get(stored.id)
        if cached is not None and cached[0] == stored.document:
            return cached[1]
        parsed = parse_release_policy(stored.document)
        with self._lock:
            self._release_policies[stored.id] = (stored.document, parsed)
        return parsed

    def issue_token(
        self,
        appraised: Appraised,
        *,
        tee_pubkey: Mapping[str, Any] | None,
        runtime: Mapping[str, Any] | None,
        nonce: str | None,
        init_data: Mapping[str, Any] | None = None,
    ) -> str:
        """An EAR for ``appraised``; ``init_data``: the claims of the KBS init-data the evidence
        was checked to carry (annotated evidence ``init_data_claims``, as Trustee's tokens)."""
        now = self.now()
        v = appraised.verified
        claims = {**v.claims, "tcb_status": v.tcb_status, "advisory_ids": list(v.advisory_ids)}
        ear = EarInput(
            tee=v.tee,
            status=appraised.result.status,
            trustworthiness_vector=appraised.result.trustworthiness.to_dict(),
            claims=claims,
            policy_id=appraised.policy_id,
            tee_pubkey=tee_pubkey,
            runtime_data=runtime,
            nonce=nonce if nonce is not None and 8 <= len(nonce) <= 88 else None,
            sim=v.sim,
            init_data_claims=init_data,
        )
        token, issued = issue_ear_with_claims(
            ear,
            self.keyring.signing_ring(now),
            now,
            self.config.token_ttl,
            issuer=self.config.issuer,
        )
        self.keyring.remember_issued(token, issued)
        return token

    def sweep_now_and_then(self, now: datetime) -> None:
        """Delete expired sessions and nonces once every :data:`SWEEP_EVERY` new sessions."""
        with self._lock:
            self._auth_count += 1
            due = self._auth_count % SWEEP_EVERY == 0
        if due:
            self.store.sweep_expired(now=now)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self.store.close()
