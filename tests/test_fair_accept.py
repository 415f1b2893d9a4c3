"""Connections spread evenly over workers sharing a listening socket
(:mod:`nacre.server.fair_accept`), in one process: two acceptors on one event loop stand for two
workers, each on its own descriptor of the same listening socket."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from nacre.errors import UsageError
from nacre.server.fair_accept import (
    DEFER_SECONDS,
    STALE_SECONDS,
    ConnectionShare,
    FairAcceptor,
    create_share,
)


class _Counted(asyncio.Protocol):
    def __init__(self, live: set[_Counted]) -> None:
        self.live = live

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.live.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.live.discard(self)


def _listening(sock: socket.socket | None = None, backlog: int = 64) -> socket.socket:
    """``sock`` (a new TCP socket by default) listening on a free loopback port."""
    listener = sock if sock is not None else socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(backlog)
    return listener


def _lone(listener: socket.socket) -> tuple[FairAcceptor, set[_Counted]]:
    """An acceptor with no share (a single worker) and the connections it holds."""
    live: set[_Counted] = set()
    acceptor = FairAcceptor(listener, lambda: _Counted(live), held=lambda: len(live), share=None)
    return acceptor, live


async def _until(check: Callable[[], bool], seconds: float = 3.0) -> None:
    deadline = time.monotonic() + seconds
    while not check() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


def test_share_slots_and_staleness(tmp_path: Path) -> None:
    path = tmp_path / "share"
    create_share(path, 3)
    assert path.stat().st_size > 0
    assert path.stat().st_mode & 0o777 == 0o600
    a, b, c = (ConnectionShare(path, i) for i in range(3))
    assert a.workers == 3
    now = time.monotonic()
    assert a.least_of_others(now) is None  # nobody published yet (a zero time is stale)
    b.publish(5, now)
    c.publish(2, now - STALE_SECONDS - 0.5)  # stale: left out
    assert a.least_of_others(now) == 5
    c.publish(2, now)
    assert a.least_of_others(now) == 2
    a.publish(0, now)
    assert b.least_of_others(now) == 0
    with pytest.raises(UsageError, match="no slot") as refused:
        ConnectionShare(path, 3)
    assert (refused.value.field, refused.value.expected, refused.value.actual) == (
        "worker index",
        "0 to 2",
        "3",
    )
    for s in (a, b, c):
        s.close()


async def _serve_two(
    tmp_path: Path, clients: int, *, second_alive: bool = True
) -> tuple[int, int, float, FairAcceptor]:
    """``clients`` connections at once to a listener served by two acceptors (or by one whose
    peer publishes a low count but never accepts); how many each accepted."""
    path = tmp_path / "share"
    create_share(path, 2)
    listener = _listening(backlog=128)
    port = listener.getsockname()[1]
    lives: list[set[_Counted]] = [set(), set()]
    acceptors = []
    for i in range(2 if second_alive else 1):
        sock = listener if i == 0 else listener.dup()
        live = lives[i]
        acceptors.append(
            FairAcceptor(
                sock,
                lambda live=live: _Counted(live),  # type: ignore[misc]
                held=lambda live=live: len(live),  # type: ignore[misc]
                share=ConnectionShare(path, i),
            )
        )
    stuck = None
    if not second_alive:  # a live peer that holds nothing and accepts nothing
        stuck = ConnectionShare(path, 1)
        stuck.publish(0, time.monotonic())
    for a in acceptors:
        a.start()
    start = time.monotonic()
    opened = [asyncio.open_connection("127.0.0.1", port) for _ in range(clients)]
    streams = await asyncio.gather(*opened)
    deadline = time.monotonic() + 10
    while sum(len(s) for s in lives) < clients and time.monotonic() < deadline:
        if stuck is not None:
            stuck.publish(0, time.monotonic())
        await asyncio.sleep(0.001)
    elapsed = time.monotonic() - start
    counts = (len(lives[0]), len(lives[1]))
    for a in acceptors:
        a.stop()
    for _reader, writer in streams:
        writer.close()
    listener.close()
    return counts[0], counts[1], elapsed, acceptors[0]


def test_a_burst_is_split_evenly(tmp_path: Path) -> None:
    a, b, _elapsed, first = asyncio.run(_serve_two(tmp_path, 40))
    assert a + b == 40
    assert abs(a - b) <= 2, (a, b)
    assert first.accepted == a


def test_a_peer_that_never_accepts_only_delays_connections(tmp_path: Path) -> None:
    a, b, elapsed, first = asyncio.run(_serve_two(tmp_path, 10, second_alive=False))
    assert (a, b) == (10, 0)  # every connection served, by the one acceptor that accepts
    assert first.deferred >= 5  # it left most of them to the peer first, for a moment each
    assert elapsed < 10 * DEFER_SECONDS + 2.0


def test_without_a_share_everything_is_accepted_at_once(tmp_path: Path) -> None:
    async def run() -> tuple[int, int]:
        listener = _listening()
        acceptor, live = _lone(listener)
        acceptor.start()
        port = listener.getsockname()[1]
        streams = await asyncio.gather(
            *(asyncio.open_connection("127.0.0.1", port) for _ in range(20))
        )
        await _until(lambda: len(live) == 20)
        acceptor.stop()
        for _r, w in streams:
            w.close()
        listener.close()
        return len(live), acceptor.deferred

    assert asyncio.run(run()) == (20, 0)


def test_a_connection_that_fails_to_start_is_closed_and_accepting_goes_on(
    tmp_path: Path,
) -> None:
    async def run() -> tuple[bytes, int]:
        listener = _listening(backlog=8)
        live: set[_Counted] = set()
        calls = 0

        def factory() -> asyncio.Protocol:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("the first connection cannot be served")
            return _Counted(live)

        acceptor = FairAcceptor(listener, factory, held=lambda: len(live), share=None)
        acceptor.start()
        port = listener.getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        closed = await asyncio.wait_for(reader.read(), timeout=5)  # EOF: the server closed it
        _r2, w2 = await asyncio.open_connection("127.0.0.1", port)
        await _until(lambda: bool(live))
        acceptor.stop()
        writer.close()
        w2.close()
        listener.close()
        return closed, len(live)

    assert asyncio.run(run()) == (b"", 1)


def test_accept_errors_pause_accepting_instead_of_spinning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from nacre.server import fair_accept

    monkeypatch.setattr(fair_accept, "PAUSE_SECONDS", 0.05)

    class _Exhausted(socket.socket):
        failures = 0

        def accept(self) -> tuple[socket.socket, object]:
            if _Exhausted.failures < 3:
                _Exhausted.failures += 1
                raise OSError(errno.EMFILE, "Too many open files")
            return super().accept()

    async def run() -> tuple[int, int]:
        listener = _listening(_Exhausted(), backlog=8)
        acceptor, live = _lone(listener)
        acceptor.start()
        _r, w = await asyncio.open_connection("127.0.0.1", listener.getsockname()[1])
        await _until(lambda: bool(live))
        acceptor.stop()
        w.close()
        listener.close()
        return len(live), _Exhausted.failures

    assert asyncio.run(run()) == (1, 3)  # three failed tries, a pause after each, then served
