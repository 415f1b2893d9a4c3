"""The service's scheduled jobs, run by every replica on a timer.

- KMS keys whose rotation date has come get a new version (audited as ``system:rotation``);
- keys whose deletion waiting period is over are destroyed (their wrapped material erased);
- expired KBS sessions and nonces are deleted.

Every replica runs the jobs; the store makes each step safe to race: a rotation re-checks inside
its transaction that the key is still due (so two replicas never add two versions for one due
date), destruction and the sweep lock the rows they change. A failing run is logged and retried
at the next tick: the timer thread never dies and never takes a request down with it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from nacre.errors import NacreError
from nacre.kms import Kms
from nacre.server.observe import log_event
from nacre.store import Store

__all__ = ["Maintenance", "MaintenanceRun"]


@dataclass(frozen=True, slots=True)
class MaintenanceRun:
    """What one run did (or the error that stopped a step; the other steps still ran)."""

    at: datetime
    rotated: tuple[tuple[str, int], ...] = ()  # (key id, new version)
    destroyed: tuple[str, ...] = ()
    sessions_swept: int = 0
    errors: tuple[str, ...] = field(default=())


class Maintenance:
    """Runs :meth:`run_once` every ``interval`` in a daemon thread between :meth:`start` and
    :meth:`stop` (the app's lifespan), and on demand."""

    def __init__(
        self,
        store: Store,
        *,
        interval: timedelta,
        now_fn: Callable[[], datetime],
    ) -> None:
        if interval <= timedelta(0):
            raise ValueError("the maintenance interval must be positive")
        self._store = store
        self._kms = Kms(store, now_fn=now_fn)
        self._now = now_fn
        self._interval = interval.total_seconds()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._run_lock = threading.Lock()
        self.last: MaintenanceRun | None = None

    def run_once(self) -> MaintenanceRun:
        """One pass over every job; each step's failure is recorded and the next step runs."""
        with self._run_lock:
            at = self._now()
            rotated: list[tuple[str, int]] = []
            destroyed: list[str] = []
            swept = 0
            errors: list[str] = []
            try:
                rotated = [(v.key_id, v.version) for v in self._kms.rotate_due(at)]
            except NacreError as exc:
                errors.append(f"rotation: {exc}")
            try:
                destroyed = self._kms.destroy_due(at)
            except NacreError as exc:
                errors.append(f"destruction: {exc}")
            try:
                swept = self._store.sweep_expired(now=at).sessions
            except NacreError as exc:
                errors.append(f"session sweep: {exc}")
            run = MaintenanceRun(at, tuple(rotated), tuple(destroyed), swept, tuple(errors))
            self.last = run
        for key_id, version in run.rotated:
            log_event("kms.key.rotated", key_id=key_id, version=version, actor="system:rotation")
        for key_id in run.destroyed:
            log_event("kms.key.destroyed", key_id=key_id, actor="system:deletion")
        for error in run.errors:
            log_event("maintenance.error", logging.WARNING, error=error)
        return run

    def _loop(self) -> None:
        """Run now, then every interval; the timer outlives any one failure."""
        while True:
            try:
                self.run_once()
            except Exception as exc:
                log_event("maintenance.error", logging.ERROR, error=f"{type(exc).__name__}: {exc}")
            if self._stop.wait(self._interval):
                return

    def start(self) -> None:
        """Run now, then every interval, until :meth:`stop`."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="nacre-maintenance", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        """The timer thread is started and not stopped."""
        return self._thread is not None

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)
