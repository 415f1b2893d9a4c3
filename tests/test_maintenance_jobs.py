"""The service's scheduled jobs (``nacre.server.maintenance``): keys rotate on their schedule,
keys past their deletion date are destroyed, expired sessions go; replicas racing the same due key
add exactly one version; the timer runs from the app's lifespan and survives failures."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from nacre.errors import NacreError
from nacre.server.maintenance import Maintenance
from nacre.store import open_store
from server_support import Env, make_env, served
from test_store_support import BACKENDS

KEYS = "/kms/v1/keys"


@pytest.fixture(params=BACKENDS)
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    with make_env(request.param, tmp_path) as e:
        yield e


def _create(env: Env, name: str, **extra: Any) -> dict[str, Any]:
    r = env.client.post(
        KEYS, json={"type": "AES-256", "name": name, **extra}, headers=env.admin_headers()
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _jobs(env: Env, **kw: Any) -> Maintenance:
    return Maintenance(
        env.store, interval=kw.pop("interval", timedelta(minutes=1)), now_fn=env.clock, **kw
    )


def test_keys_rotate_on_schedule(env: Env) -> None:
    _create(env, "daily", rotation_days=1)
    _create(env, "manual")
    jobs = _jobs(env)
    assert jobs.run_once().rotated == ()  # nothing due yet
    env.clock.offset = timedelta(days=1, seconds=5)
    run = jobs.run_once()
    assert run.rotated == (("daily", 2),)
    assert run.errors == ()
    assert env.store.get_key("daily").current_version == 2
    assert env.store.get_key("manual").current_version == 1
    assert jobs.run_once().rotated == ()  # the next date is a day later
    rotations = [e for e in env.store.audit_entries(limit=500) if e.target == "daily"]
    assert any(e.actor == "system:rotation" for e in rotations)
    # Data encrypted under version 1 still decrypts after the rotation.
    env.clock.offset += timedelta(days=1)
    assert jobs.run_once().rotated == (("daily", 3),)


def test_racing_replicas_add_one_version(env: Env) -> None:
    """Several replicas' jobs run the same due rotation at once: one version is added."""
    for i in range(3):
        _create(env, f"k{i}", rotation_days=1)
    env.clock.offset = timedelta(days=1, seconds=5)
    replicas = [open_store(env.url, sealer=env.sealer, data_dir=env.data_dir) for _ in range(3)]
    try:
        jobs = [Maintenance(s, interval=timedelta(minutes=1), now_fn=env.clock) for s in replicas]
        barrier = threading.Barrier(len(jobs))
        runs: list[Any] = []

        def go(j: Maintenance) -> None:
            barrier.wait()
            runs.append(j.run_once())

        threads = [threading.Thread(target=go, args=(j,)) for j in jobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert all(r.errors == () for r in runs), [r.errors for r in runs]
        done = sorted(kv for r in runs for kv in r.rotated)
        assert done == [("k0", 2), ("k1", 2), ("k2", 2)]
        for i in range(3):
            assert env.store.get_key(f"k{i}").current_version == 2
            assert [v.version for v in env.store.key_versions(f"k{i}")] == [1, 2]
    finally:
        for s in replicas:
            s.close()


def test_keys_are_destroyed_after_their_waiting_period(env: Env) -> None:
    _create(env, "old")
    r = env.client.post(
        f"{KEYS}/old/schedule-delete", json={"days": 7}, headers=env.admin_headers()
    )
    assert r.status_code == 200, r.text
    jobs = _jobs(env)
    env.clock.offset = timedelta(days=6)
    assert jobs.run_once().destroyed == ()
    env.clock.offset = timedelta(days=7, seconds=5)
    assert jobs.run_once().destroyed == ("old",)
    assert env.store.get_key("old").state == "destroyed"
    assert {v.state for v in env.store.key_versions("old")} == {"destroyed"}
    r = env.client.post(
        f"{KEYS}/old/encrypt", json={"plaintext": "aGk="}, headers=env.admin_headers()
    )
    assert r.status_code in (404, 409)


def test_expired_sessions_are_swept(env: Env) -> None:
    for _ in range(3):
        env.store.create_session("sgx", ttl=timedelta(minutes=5), now=env.clock())
    jobs = _jobs(env)
    assert jobs.run_once().sessions_swept == 0
    env.clock.offset = timedelta(hours=1)
    assert jobs.run_once().sessions_swept == 3


def test_a_failing_step_does_not_stop_the_others(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    _create(env, "daily", rotation_days=1)
    env.clock.offset = timedelta(days=1, seconds=5)
    jobs = _jobs(env)

    def broken(**_: Any) -> Any:
        raise NacreError("database is down", code="STORE_UNAVAILABLE")

    monkeypatch.setattr(env.store, "sweep_expired", broken)
    run = jobs.run_once()
    assert run.rotated == (("daily", 2),)
    assert len(run.errors) == 1
    assert "session sweep" in run.errors[0]
    assert jobs.last is run


def test_the_timer_runs_and_stops(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    _create(env, "daily", rotation_days=1)
    env.clock.offset = timedelta(days=1, seconds=5)
    jobs = _jobs(env, interval=timedelta(milliseconds=20))
    calls = {"n": 0}
    real = jobs.run_once

    def flaky() -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("unexpected")  # the timer must survive it
        return real()

    monkeypatch.setattr(jobs, "run_once", flaky)
    jobs.start()
    try:
        deadline = time.monotonic() + 10
        while calls["n"] < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert calls["n"] >= 4
        assert env.store.get_key("daily").current_version == 2
    finally:
        jobs.stop()
    n = calls["n"]
    time.sleep(0.1)
    assert calls["n"] == n  # stopped


def test_interval_must_be_positive(env: Env) -> None:
    with pytest.raises(ValueError, match="positive"):
        _jobs(env, interval=timedelta(0))


def test_the_app_lifespan_runs_the_jobs(tmp_path: Path) -> None:
    with make_env("sqlite", tmp_path, maintenance_interval=timedelta(milliseconds=50)) as env:
        _create(env, "daily", rotation_days=1)
        env.clock.offset = timedelta(days=1, seconds=5)
        jobs = env.app.state.maintenance
        assert isinstance(jobs, Maintenance)
        with served(env.app, lifespan="on"):
            assert jobs.running
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not (
                jobs.last is not None and env.store.get_key("daily").current_version == 2
            ):
                time.sleep(0.02)
            assert jobs.last is not None
            assert env.store.get_key("daily").current_version == 2
            time.sleep(0.2)  # more runs: the rotation is not repeated before its next date
            assert env.store.get_key("daily").current_version == 2
        assert not jobs.running  # stopped with the app


def test_serve_takes_the_interval_option() -> None:
    from typer.testing import CliRunner

    from nacre.cli import app as cli_app

    r = CliRunner().invoke(cli_app, ["serve", "--help"], env={"COLUMNS": "240"})
    assert r.exit_code == 0
    assert "--maintenance-every" in r.stdout
    r = CliRunner().invoke(cli_app, ["serve", "--maintenance-every", "-1"])
    assert r.exit_code == 2
