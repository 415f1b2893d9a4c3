"""KBS full-handshake throughput and latency against a real ``nacre serve``, beside the crypto floor.

    .venv/bin/python benchmarks/kbs.py [--json] [--duration S] [--clients 1,8,64]
        [--client wire|sdk] [--workers N] [--database postgresql://... [--replicas N]]

One run:

1. Starts ``nacre serve`` as a subprocess on 127.0.0.1 (a free port), with a temporary data
   directory (SQLite embedded default), a temporary simulated platform (``NACRE_SIM_DIR``) and
   simulation trust on; registers one resource with a CEL release policy (this MRENCLAVE) through
   the admin API with the bootstrap admin key, as ``nacre demo`` does.
2. Crypto floor, in this process, single-threaded, no HTTP: the verify + sign + JWE work one
   handshake needs on the server: ``nacre.verify`` of a simulated SGX quote with warm collateral,
   EAR issue (ES256 sign), EAR verify (what the resource GET does) and JWE encryption to an
   EC P-256 TEE key (ECDH-ES+A256KW, A256GCM). Expressed as handshakes/s.
3. For each client count: that many clients, each running full handshakes back to back, every
   one complete and fresh (a new KBS session, nonce, ephemeral TEE key and quote; no token is
   reused): auth -> simulated quote -> attest -> resource GET -> JWE decrypt, checked against the
   registered secret. Handshakes/s, p50/p99 latency, errors, and the CPU seconds the server
   process(es) and this (client) process spent per handshake (from /proc and getrusage). The
   clients are one of:

   ``--client wire`` (default): N coroutines on one asyncio event loop in this process
   (``benchmarks/kbs_wire.py``), each with one keep-alive connection and a hand-written HTTP/1.1
   client, like wrk for plain HTTP. It sends the same requests as the SDK (paths, JSON bodies,
   session cookie, bearer token; only incidental headers differ) and makes the same checks
   (status, nonce, cookie, selected hash, token shape, JWE decryption, released bytes) with far
   less client CPU, so the server, not the load generator, is what is measured. Measured on 2
   shared cores: ~1.1-1.8 ms of client CPU per handshake, about half of it the simulated quote
   and the JWE decryption every client pays; the HTTP and asyncio part is ~0.15-0.3 ms when hot.
   Unlike the SDK it never retries: a refused session is an error in the figures.

   ``--client sdk``: N threads, each with a fresh :class:`nacre.sdk.KbsClient` per handshake
   over the thread's own keep-alive ``httpx.Client`` (built before the clock starts: it costs
   ~80 ms of CPU in SSL setup). This measures exactly the code a workload runs, load generator
   included: on 2 cores the SDK spends ~4-5 ms of client CPU per handshake (mostly httpx and
   thread hand-offs) against ~7-9 ms in the server, and 64 threads contend for one GIL, so the
   figure is as much the clients' as the server's.

The machine's cores are shared by the server and the clients: the report prints the client mode,
the core count and both CPU costs, so one can see when the load generator is the limit.

The server runs with ``--workers N`` (default: the machine's core count, how it is deployed; one
process serves at most about one core). Measured on 2 cores with the wire clients at 64:
``--workers 1`` 365 handshakes/s, ``--workers 2`` 540, ``--workers 3`` 417 (more processes than
cores only add contention); the server CPU figure sums the parent and its workers.

Where a worker's CPU goes (py-spy, 64 wire clients, SQLite: the KBS handlers run on the event
loop, session writes unsynced, audit entries made durable by a shared WAL fsync): about a fifth
is HTTP (uvicorn, the KBS lane) for the three requests; of the rest, about 40% is the crypto
floor's work (verify, EAR sign and verify, JWE), a quarter the database (two session writes, two
reads, the audit append) and the rest JSON, CEL and glue.

``--replicas N`` starts N ``nacre serve`` processes on one PostgreSQL database (each given the
first one's sealed KEK, as replicas are provisioned) and spreads the clients over them:
the scale-out the service is built for, measured here on the cores the clients also use. The
server CPU figure then sums the replicas; PostgreSQL's own processes are not in it. Client ``i``
(thread or coroutine) talks to replica ``i mod N``.

Figures are printed, never asserted: timings vary by machine. Every loop is bounded in time and
in count; all traffic goes to 127.0.0.1; the server is stopped at the end, on Ctrl-C and on errors.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gc
import json
import os
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Literal

import httpx
from cryptography.hazmat.primitives.asymmetric import ec

from kbs_wire import KbsWireClient
from nacre.appraisal import appraise, policy_from_dict
from nacre.sdk import KbsClient
from nacre.server import ADMIN_KEY_FILE, load_admin_key, sign_admin_token
from nacre.sim import SimPlatform
from nacre.tee.sim import SimBackend
from nacre.token import (
    EarInput,
    Keyring,
    encrypt_for_tee_key,
    issue_ear,
    kbs_report_data,
    public_jwk,
    verify_ear,
)
from nacre.verify import VerifyCache, verify

RESOURCE: Final = "bench/kbs/key"
GOAL_FLOOR_RATIO: Final = 0.5  # handshakes/s at the largest client count / floor, at least
GOAL_P99_MS: Final = 100.0  # p99 latency at the largest client count, at most
GOAL_ERRORS: Final = 0
STARTUP_SECONDS: Final = 60.0
STOP_SECONDS: Final = 15.0
#: Upper bound on handshakes per client count, whatever the duration.
MAX_HANDSHAKES_PER_LEVEL: Final = 200_000
HANDSHAKE_TIMEOUT_SECONDS: Final = 30.0
#: How the ``client`` field of the JSON document describes each load generator.
CLIENT_DESCRIPTIONS: Final = {
    "wire": "wire: one asyncio coroutine per client on one event loop (benchmarks/kbs_wire.py), "
    "hand-written HTTP/1.1 on one keep-alive connection each, full fresh handshake checked "
    "like the SDK",
    "sdk": "sdk: threads, one fresh nacre.sdk.KbsClient per handshake, one httpx.Client per thread",
}

ClientMode = Literal["wire", "sdk"]
_CLK_TCK: Final = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


# --------------------------------------------------------------------------- the server


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _nacre_command() -> list[str]:
    script = Path(sys.executable).with_name("nacre")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "from nacre.cli import main; main()"]


def _proc_stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, user + system CPU seconds) of a live process, from /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _CLK_TCK  # ppid, utime, stime


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    url: str
    data_dir: Path
    log: Path

    def cpu_seconds(self) -> float | None:
        """User + system CPU seconds of the server process and its worker processes so far
        (Linux /proc), else None."""
        own = _proc_stat(self.proc.pid)
        if own is None:
            return None
        total = own[1]
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                stat = _proc_stat(int(entry.name))
                if stat is not None and stat[0] == self.proc.pid:
                    total += stat[1]
        return total

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


@contextmanager
def running_server(
    root: Path,
    sim_dir: Path,
    log_level: str,
    database: str | None = None,
    *,
    name: str = "data",
    kek_from: Path | None = None,
    workers: int = 1,
) -> Iterator[Server]:
    """``nacre serve`` on 127.0.0.1 with SQLite in ``root/<name>`` (or ``database``); stopped on
    the way out. ``kek_from``: a replica's data directory whose sealed KEK this one is given
    (the documented per-replica step)."""
    data_dir = root / name
    if kek_from is not None:
        data_dir.mkdir(mode=0o700)
        shutil.copy2(kek_from / "kek.json", data_dir / "kek.json")
    port = _free_port()
    env = {**os.environ, "NACRE_SIM_DIR": str(sim_dir)}
    env.pop("NACRE_TEE", None)
    log = root / f"{name}.log"
    cmd = [
        *_nacre_command(),
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        "--log-level",
        log_level,
        "--workers",
        str(workers),
    ]
    if database is not None:
        cmd += ["--database", database]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    server = Server(proc, f"http://127.0.0.1:{port}", data_dir, log)
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        with httpx.Client(timeout=2.0) as http:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"nacre serve exited with {proc.returncode}:\n{server.log_tail()}"
                    )
                try:
                    if http.get(f"{server.url}/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"nacre serve did not answer /healthz:\n{server.log_tail()}")
                time.sleep(0.05)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_SECONDS)


def register_resource(server: Server, platform: SimPlatform, secret: bytes) -> None:
    """PUT the benchmark resource with a release policy naming the default workload's
    MRENCLAVE, signed with the bootstrap admin key (as ``nacre demo`` does)."""
    mrenclave = platform.measure().mr_enclave.hex()
    policy = (
        "version: 1\n"
        "rules:\n"
        "  - name: mrenclave\n"
        f"    expr: claims.mrenclave == '{mrenclave}'\n"
        "  - name: isv_svn\n"
        "    expr: claims.isv_svn >= 0\n"
    )
    key = load_admin_key(server.data_dir / ADMIN_KEY_FILE)
    token = sign_admin_token(key, now=datetime.now(UTC))
    with httpx.Client(timeout=30.0) as http:
        r = http.put(
            f"{server.url}/admin/v1/resources/{RESOURCE}",
            json={"data": base64.b64encode(secret).decode("ascii"), "policy": policy},
            headers={"Authorization": f"Bearer {token}"},
        )
    if r.status_code != 200:
        raise RuntimeError(f"registering {RESOURCE} answered {r.status_code}: {r.text[:500]}")


# --------------------------------------------------------------------------- the crypto floor


def floor_op(platform: SimPlatform) -> Callable[[], object]:
    """The server-side crypto of one handshake, in process: verify + EAR sign + EAR verify + JWE."""
    tee_key = ec.generate_private_key(ec.SECP256R1())
    jwk = public_jwk(tee_key)
    nonce = base64.b64encode(secrets.token_bytes(32)).decode("ascii")
    quote = platform.quote("sgx", kbs_report_data(nonce, jwk, ""))
    bundle = platform.bundle("sgx")
    trust = platform.trust_roots()
    cache = VerifyCache()
    now = datetime.now(UTC)
    ring = Keyring.generate(now)
    policy = policy_from_dict(
        {
            "version": 1,
            "name": "bench",
            "tcb_status": ["UpToDate", "SWHardeningNeeded"],
            "allow_sim": True,
        }
    )
    verified = verify(
        quote, collateral=bundle, now=now, trust=trust, cache=cache
    )  # warms the cache
    result = appraise(verified, policy)
    if result.status != "affirming":
        raise RuntimeError(f"the floor's quote does not appraise as affirming: {result.status}")
    vector = result.trustworthiness.to_dict()
    secret = secrets.token_bytes(32)

    def op() -> object:
        v = verify(quote, collateral=bundle, now=now, trust=trust, cache=cache)
        claims = {**v.claims, "tcb_status": v.tcb_status, "advisory_ids": list(v.advisory_ids)}
        ear = EarInput(
            tee=v.tee,
            status="affirming",
            trustworthiness_vector=vector,
            claims=claims,
            policy_id="default",
            tee_pubkey=jwk,
            runtime_data={"nonce": nonce, "additional-evidence": ""},
            nonce=nonce,
            sim=v.sim,
        )
        token = issue_ear(ear, ring, now, timedelta(minutes=5))
        verify_ear(token, ring, now)
        return encrypt_for_tee_key(secret, jwk)

    op()  # must succeed: never time an error path
    return op


def measure_floor(op: Callable[[], object], rounds: int, round_seconds: float) -> list[float]:
    """Seconds per call, one sample per round (after a warm-up); each round bounded in time."""
    for _ in range(20):
        op()
    samples: list[float] = []
    for _ in range(rounds):
        gc.collect()
        n, t0 = 0, time.perf_counter()
        while n < 100_000 and time.perf_counter() - t0 < round_seconds:
            op()
            n += 1
        samples.append((time.perf_counter() - t0) / max(n, 1))
    return samples


# --------------------------------------------------------------------------- the load


@dataclass
class Level:
    clients: int
    handshakes: int = 0
    errors: int = 0
    seconds: float = 0.0
    per_second: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    server_cpu_ms_per_handshake: float | None = None
    client_cpu_ms_per_handshake: float | None = None
    error_samples: list[str] = field(default_factory=list)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (0 for an empty one)."""
    if not sorted_values:
        return 0.0
    rank = max(1, min(len(sorted_values), int(-(-q * len(sorted_values) // 100))))
    return sorted_values[rank - 1]


def _servers_cpu(servers: list[Server]) -> float | None:
    """CPU seconds of all the server processes together (None when one cannot be read)."""
    total = 0.0
    for server in servers:
        cpu = server.cpu_seconds()
        if cpu is None:
            return None
        total += cpu
    return total


def _client_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class _Mark:
    """A point in time with the CPU seconds spent so far by the servers and by this process."""

    at: float
    server_cpu: float | None
    client_cpu: float

    @classmethod
    def now(cls, servers: list[Server]) -> _Mark:
        return cls(time.monotonic(), _servers_cpu(servers), _client_cpu())


@dataclass
class _Tally:
    """What one level's clients recorded: latencies of good handshakes, and the errors."""

    level: Level
    latencies: list[float] = field(default_factory=list)

    def record(self, elapsed: float, error: str | None) -> None:
        if error is None:
            self.latencies.append(elapsed)
            return
        self.level.errors += 1
        if len(self.level.error_samples) < 5:
            self.level.error_samples.append(error[:300])

    def finish(self, start: _Mark, end: _Mark) -> Level:
        """Fill the level's figures; both client modes compute them here, the same way."""
        level, latencies = self.level, sorted(self.latencies)
        level.seconds = end.at - start.at
        level.handshakes = len(latencies)
        level.per_second = level.handshakes / level.seconds if level.seconds > 0 else 0.0
        level.p50_ms = percentile(latencies, 50) * 1e3
        level.p99_ms = percentile(latencies, 99) * 1e3
        level.max_ms = (latencies[-1] if latencies else 0.0) * 1e3
        done = level.handshakes + level.errors
        if done and start.server_cpu is not None and end.server_cpu is not None:
            level.server_cpu_ms_per_handshake = (end.server_cpu - start.server_cpu) / done * 1e3
        if done:
            level.client_cpu_ms_per_handshake = (end.client_cpu - start.client_cpu) / done * 1e3
        return level


def run_level(
    servers: list[Server],
    platform: SimPlatform,
    secret: bytes,
    clients: int,
    duration: float,
    mode: ClientMode = "wire",
) -> Level:
    """``clients`` clients doing full handshakes for ``duration`` seconds (at most
    :data:`MAX_HANDSHAKES_PER_LEVEL`); client ``i`` talks to replica ``i mod len(servers)``."""
    if mode == "wire":
        return asyncio.run(_wire_level(servers, platform, secret, clients, duration))
    return _sdk_level(servers, platform, secret, clients, duration)


async def _wire_level(
    servers: list[Server], platform: SimPlatform, secret: bytes, clients: int, duration: float
) -> Level:
    """``clients`` coroutines on this event loop, each a :class:`KbsWireClient` with its own
    keep-alive connection, running handshakes back to back."""
    tally = _Tally(Level(clients))
    wire = [
        KbsWireClient(
            servers[i % len(servers)].url,
            SimBackend(platform),
            RESOURCE,
            secret,
            timeout=HANDSHAKE_TIMEOUT_SECONDS,
        )
        for i in range(clients)
    ]
    started = [0]  # handshakes begun, across all coroutines (one thread: no lock needed)
    start = _Mark.now(servers)
    stop_at = start.at + duration

    async def client_loop(client: KbsWireClient) -> None:
        while time.monotonic() < stop_at and started[0] < MAX_HANDSHAKES_PER_LEVEL:
            started[0] += 1
            t0 = time.perf_counter()
            error: str | None = None
            try:
                await client.handshake()
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
            tally.record(time.perf_counter() - t0, error)

    tasks = [asyncio.create_task(client_loop(client)) for client in wire]
    try:
        _, late = await asyncio.wait(tasks, timeout=duration + HANDSHAKE_TIMEOUT_SECONDS * 2)
        for task in late:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        end = _Mark.now(servers)
        if late:
            tally.record(0.0, f"{len(late)} client coroutine(s) did not finish in time")
    finally:
        for task in tasks:
            task.cancel()
        for client in wire:
            await client.aclose()
    return tally.finish(start, end)


def _sdk_level(
    servers: list[Server], platform: SimPlatform, secret: bytes, clients: int, duration: float
) -> Level:
    """``clients`` threads doing full handshakes with a fresh KbsClient each."""
    tally = _Tally(Level(clients))
    lock = threading.Lock()
    stop_at = [0.0]
    count = [0]

    # One HTTP connection pool per thread, built before the clock starts: httpx.Client() costs
    # ~80 ms of CPU (SSL context, CA bundle), which would make the load generator, not the
    # server, the limit. Each handshake still gets a fresh KbsClient: new session, nonce and key.
    pools = [
        httpx.Client(timeout=HANDSHAKE_TIMEOUT_SECONDS, follow_redirects=False)
        for _ in range(clients)
    ]

    def worker(http: httpx.Client, server: Server) -> None:
        _loop(SimBackend(platform), http, server)

    def _loop(backend: SimBackend, http: httpx.Client, server: Server) -> None:
        while True:
            with lock:
                if time.monotonic() >= stop_at[0] or count[0] >= MAX_HANDSHAKES_PER_LEVEL:
                    return
                count[0] += 1
            t0 = time.perf_counter()
            error: str | None = None
            try:
                with KbsClient(server.url, backend=backend, http=http, get_retries=0) as kbs:
                    got = kbs.get_resource(RESOURCE)
                if got != secret:
                    error = "released bytes differ from the registered secret"
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
            elapsed = time.perf_counter() - t0
            with lock:
                tally.record(elapsed, error)

    threads = [
        threading.Thread(target=worker, args=(pool, servers[i % len(servers)]), daemon=True)
        for i, pool in enumerate(pools)
    ]
    start = _Mark.now(servers)
    stop_at[0] = start.at + duration
    for th in threads:
        th.start()
    join_deadline = start.at + duration + HANDSHAKE_TIMEOUT_SECONDS * 2
    for th in threads:
        th.join(timeout=max(0.0, join_deadline - time.monotonic()))
    end = _Mark.now(servers)
    for pool in pools:
        pool.close()
    if any(th.is_alive() for th in threads):
        with lock:
            tally.record(0.0, "a client thread did not finish in time")
    return tally.finish(start, end)


# --------------------------------------------------------------------------- report


def goals(levels: list[Level], floor_per_second: float) -> list[dict[str, Any]]:
    top = max(levels, key=lambda lv: lv.clients)
    ratio = top.per_second / floor_per_second if floor_per_second > 0 else 0.0
    errors = sum(lv.errors for lv in levels)
    return [
        {
            "name": f"handshakes/s at {top.clients} clients / crypto floor",
            "value": round(ratio, 3),
            "goal": f">= {GOAL_FLOOR_RATIO}",
            "met": ratio >= GOAL_FLOOR_RATIO,
        },
        {
            "name": f"p99 latency at {top.clients} clients (ms)",
            "value": round(top.p99_ms, 1),
            "goal": f"<= {GOAL_P99_MS:g}",
            "met": top.p99_ms <= GOAL_P99_MS,
        },
        {
            "name": "errors (all client counts)",
            "value": errors,
            "goal": f"== {GOAL_ERRORS}",
            "met": errors == GOAL_ERRORS,
        },
    ]


def print_report(doc: dict[str, Any]) -> None:
    floor = doc["floor"]
    print(
        f"machine: {doc['cores']} cores (server subprocess(es) and clients share them); "
        f"python {doc['python']}; database {doc['database']}"
    )
    print(f"server: {doc['server']}")
    print(f"client: {doc['client']}")
    print(
        f"crypto floor (verify + EAR sign + EAR verify + JWE, 1 thread, in process): "
        f"{floor['ms_per_handshake']:.3f} ms = {floor['handshakes_per_second']:.0f} handshakes/s"
    )
    print()
    print(
        f"{'clients':>7} {'handshakes':>10} {'hs/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'max ms':>8} {'errors':>6} {'srv cpu ms/hs':>13} {'cli cpu ms/hs':>13} {'/floor':>7}"
    )
    for lv in doc["levels"]:
        srv = lv["server_cpu_ms_per_handshake"]
        cli = lv["client_cpu_ms_per_handshake"]
        print(
            f"{lv['clients']:7d} {lv['handshakes']:10d} {lv['per_second']:8.1f} "
            f"{lv['p50_ms']:8.1f} {lv['p99_ms']:8.1f} {lv['max_ms']:8.1f} {lv['errors']:6d} "
            f"{'-' if srv is None else f'{srv:.2f}':>13} {'-' if cli is None else f'{cli:.2f}':>13} "
            f"{lv['per_second'] / floor['handshakes_per_second']:7.2f}"
        )
        for sample in lv["error_samples"]:
            print(f"        error: {sample}")
    print()
    print(f"{'goal':48} {'value':>8}  {'goal':8} met")
    for g in doc["goals"]:
        print(f"{g['name']:48} {g['value']:8}  {g['goal']:8} {'yes' if g['met'] else 'NO'}")
    print()
    print("informative:")
    cores = doc["cores"] or 1
    for lv in doc["levels"]:
        srv = lv["server_cpu_ms_per_handshake"]
        cli = lv["client_cpu_ms_per_handshake"]
        if srv:
            print(
                f"  {lv['clients']:3d} clients: server CPU per handshake / floor = "
                f"{srv / floor['ms_per_handshake']:.2f} "
                f"(server CPU-bound ceiling {1e3 / srv:.0f} hs/s on one core)"
            )
        if srv and cli:
            # Server and clients share the machine: no run here can exceed this, whatever the
            # concurrency (the floor goal needs the two together under cores / (0.5 * floor rate)).
            ceiling = cores * 1e3 / (srv + cli)
            print(
                f"      whole-machine ceiling: {cores} cores / ({srv:.2f} + {cli:.2f} ms CPU per "
                f"handshake) = {ceiling:.0f} hs/s = {ceiling / floor['handshakes_per_second']:.2f} "
                "of the floor"
            )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead")
    ap.add_argument("--duration", type=float, default=15.0, help="seconds per client count")
    ap.add_argument("--clients", default="1,8,64", help="comma-separated client counts")
    ap.add_argument(
        "--client",
        choices=("wire", "sdk"),
        default="wire",
        help="load generator: asyncio coroutines speaking the KBS wire protocol (wire, lean) or "
        "threads running nacre.sdk.KbsClient (sdk, the code a workload runs)",
    )
    ap.add_argument("--floor-rounds", type=int, default=5, help="floor rounds (median)")
    ap.add_argument("--floor-round-seconds", type=float, default=0.5, help="length of one round")
    ap.add_argument("--log-level", default="info", help="the server's --log-level")
    ap.add_argument(
        "--database",
        default=None,
        help="the server's --database URL (default: SQLite in a temporary data dir); "
        "use a fresh, empty database or schema",
    )
    ap.add_argument(
        "--workers",
        type=int,
        default=min(os.cpu_count() or 1, 8),
        help="the server's --workers (worker processes of one nacre serve; CPU summed over "
        "them); default: the core count (at most 8)",
    )
    ap.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="nacre serve processes sharing --database (PostgreSQL), clients spread over them",
    )
    args = ap.parse_args(argv)
    mode: ClientMode = "sdk" if args.client == "sdk" else "wire"
    if not 1 <= args.workers <= 64:
        ap.error("--workers: 1 to 64")
    if not 1 <= args.replicas <= 16:
        ap.error("--replicas: 1 to 16")
    if args.replicas > 1 and not (args.database or "").startswith("postgresql"):
        ap.error("--replicas > 1 needs a shared PostgreSQL --database (replicas share it)")
    try:
        counts = sorted({int(c) for c in args.clients.split(",") if c.strip()})
    except ValueError:
        ap.error("--clients is a comma-separated list of integers")
    if not counts or min(counts) < 1 or max(counts) > 1024:
        ap.error("--clients: 1 to 1024 clients")
    if not 0 < args.duration <= 600:
        ap.error("--duration: more than 0, at most 600 seconds")

    with tempfile.TemporaryDirectory(prefix="nacre-bench-kbs-") as tmp:
        root = Path(tmp)
        sim_dir = root / "sim"
        platform = SimPlatform.load_or_init(sim_dir)
        secret = secrets.token_bytes(32)
        with contextlib.ExitStack() as stack:
            server = stack.enter_context(
                running_server(root, sim_dir, args.log_level, args.database, workers=args.workers)
            )
            servers = [server] + [
                stack.enter_context(
                    running_server(
                        root,
                        sim_dir,
                        args.log_level,
                        args.database,
                        name=f"data-{i}",
                        kek_from=server.data_dir,
                        workers=args.workers,
                    )
                )
                for i in range(1, args.replicas)
            ]
            register_resource(server, platform, secret)
            floor_samples = measure_floor(
                floor_op(platform), args.floor_rounds, args.floor_round_seconds
            )
            floor_seconds = statistics.median(floor_samples)
            # Warm-up: a few handshakes (imports, connection setup, caches), not counted.
            warm = run_level(servers, platform, secret, len(servers), min(1.0, args.duration), mode)
            if warm.errors:
                raise RuntimeError(f"warm-up handshakes failed: {warm.error_samples}")
            levels = [run_level(servers, platform, secret, n, args.duration, mode) for n in counts]
            for each in servers:
                if each.proc.poll() is not None:
                    raise RuntimeError(f"a server died:\n{each.log_tail()}")
    floor: dict[str, Any] = {
        "ms_per_handshake": floor_seconds * 1e3,
        "handshakes_per_second": 1 / floor_seconds,
        "samples_ms": [round(s * 1e3, 4) for s in floor_samples],
    }
    doc: dict[str, Any] = {
        "python": sys.version.split()[0],
        "cores": os.cpu_count(),
        "duration_per_level": args.duration,
        "server": f"nacre serve --workers {args.workers} (uvicorn) x {args.replicas} replica "
        "process(es), sim trust, 127.0.0.1",
        "database": "sqlite (WAL; audit and admin writes synchronous=FULL, sessions NORMAL) in a temp dir"
        if args.database is None
        else args.database.split("@")[-1],
        "client": CLIENT_DESCRIPTIONS[mode],
        "floor": floor,
        "levels": [asdict(lv) for lv in levels],
        "goals": goals(levels, 1 / floor_seconds),
    }
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print_report(doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
