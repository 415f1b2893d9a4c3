"""The benchmark's lean KBS load generator (benchmarks/kbs_wire.py): a real release through an
in-process server on a loopback port, its error reports, and its small HTTP/1.1 client against
scripted servers (chunked answers refused, closed connections reopened, timeouts)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from nacre.tee.sim import SimBackend

# benchmarks/ is a directory of scripts, not a package: its modules import as top-level names.
sys.path.append(str(Path(__file__).resolve().parents[1] / "benchmarks"))

from kbs_wire import HttpConnection, KbsWireClient, WireError, selected_hash
from server_support import Env, make_env, served

RESOURCE = "bench/kbs/key"
SECRET = b"\x00wire benchmark secret\xff" * 2


def _policy(env: Env) -> str:
    mrenclave = env.platform.measure().mr_enclave.hex()
    return f"version: 1\nrules:\n  - name: mrenclave\n    expr: claims.mrenclave == '{mrenclave}'\n"


async def _handshakes(url: str, backend: SimBackend, expected: bytes, n: int) -> list[bytes]:
    client = KbsWireClient(url, backend, RESOURCE, expected, timeout=30.0)
    try:
        released = [await client.handshake() for _ in range(n)]
        assert client.connection.connects == 1  # the keep-alive connection served them all
        return released
    finally:
        await client.aclose()


def test_wire_handshake_releases_and_checks_the_secret(tmp_path: Path) -> None:
    with make_env("sqlite", tmp_path) as env, served(env.app) as url:
        env.put_secret(RESOURCE, SECRET, policy=_policy(env))
        backend = SimBackend(env.platform)

        assert asyncio.run(_handshakes(url, backend, SECRET, 2)) == [SECRET, SECRET]

        with pytest.raises(WireError, match="released bytes differ from the expected secret"):
            asyncio.run(_handshakes(url, backend, b"not the registered secret", 1))

        missing = KbsWireClient(url, backend, "bench/kbs/missing", SECRET)
        with pytest.raises(WireError, match=r"^resource: HTTP 404: .+ \[") as ei:
            asyncio.run(missing.handshake())
        assert "NOT_FOUND" in str(ei.value)


def test_selected_hash_follows_the_sdk_rules() -> None:
    assert selected_hash("") == "sha384"
    assert selected_hash({"selected-hash-algorithm": "SHA-512"}) == "sha512"
    assert selected_hash('{"selected-hash-algorithm": "sha256"}') == "sha256"
    with pytest.raises(WireError, match="not offered"):
        selected_hash({"selected-hash-algorithm": "md5"})


# -- the HTTP/1.1 client against scripted servers -----------------------------------------------

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def _scripted(handler: Handler, timeout: float = 2.0) -> AsyncIterator[HttpConnection]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    conn = HttpConnection("127.0.0.1", port, timeout=timeout)
    try:
        yield conn
    finally:
        await conn.close()
        server.close()
        await server.wait_closed()


def _answering(answer: bytes, *, close: bool = False) -> Handler:
    """A server answering ``answer`` to every request, closing the connection after each one
    when ``close`` (without saying so, as an idle timeout does)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(answer)
                await writer.drain()
                if close:
                    break
        except asyncio.IncompleteReadError:
            pass
        writer.close()

    return handle


def test_http_reads_content_length_answers_on_one_connection() -> None:
    async def run() -> None:
        async with _scripted(_answering(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")) as c:
            for _ in range(3):
                answer = await c.request("GET", "/x")
                assert (answer.status, answer.body) == (200, b"ok")
            assert c.connects == 1

    asyncio.run(run())


def test_http_reopens_a_connection_the_server_closed() -> None:
    async def run() -> None:
        answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        async with _scripted(_answering(answer, close=True)) as c:
            for _ in range(3):
                assert (await c.request("POST", "/x", body=b"{}")).body == b"ok"
                await asyncio.sleep(0.01)
            assert c.connects == 3

    asyncio.run(run())


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            "Transfer-Encoding",
        ),
        (b"HTTP/1.1 200 OK\r\n\r\nok", "no Content-Length"),
        (b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP/1.x status line"),
    ],
)
def test_http_refuses_unframed_answers(answer: bytes, message: str) -> None:
    async def run() -> None:
        async with _scripted(_answering(answer)) as c:
            with pytest.raises(WireError, match=message):
                await c.request("GET", "/x")

    asyncio.run(run())


def test_http_request_times_out() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers; returns when the client goes away
        writer.close()

    async def run() -> None:
        async with _scripted(silent, timeout=0.2) as c:
            with pytest.raises(WireError, match=r"no complete answer within 0\.2 s"):
                await c.request("GET", "/x")

    asyncio.run(run())
