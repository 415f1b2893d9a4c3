"""``nacre serve --workers N``: N worker processes serving one listening socket, supervised.

One process serves at most about one core (the GIL). Every piece of shared state already lives
in the database, so several processes on one database are replicas (tests/test_server_replicas.py);
``--workers`` runs N of them on one data directory, one database and one listening socket:

1. The parent does what must happen once (:func:`nacre.server.serve_setup.bootstrap`): it opens
   the data directory, creates or unseals the KEK, runs the migrations and creates the bootstrap
   admin key; then it binds and listens (:func:`~nacre.server.serve_setup.bind_listener`) and
   prints the URL, as a single process does.
2. :class:`Supervisor` starts N workers. Each is a fresh interpreter (``sys.executable -c ...``
   running :func:`worker_main`) that inherits only the listening socket and a readiness pipe
   (``pass_fds``) and gets the options as JSON in :data:`WORKER_ENV`; it rebuilds the
   :class:`~nacre.server.ServerConfig` from them (:func:`~nacre.server.serve_setup.server_config`,
   the function the parent used), builds its own app (own engine and connection pool, own thread
   pool) and serves the inherited socket with uvicorn's HTTP protocol. It accepts connections
   itself (:class:`~nacre.server.fair_accept.FairAcceptor`): the workers' connection counts sit
   in a small shared file in the parent's private directory, and a worker holding more than
   another leaves new connections to it for a moment, so keep-alive clients spread evenly.

Why spawn (fork + exec of a fresh interpreter) and not a bare ``fork``: the parent has imported
uvicorn, SQLAlchemy, cryptography and the store, and has opened the database, unsealed the KEK and
run a service once; the store may start helper threads, and logging and OpenSSL hold
locks. A child forked from that state can inherit a lock held by a thread that does not exist in
the child, or a half-used SQLite handle: rare, timing-dependent hangs and corruption. An exec'd
worker starts from nothing but its options, so it is correct whatever the parent did before and
whatever the store grows later, and a worker restarted an hour later starts exactly like the
first. The cost is about a second of imports per worker start. Not ``multiprocessing``: its
spawn re-imports the parent's ``__main__`` script, starts a resource-tracker process and
pickles the socket; ``subprocess`` with ``pass_fds`` hands over exactly two descriptors.

Supervision: SIGINT or SIGTERM to the parent sends SIGTERM to every worker (uvicorn's graceful
shutdown: stop accepting, finish in-flight requests, run the app's shutdown), waits up to
:data:`STOP_SECONDS` (then SIGKILLs what is left) and returns 0 when every worker stopped cleanly;
a second SIGINT is forwarded (uvicorn then stops without waiting). A worker that dies is logged
and started again (after a growing pause when it keeps dying soon after starting). Workers that
exit before serving are startup failures: after :data:`MAX_STARTUP_FAILURES` in a row (no worker
became ready in between) the parent stops the rest and raises :class:`WorkersFailedError`. No
orphans: however :meth:`Supervisor.run` ends (stop, give-up, an error in the parent), it kills and
reaps every worker still running; a parent that dies without running that (SIGKILL, SIGHUP) leaves
workers that notice within a second (their parent pid changes) and shut down gracefully.

Metrics: with N > 1 the parent creates a private temporary directory, gives it to every worker as
``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's multiprocess mode: each process's counters and
histograms in its own memory-mapped files) and removes it at exit (orphaned workers do when the
parent was killed). ``/metrics`` on any worker sums every file
(:class:`nacre.server.observe.Metrics`), so counters are totals over all workers, including ones
that died and were replaced.

Scheduled maintenance (``--maintenance-every``) runs in worker 0 only (a restarted worker 0 takes
it up again); it is race-safe, so this only avoids N-fold idle polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Final

from nacre.errors import NacreError, UsageError
from nacre.server.app import create_app
from nacre.server.fair_accept import ConnectionShare, FairAcceptor, create_share
from nacre.server.observe import log_event
from nacre.server.serve_setup import (
    ServeOptions,
    check_worker_count,
    configure_logging,
    server_config,
    tls_certificate,
    tune_gc,
)

if TYPE_CHECKING:
    import uvicorn


__all__ = [
    "MAX_STARTUP_FAILURES",
    "STOP_SECONDS",
    "WORKER_ENV",
    "Supervisor",
    "WorkersFailedError",
    "worker_main",
]

#: The environment variable carrying a worker's options (JSON) from the parent.
WORKER_ENV: Final = "NACRE_SERVE_WORKER"
#: prometheus_client's multiprocess directory variable.
MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
#: Worker exits before serving, in a row, after which the parent gives up.
MAX_STARTUP_FAILURES: Final = 5
#: A worker not serving this long after its start is killed (and counts as a startup failure).
STARTUP_SECONDS: Final = 120.0
#: How long workers get to finish in-flight requests once asked to stop.
STOP_SECONDS: Final = 30.0
#: A worker that served at least this long before dying is restarted at once.
STABLE_SECONDS: Final = 30.0
#: First pause before restarting a worker that keeps dying; doubles up to :data:`MAX_BACKOFF`.
BACKOFF_SECONDS: Final = 0.5
MAX_BACKOFF: Final = 10.0
#: How often a worker checks that its parent is still there (in uvicorn ticks of 0.1 s).
PARENT_CHECK_TICKS: Final = 5
#: Exit statuses of a worker asked to stop (uvicorn re-raises the signal after its shutdown).
_CLEAN_STOP: Final = frozenset({0, -signal.SIGTERM, -signal.SIGINT})
_WORKER_CODE: Final = "from nacre.server.workers import worker_main; worker_main()"
#: The workers' connection counts (nacre.server.fair_accept), in the parent's private directory.
SHARE_FILE: Final = "connections.share"


class WorkersFailedError(NacreError):
    """The worker processes of ``nacre serve --workers`` could not be kept running."""

    default_code = "WORKERS_FAILED"


# ------------------------------------------------------------------------ the parent


@dataclass
class _Worker:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    #: Read end of the readiness pipe (the worker writes one byte once it serves).
    ready_fd: int | None = None
    ready: bool = False
    started: float = 0.0
    #: Killed for not serving in time (reaped, and counted, by the next look).
    killed: bool = False
    #: When to start this worker (again); None: not scheduled.
    start_at: float | None = 0.0
    #: Deaths in a row soon after starting (drives the restart pause).
    quick_deaths: int = 0


def _describe_status(returncode: int) -> str:
    if returncode >= 0:
        return f"exit code {returncode}"
    try:
        return f"killed by {signal.Signals(-returncode).name}"
    except ValueError:
        return f"killed by signal {-returncode}"


class Supervisor:
    """Runs ``count`` workers on ``listener`` until SIGINT/SIGTERM (see the module docstring).

    :meth:`run` must be called from the main thread (it handles signals); it returns the exit
    status (0: every worker stopped cleanly) or raises :class:`WorkersFailedError`.
    """

    def __init__(
        self,
        options: ServeOptions,
        listener: socket.socket,
        count: int,
        *,
        startup_seconds: float = STARTUP_SECONDS,
        stop_seconds: float = STOP_SECONDS,
        max_startup_failures: int = MAX_STARTUP_FAILURES,
    ) -> None:
        check_worker_count(count)
        if count > 1 and os.name != "posix":
            raise UsageError(
                "worker processes need a POSIX system (they inherit the listening socket)",
                field="--workers",
                expected="1 on this system",
                actual=count,
            )
        if not sys.executable:
            raise UsageError(
                "cannot start worker processes: the Python interpreter's path is unknown",
                field="sys.executable",
                expected="the path of the Python running nacre",
                actual="(empty)",
            )
        self.options = options
        self.listener = listener
        self.workers = [_Worker(i) for i in range(count)]
        self.startup_seconds = startup_seconds
        self.stop_seconds = stop_seconds
        self.max_startup_failures = max_startup_failures
        self._signals: deque[int] = deque()
        self._stopping = False
        self._stop_deadline = 0.0
        self._killed = False
        self._unclean = False
        self._startup_failures = 0
        self._gave_up: str | None = None
        self._metrics_dir = ""

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> int:
        if threading.current_thread() is not threading.main_thread():
            raise UsageError(
                "worker processes are supervised from the main thread only",
                field="thread",
                expected="the main thread",
                actual=threading.current_thread().name,
            )
        self._metrics_dir = tempfile.mkdtemp(prefix="nacre-metrics-")
        create_share(Path(self._metrics_dir) / SHARE_FILE, len(self.workers))
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        handlers: dict[int, Any] = {}
        previous_wakeup = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                handlers[sig] = signal.signal(sig, self._on_stop_signal)
            # A Python handler (not SIG_IGN, which would reap the children for us) so a dying
            # worker writes to the wakeup pipe and ends the wait at once.
            handlers[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, _wake_only)
            log_event(
                "serve.workers.start",
                workers=len(self.workers),
                pid=os.getpid(),
                metrics_dir=self._metrics_dir,
            )
            self._loop(wake_r)
        finally:
            self._kill_all()
            for signum, handler in handlers.items():
                signal.signal(signum, signal.SIG_DFL if handler is None else handler)
            signal.set_wakeup_fd(previous_wakeup)
            os.close(wake_r)
            os.close(wake_w)
            for worker in self.workers:
                self._close_ready(worker)
            shutil.rmtree(self._metrics_dir, ignore_errors=True)
        if self._gave_up is not None:
            raise WorkersFailedError(
                self._gave_up,
                field="--workers",
                expected="workers that start and serve",
                actual=f"{self.max_startup_failures} exits in a row before serving",
                hint="see what the workers logged above",
            )
        return 1 if self._unclean else 0

    def _loop(self, wake_r: int) -> None:
        while True:
            now = time.monotonic()
            self._handle_signals(now)
            self._reap(now)
            if self._stopping:
                if not any(w.proc is not None for w in self.workers):
                    return
                if now >= self._stop_deadline and not self._killed:
                    alive = [w for w in self.workers if w.proc is not None]
                    log_event(
                        "serve.workers.stop_timeout",
                        logging.WARNING,
                        seconds=self.stop_seconds,
                        killed=[w.proc.pid for w in alive if w.proc is not None],
                    )
                    for w in alive:
                        if w.proc is not None:
                            w.proc.kill()
                    self._killed = self._unclean = True
            elif self._startup_failures >= self.max_startup_failures:
                self._gave_up = "the worker processes keep exiting before they serve: giving up"
                log_event("serve.workers.give_up", logging.ERROR, failures=self._startup_failures)
                self._begin_stop(now)
                continue
            else:
                self._start_due(now)
                self._check_startup(now)
            self._wait(wake_r, self._timeout(time.monotonic()))

    def _timeout(self, now: float) -> float:
        deadlines = [now + 1.0]
        if self._stopping and not self._killed:
            deadlines.append(self._stop_deadline)
        for w in self.workers:
            if self._stopping:
                break
            if w.start_at is not None:
                deadlines.append(w.start_at)
            elif w.proc is not None and not w.ready and not w.killed:
                deadlines.append(w.started + self.startup_seconds)
        return max(0.0, min(deadlines) - now)

    def _wait(self, wake_r: int, timeout: float) -> None:
        fds = [wake_r] + [w.ready_fd for w in self.workers if w.ready_fd is not None]
        readable, _, _ = select.select(fds, [], [], timeout)
        if wake_r in readable:
            try:
                while os.read(wake_r, 512):
                    pass
            except BlockingIOError:
                pass
        for w in self.workers:
            if w.ready_fd is not None and w.ready_fd in readable:
                self._read_ready(w)

    # -- signals ----------------------------------------------------------------------------

    def _on_stop_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._signals.append(signum)

    def _handle_signals(self, now: float) -> None:
        while self._signals:
            sig = self._signals.popleft()
            if not self._stopping:
                log_event("serve.workers.stopping", signal=signal.Signals(sig).name)
                self._begin_stop(now)
            elif sig == signal.SIGINT:
                # A second Ctrl-C: uvicorn stops without waiting for open connections.
                self._signal_all(signal.SIGINT)

    def _begin_stop(self, now: float) -> None:
        self._stopping = True
        self._stop_deadline = now + self.stop_seconds
        for w in self.workers:
            w.start_at = None
        self._signal_all(signal.SIGTERM)

    def _signal_all(self, sig: int) -> None:
        for w in self.workers:
            if w.proc is not None:
                w.proc.send_signal(sig)

    # -- workers ----------------------------------------------------------------------------

    def _start_due(self, now: float) -> None:
        for w in self.workers:
            if w.proc is None and w.start_at is not None and w.start_at <= now:
                self._start(w, now)

    def _worker_env(self, w: _Worker, ready_fd: int) -> dict[str, str]:
        options = self.options
        if w.index != 0:
            options = replace(options, maintenance_every=0.0)
        spec = {
            "options": options.to_json(),
            "index": w.index,
            "listen_fd": self.listener.fileno(),
            "ready_fd": ready_fd,
            "parent_pid": os.getpid(),
        }
        # The options (database URL included, maybe with a password) travel in the environment:
        # readable only by this user (/proc/PID/environ), unlike the command line.
        env = {k: v for k, v in os.environ.items() if k.lower() != "prometheus_multiproc_dir"}
        env[WORKER_ENV] = json.dumps(spec)
        env[MULTIPROC_ENV] = self._metrics_dir
        return env

    def _start(self, w: _Worker, now: float) -> None:
        ready_r, ready_w = os.pipe()
        try:
            w.proc = subprocess.Popen(
                [sys.executable, "-c", _WORKER_CODE],
                env=self._worker_env(w, ready_w),
                pass_fds=(self.listener.fileno(), ready_w),
                stdin=subprocess.DEVNULL,
            )
        except OSError as exc:
            os.close(ready_r)
            self._startup_failures += 1
            w.start_at = now + self._backoff(self._startup_failures)
            log_event(
                "serve.worker.spawn_failed",
                logging.ERROR,
                worker=w.index,
                error=f"{exc.strerror or exc}",
                failures=self._startup_failures,
            )
            return
        finally:
            os.close(ready_w)
        os.set_blocking(ready_r, False)
        w.ready_fd = ready_r
        w.ready = w.killed = False
        w.started = now
        w.start_at = None
        log_event("serve.worker.started", worker=w.index, pid=w.proc.pid)

    def _read_ready(self, w: _Worker) -> None:
        if w.ready_fd is None:
            return
        try:
            data = os.read(w.ready_fd, 64)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data and not w.ready and w.proc is not None:
            w.ready = True
            self._startup_failures = 0
            log_event(
                "serve.worker.ready",
                worker=w.index,
                pid=w.proc.pid,
                seconds=round(time.monotonic() - w.started, 3),
            )
        self._close_ready(w)  # one byte, then EOF: nothing more to read either way

    @staticmethod
    def _close_ready(w: _Worker) -> None:
        if w.ready_fd is not None:
            os.close(w.ready_fd)
            w.ready_fd = None

    def _check_startup(self, now: float) -> None:
        for w in self.workers:
            if (
                w.proc is not None
                and not w.ready
                and not w.killed
                and now - w.started > self.startup_seconds
            ):
                log_event(
                    "serve.worker.startup_timeout",
                    logging.ERROR,
                    worker=w.index,
                    pid=w.proc.pid,
                    seconds=self.startup_seconds,
                )
                w.proc.kill()  # reaped (and counted as a startup failure) by _reap
                w.killed = True

    @staticmethod
    def _backoff(failures: int) -> float:
        return float(min(BACKOFF_SECONDS * 2 ** max(0, failures - 1), MAX_BACKOFF))

    def _reap(self, now: float) -> None:
        for w in self.workers:
            if w.proc is None:
                continue
            returncode = w.proc.poll()
            if returncode is None:
                continue
            self._read_ready(w)  # it may have reported ready just before it died
            self._close_ready(w)
            pid = w.proc.pid
            w.proc = None
            _forget_metrics_of(pid, self._metrics_dir)
            status = _describe_status(returncode)
            if self._stopping:
                clean = returncode in _CLEAN_STOP
                self._unclean |= not clean
                log_event(
                    "serve.worker.stopped",
                    logging.INFO if clean else logging.WARNING,
                    worker=w.index,
                    pid=pid,
                    status="stopped cleanly" if clean else status,
                )
                continue
            if not w.ready:
                self._startup_failures += 1
                delay = self._backoff(self._startup_failures)
                log_event(
                    "serve.worker.startup_failed",
                    logging.ERROR,
                    worker=w.index,
                    pid=pid,
                    status=status,
                    failures=self._startup_failures,
                    restart_in=delay,
                )
            else:
                uptime = now - w.started
                w.quick_deaths = w.quick_deaths + 1 if uptime < STABLE_SECONDS else 0
                delay = self._backoff(w.quick_deaths) if w.quick_deaths else 0.0
                log_event(
                    "serve.worker.died",
                    logging.ERROR,
                    worker=w.index,
                    pid=pid,
                    status=status,
                    uptime_seconds=round(uptime, 3),
                    restart_in=delay,
                )
            w.ready = False
            w.start_at = now + delay

    def _kill_all(self) -> None:
        """SIGKILL and reap every worker still running (the last line against orphans)."""
        for w in self.workers:
            if w.proc is not None and w.proc.poll() is None:
                w.proc.kill()
        for w in self.workers:
            if w.proc is not None:
                w.proc.wait()
                w.proc = None


def _wake_only(_signum: int, _frame: FrameType | None) -> None:
    """SIGCHLD: nothing to do here; the wakeup pipe ends the supervisor's wait."""


