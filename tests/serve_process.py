"""Helpers of tests that run ``nacre serve`` as a real subprocess (no tests here)."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import httpx

from nacre.server import ADMIN_KEY_FILE, load_admin_key, sign_admin_token

__all__ = ["ServeProcess", "free_port", "start_serve"]

STARTUP_SECONDS: Final = 30.0
STOP_SECONDS: Final = 10.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _nacre_command() -> list[str]:
    script = Path(sys.executable).with_name("nacre")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "from nacre.cli import main; main()"]


@dataclass
class ServeProcess:
    proc: subprocess.Popen[bytes]
    url: str
    data_dir: Path
    log: Path

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def admin_headers(self) -> dict[str, str]:
        key = load_admin_key(self.data_dir / ADMIN_KEY_FILE)
        return {"Authorization": f"Bearer {sign_admin_token(key, now=datetime.now(UTC))}"}

    def sigkill(self) -> int:
        """SIGKILL the server and reap it; its exit status (``-SIGKILL`` when the kill did it)."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        return self.proc.wait(timeout=STOP_SECONDS)

    def stop(self) -> None:
        """Stop gracefully (SIGINT), SIGKILL when it does not exit in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_SECONDS)


def start_serve(
    data_dir: Path,
    sim_dir: Path,
    log: Path,
    *,
    database: str | None = None,
    tls: tuple[Path, Path, Path] | None = None,
    workers: int = 1,
) -> ServeProcess:
    """``nacre serve`` on 127.0.0.1 (a free port), simulation trust on, answering /healthz.

    ``tls`` = (certificate, key, CA file): serve HTTPS, checked against the CA. ``workers``:
    ``--workers`` (the server then answers as soon as one worker does)."""
    env = {**os.environ, "NACRE_SIM_DIR": str(sim_dir)}
    env.pop("NACRE_TEE", None)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    port = free_port()
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
        "warning",
        "--workers",
        str(workers),
    ]
    if database is not None:
        cmd += ["--database", database]
    verify: ssl.SSLContext | bool = True
    if tls is not None:
        cmd += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
        verify = ssl.create_default_context(cafile=str(tls[2]))
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    scheme = "https" if tls is not None else "http"
    server = ServeProcess(proc, f"{scheme}://127.0.0.1:{port}", data_dir, log)
    deadline = time.monotonic() + STARTUP_SECONDS
    try:
        with httpx.Client(timeout=2.0, verify=verify) as http:
            while True:
                if proc.poll() is not None:
                    raise AssertionError(
                        f"nacre serve exited with {proc.returncode}:\n{server.log_tail()}"
                    )
                try:
                    if http.get(f"{server.url}/healthz").status_code == 200:
                        return server
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"nacre serve did not start:\n{server.log_tail()}")
                time.sleep(0.05)
    except BaseException:
        server.stop()
        raise
