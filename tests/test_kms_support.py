"""Shared helpers of the KMS tests (no tests here): a settable clock, callers, attested workloads.

Workload callers come from real EAR tokens: issued by a test keyring and verified with
:func:`nacre.token.verify_ear`, as the server does before it calls the KMS.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric import ec

from nacre.kms import Caller, Kms
from nacre.store import Store, open_store
from nacre.token import EarInput, Keyring, issue_ear, public_jwk, verify_ear
from test_store_support import NOW, database, make_sealer

__all__ = [
    "ADMIN",
    "AUDITOR",
    "KEY_USER",
    "MRENCLAVE",
    "SGX_RULE",
    "Attester",
    "Clock",
    "kms_on",
]

MRENCLAVE: Final = "ab" * 32
#: The issue's example: only this enclave, ISV SVN at least 3.
SGX_RULE: Final = f"claims.mrenclave == '{MRENCLAVE}' && claims.isv_svn >= 3"
ADMIN: Final = Caller.principal("alice", {"admin"})
KEY_USER: Final = Caller.principal("bob", {"key-user"})
AUDITOR: Final = Caller.principal("carol", {"auditor"})
_TTL: Final = timedelta(minutes=10)


class Clock:
    """A clock the tests move by hand."""

    def __init__(self, now: datetime = NOW) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now = self.now + delta


@dataclass
class Attester:
    """The attestation service side: issues EAR tokens that verify with ``ring``."""

    ring: Keyring
    clock: Clock

    @classmethod
    def create(cls, clock: Clock) -> Attester:
        return cls(Keyring.generate(clock.now, max_token_ttl=_TTL), clock)

    def caller(
        self,
        *,
        claims: dict[str, Any] | None = None,
        status: str = "affirming",
        tee_key: ec.EllipticCurvePrivateKey | None = None,
        with_tee_key: bool = True,
    ) -> tuple[Caller, ec.EllipticCurvePrivateKey]:
        """A workload caller from a freshly issued and verified token, and its TEE private key."""
        private = tee_key or ec.generate_private_key(ec.SECP256R1())
        vector = {"instance-identity": 2, "executables": 2 if status == "affirming" else 33}
        if status == "contraindicated":
            vector = {"instance-identity": 2, "executables": 99}
        token = issue_ear(
            EarInput(
                tee="sgx",
                status=status,
                trustworthiness_vector=vector,
                claims=claims
                if claims is not None
                else {"mrenclave": MRENCLAVE, "isv_svn": 3, "tcb_status": "UpToDate"},
                policy_id="default",
                tee_pubkey=public_jwk(private) if with_tee_key else None,
                sim=True,
            ),
            self.ring,
            self.clock.now,
            _TTL,
        )
        return Caller.workload(verify_ear(token, self.ring, self.clock.now)), private


@contextmanager
def kms_on(kind: str, tmp_path: Path, clock: Clock) -> Iterator[tuple[Kms, Store]]:
    """A Kms over a fresh store on ``kind`` (sqlite | postgresql)."""
    with (
        database(kind, tmp_path) as url,
        open_store(url, sealer=make_sealer(tmp_path / "tee"), data_dir=tmp_path / "data") as store,
    ):
        yield Kms(store, now_fn=clock), store