def _forget_metrics_of(pid: int, directory: str) -> None:
    """prometheus_client's bookkeeping for a dead process (its live gauges; counters and
    histograms stay: totals include what dead workers counted)."""
    from prometheus_client import multiprocess

    with contextlib.suppress(OSError):
        multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


# ------------------------------------------------------------------------ a worker


@dataclass(frozen=True, slots=True)
class _WorkerSpec:
    options: ServeOptions
    index: int
    listen_fd: int
    ready_fd: int
    parent_pid: int

    @classmethod
    def from_json(cls, text: str) -> _WorkerSpec:
        try:
            doc = json.loads(text)
            return cls(
                options=ServeOptions.from_json(doc["options"]),
                index=int(doc["index"]),
                listen_fd=int(doc["listen_fd"]),
                ready_fd=int(doc["ready_fd"]),
                parent_pid=int(doc["parent_pid"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise UsageError(
                f"{WORKER_ENV} is not a worker specification: {exc}",
                field=WORKER_ENV,
                expected="the JSON nacre serve --workers passes its workers",
                actual=text[:80],
            ) from exc


@dataclass
class _WorkerState:
    """What a worker's server loop reads and reports (see :func:`_worker_server`)."""

    index: int
    parent_pid: int
    #: Write end of the readiness pipe until the one byte is written.
    ready_fd: int | None
    #: The parent disappeared (the server then shuts down).
    orphaned: bool = False
    #: The workers' connection counts (None: not found; connections are then not spread).
    share: ConnectionShare | None = None


def _worker_server(
    config: uvicorn.Config, state: _WorkerState, listener: socket.socket
) -> uvicorn.Server:
    import uvicorn

    class WorkerServer(uvicorn.Server):
        """uvicorn's server that accepts on the shared socket through a
        :class:`~nacre.server.fair_accept.FairAcceptor` (connections spread evenly over the
        workers), tells the parent once it serves and stops when the parent is gone
        (``on_tick`` runs every 0.1 s on the event loop once startup is complete)."""

        acceptor: FairAcceptor | None = None

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            # uvicorn's startup with no socket of its own (lifespan, state), then the acceptor
            # with the protocol uvicorn would have made for each connection.
            await super().startup(sockets=[])
            if self.should_exit:
                return
            loop = asyncio.get_running_loop()
            config = self.config

            def protocol() -> asyncio.Protocol:
                made: asyncio.Protocol = config.http_protocol_class(  # type: ignore[call-arg]
                    config=config,
                    server_state=self.server_state,
                    app_state=self.lifespan.state,
                    _loop=loop,
                )
                return made

            self.acceptor = FairAcceptor(
                listener,
                protocol,
                held=lambda: len(self.server_state.connections),
                share=state.share,
                ssl_context=config.ssl,
            )
            self.acceptor.start()

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            if self.acceptor is not None:
                self.acceptor.stop()
            await super().shutdown(sockets=sockets)

        async def on_tick(self, counter: int) -> bool:
            if self.acceptor is not None:
                self.acceptor.publish()
            if state.ready_fd is not None:
                with contextlib.suppress(OSError):  # the parent is gone: see below
                    os.write(state.ready_fd, b"1")
                os.close(state.ready_fd)
                state.ready_fd = None
            if (
                counter % PARENT_CHECK_TICKS == 0
                and not state.orphaned
                and os.getppid() != state.parent_pid
            ):
                log_event("serve.worker.orphaned", logging.WARNING, worker=state.index)
                state.orphaned = self.should_exit = True
            return await super().on_tick(counter)

    return WorkerServer(config)


def _open_share(index: int) -> ConnectionShare | None:
    directory = os.environ.get(MULTIPROC_ENV)
    if not directory:
        return None
    try:
        return ConnectionShare(Path(directory) / SHARE_FILE, index)
    except (OSError, UsageError) as exc:
        log_event("serve.worker.no_share", logging.WARNING, worker=index, error=str(exc))
        return None


def worker_main() -> None:
    """Entry point of one worker process, started by :class:`Supervisor` with the options in
    :data:`WORKER_ENV` and the listening socket and readiness pipe inherited."""
    text = os.environ.pop(WORKER_ENV, None)
    if text is None:
        sys.stderr.write(f"{WORKER_ENV} is not set: this runs only under nacre serve --workers\n")
        raise SystemExit(2)
    try:
        spec = _WorkerSpec.from_json(text)
    except UsageError as exc:
        sys.stderr.write(f"error: {exc}\n")
        raise SystemExit(2) from None
    configure_logging(spec.options.log_level, worker=spec.index)
    try:
        import uvicorn

        config, _ = server_config(spec.options)
        certificate = tls_certificate(spec.options.tls_cert, spec.options.tls_key)
        app = create_app(config)
    except (NacreError, OSError) as exc:
        log_event("serve.worker.failed", logging.ERROR, worker=spec.index, error=str(exc))
        raise SystemExit(3) from None
    listener = socket.socket(fileno=spec.listen_fd)
    tune_gc()
    kwargs: dict[str, Any] = {}
    if certificate is not None:
        context = certificate.context
        kwargs["ssl_context_factory"] = lambda _config, _default: context
    uv_config = uvicorn.Config(app, log_config=None, access_log=False, **kwargs)
    state = _WorkerState(spec.index, spec.parent_pid, spec.ready_fd, share=_open_share(spec.index))
    _worker_server(uv_config, state, listener).run(sockets=[listener])
    if state.orphaned:
        # Nobody else will remove the parent's private metrics directory: the workers that
        # outlive it do (a sibling still writing there is shutting down too).
        directory = os.environ.get(MULTIPROC_ENV)
        if directory:
            shutil.rmtree(directory, ignore_errors=True)
