"""A network partition between one client and its OVSDB servers, made in the test process.

``Relay`` accepts on a unix socket of its own and forwards every connection, byte for byte, to
a server's socket; ``cut()`` stops forwarding in both directions without closing anything, as
a partition does (the client's sockets stay up and silent: python-ovs sends no probes on unix
sockets, so the client cannot tell it from a quiet server), and ``heal()`` lets the held bytes
through. While cut, a new connection is accepted and closed at once (what a client sees
of a server it cannot reach after it reconnects). A client given relays for every Raft member's socket is cut from the whole cluster.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from pathlib import Path


class Relay:
    def __init__(self, listen: Path, target: Path) -> None:
        self.listen, self.target = Path(listen), Path(target)
        self._open = threading.Event()
        self._open.set()
        self._stop = threading.Event()
        self._socks: list[socket.socket] = []
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(self.listen))
        self._server.listen(16)
        threading.Thread(target=self._accept, daemon=True, name=f"relay:{listen}").start()

    @property
    def remote(self) -> str:
        return f"unix:{self.listen}"

    def cut(self) -> None:
        self._open.clear()

    def heal(self) -> None:
        self._open.set()

    def close(self) -> None:
        self._stop.set()
        self._open.set()
        for s in [self._server, *self._socks]:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if not self._open.is_set():  # cut: no new connection gets through either
                client.close()
                continue
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                upstream.connect(str(self.target))
            except OSError:  # the server is down: the client sees a closed connection
                client.close()
                continue
            self._socks += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                self._open.wait()  # cut: the bytes are held, nothing is closed
                if self._stop.is_set():
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
