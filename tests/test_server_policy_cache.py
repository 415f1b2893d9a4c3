"""Parsed-policy caches across replicas: a change made through one replica is honoured by another
on its very next request (the caches are keyed by the policy row's version, read in the same
statement as the session or the resource, so they never serve a replaced document)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from nacre.server import create_app
from nacre.server.service import NacreService
from nacre.token import decrypt
from server_support import Env, SyncClient, Workload, make_env
from test_store_support import BACKENDS

NAME = "default/key/cached"
SECRET = b"cached-policy secret"


@contextmanager
def two_replicas(
    kind: str, tmp_path: Path
) -> Iterator[tuple[Env, Callable[[], SyncClient], NacreService]]:
    """Replica A (the env), a maker of clients of replica B (another app on the same database
    and KEK), and B's service."""
    with make_env(kind, tmp_path) as a:
        b_app = create_app(a.service.config)
        b_svc: NacreService = b_app.state.nacre
        try:
            yield a, lambda: a.new_client(b_app), b_svc
        finally:
            b_svc.close()


def _release_policy(mrenclave: str) -> str:
    return f"version: 1\nrules:\n  - name: enclave\n    expr: claims.mrenclave == '{mrenclave}'\n"


def _handshake_on(a: Env, b: Callable[[], SyncClient]) -> Workload:
    """A full handshake through replica B (a client, and so a cookie jar, of its own)."""
    w = Workload(a, client=b())
    w.handshake()
    return w


@pytest.mark.parametrize("kind", BACKENDS)
def test_release_policy_changed_on_a_is_enforced_by_b_at_once(kind: str, tmp_path: Path) -> None:
    with two_replicas(kind, tmp_path) as (a, b, b_svc):
        mrenclave = a.platform.measure().mr_enclave.hex()
        a.put_secret(NAME, SECRET, policy=_release_policy(mrenclave))
        w = _handshake_on(a, b)
        r = w.resource(NAME)
        assert r.status_code == 200, r.text
        assert decrypt(r.json(), w.key) == SECRET
        assert b_svc._release_policies  # B parsed (and cached) the policy

        # Revoked through A: B's very next release of the same resource is refused.
        a.put_secret(NAME, SECRET, policy=_release_policy("00" * 32))
        r = w.resource(NAME)
        assert r.status_code == 403, r.text
        assert r.json()["check"] == "rules.enclave"
        w2 = _handshake_on(a, b)
        assert w2.resource(NAME).status_code == 403

        # Restored through A: released again by B at once.
        a.put_secret(NAME, SECRET, policy=_release_policy(mrenclave))
        r = w.resource(NAME)
        assert r.status_code == 200, r.text
        assert decrypt(r.json(), w.key) == SECRET

        # The denial and both releases are in the audit log.
        outcomes = [
            e.outcome
            for e in a.store.audit_entries()
            if e.action == "resource.release" and e.target == NAME
        ]
        assert outcomes == ["released", "denied", "denied", "released"]


@pytest.mark.parametrize("kind", BACKENDS)
def test_appraisal_policy_set_on_a_is_applied_by_b_at_once(kind: str, tmp_path: Path) -> None:
    with two_replicas(kind, tmp_path) as (a, b, _b_svc):
        a.put_secret(NAME, SECRET)
        _handshake_on(a, b)  # the built-in default appraisal policy accepts simulated evidence

        def set_default(document: str) -> None:
            r = a.client.put(
                "/admin/v1/policies/default",
                headers=a.admin_headers(),
                json={"kind": "appraisal", "document": document},
            )
            assert r.status_code == 200, r.text

        other = "ab" * 32
        set_default(f"version: 1\nname: d\nallow_sim: true\nsgx:\n  mrenclave: ['{other}']\n")
        w = Workload(a, client=b())
        assert w.auth().status_code == 200
        r = w.attest()
        assert r.status_code == 403, r.text
        assert r.json()["code"] == "APPRAISAL_DENY"
        assert r.json()["check"] == "sgx.mrenclave"

        mrenclave = a.platform.measure().mr_enclave.hex()
        set_default(f"version: 1\nname: d\nallow_sim: true\nsgx:\n  mrenclave: ['{mrenclave}']\n")
        w = _handshake_on(a, b)
        r = w.resource(NAME)
        assert r.status_code == 200, r.text
        assert decrypt(r.json(), w.key) == SECRET
