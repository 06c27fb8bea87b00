"""The pinned OVSDB TLS stream towards a host that accepts TCP but never answers TLS.

A SIGSTOPped ovsdb-server is such a host: the kernel completes the TCP handshake, then nothing.
python-ovs waits for a connecting stream with POLLOUT, always ready on a connected socket, so
its IDL thread woke at once, over and over (50-60% of a core). ``PinnedSSLStream`` waits for
input while the handshake wants the server's bytes. This pushes a real stream through real
polls against a listener in this process and counts how often the poll loop wakes.
"""

from __future__ import annotations

import errno
import socket
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import ovs.poller
import ovs.stream
import pytest

from controller import trust
from controller.northbound import pki as P
from controller.southbound import tls

POLL_MS = 100
WATCH_S = 1.0


@pytest.fixture
def silent_listener() -> Iterator[tuple[socket.socket, int]]:
    """A TCP listener on 127.0.0.1 whose backlog completes handshakes; nobody ever writes."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    try:
        yield srv, srv.getsockname()[1]
    finally:
        srv.close()


@pytest.fixture
def client_tls(tmp_path: Path) -> Iterator[None]:
    now = datetime.now(timezone.utc)
    tls.configure(trust.client_tls(P.Pki.open(tmp_path / "pki", now), now))
    try:
        yield
    finally:
        tls.configure(None)


def wakeups(stream: ovs.stream.Stream, seconds: float) -> int:
    """How many times a poll loop that waits for ``stream`` to connect wakes in ``seconds``."""
    woke = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert stream.connect() == errno.EAGAIN  # still handshaking: the server never answers
        poller = ovs.poller.Poller()
        stream.connect_wait(poller)
        poller.timer_wait(POLL_MS)
        poller.block()
        woke += 1
    return woke


def test_a_handshake_waiting_for_a_silent_server_sleeps(
        silent_listener: tuple[socket.socket, int], client_tls: None) -> None:
    _srv, port = silent_listener
    err, stream = ovs.stream.Stream.open(tls.pin(f"ssl:127.0.0.1:{port}", "dc1-h1"))
    assert err == 0 and isinstance(stream, tls.PinnedSSLStream)
    try:
        # With only the timer to wake it, the loop runs about WATCH_S / POLL_MS = 10 times; a
        # POLLOUT wait on the connected socket made it run as fast as the CPU let it.
        assert wakeups(stream, WATCH_S) <= 2 * WATCH_S * 1000 / POLL_MS
    finally:
        stream.close()


def test_the_stream_still_wakes_when_the_server_speaks(
        silent_listener: tuple[socket.socket, int], client_tls: None) -> None:
    """Waiting for input is not waiting forever: bytes from the server wake the poll at once
    (here a plaintext reply, which the handshake then refuses as not TLS)."""
    srv, port = silent_listener
    err, stream = ovs.stream.Stream.open(tls.pin(f"ssl:127.0.0.1:{port}", "dc1-h1"))
    assert err == 0
    try:
        assert stream.connect() == errno.EAGAIN
        conn, _ = srv.accept()
        with conn:
            conn.sendall(b"HTTP/1.0 400 not tls\r\n\r\n")
            poller = ovs.poller.Poller()
            stream.connect_wait(poller)
            poller.timer_wait(5000)
            began = time.monotonic()
            poller.block()
            assert time.monotonic() - began < 2.5  # woken by the bytes, not by the 5 s timer
            assert stream.connect() not in (0, errno.EAGAIN)  # and the handshake fails cleanly
    finally:
        stream.close()
