"""One OpenFlow 1.4 session to a switch, dialled by the controller (unix: or tcp: target).

The switch listens (its br-int.mgmt unix socket, or a ``ptcp:`` controller target) and the
controller connects: a passive switch answers at once, whereas an active OVS 3.1 connection can
stall ~0.5 s before reading the HELLO. os-ken's own StreamClient only dials TCP and its
app-manager dispatcher has native-thread bugs, so this module uses os-ken for what it is good at
(encoding and parsing messages) and does the socket and thread handling itself: one reader
thread per switch, requests answered through per-xid waiters, errors raised to the caller.
"""

from __future__ import annotations

import itertools
import logging
import socket
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from os_ken.ofproto import ofproto_parser

from controller import ofp
from controller.diff import FlowDiff
from controller.flows import FlowId

LOG = logging.getLogger(__name__)
OFP_HEADER = struct.Struct("!BBHI")


class OpenFlowError(RuntimeError):
    """The switch rejected a request, or the session broke while waiting for an answer."""


def dial(target: str, timeout: float = 5.0) -> socket.socket:
    """Connect to ``unix:PATH`` or ``tcp:IP:PORT``."""
    kind, _, rest = target.partition(":")
    if kind == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(rest)
    elif kind == "tcp":
        host, _, port = rest.rpartition(":")
        sock = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    else:
        raise ValueError(f"OpenFlow target {target!r}: expected unix:PATH or tcp:IP:PORT")
    sock.settimeout(None)
    return sock


@dataclass
class _Waiter:
    event: threading.Event = field(default_factory=threading.Event)
    replies: list[Any] = field(default_factory=list)
    error: str | None = None


class OfSession:
    """A connected, handshaken OpenFlow session; ``on_packet_in`` runs on the reader thread."""

    def __init__(self, target: str, on_packet_in: Callable[[Any], None],
                 on_close: Callable[[], None], timeout: float = 5.0) -> None:
        self.target = target
        self.dp = ofp.protocol()
        self.timeout = timeout
        self._on_packet_in = on_packet_in
        self._on_close = on_close
        self._xids = itertools.count(1)
        self._waiters: dict[int, _Waiter] = {}
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._closed = threading.Event()
        self._sock = dial(target, timeout)
        self._reader = threading.Thread(target=self._read_loop, name=f"of:{target}", daemon=True)
        self._handshake()

    # -- requests -----------------------------------------------------------------------------
    def _send(self, msg: Any) -> int:
        if msg.xid is None:
            msg.set_xid(next(self._xids))
        msg.serialize()
        with self._send_lock:
            self._sock.sendall(msg.buf)
        xid: int = msg.xid
        return xid

    def _expect(self, xid: int) -> _Waiter:
        w = _Waiter()
        with self._lock:
            self._waiters[xid] = w
        return w

    def request(self, msg: Any, what: str) -> list[Any]:
        """Send ``msg`` and wait for its (possibly multipart) reply."""
        msg.set_xid(next(self._xids))
        w = self._expect(msg.xid)
        self._send(msg)
        if not w.event.wait(self.timeout):
            raise OpenFlowError(f"{self.target}: no reply to {what} within {self.timeout}s")
        if w.error:
            raise OpenFlowError(f"{self.target}: {what} failed: {w.error}")
        return w.replies

    def _handshake(self) -> None:
        self._send(ofp.PARSER.OFPHello(self.dp))
        head = self._recv_exact(OFP_HEADER.size)
        version, msg_type, length, _ = OFP_HEADER.unpack(head)
        self._recv_exact(length - OFP_HEADER.size)
        if msg_type != ofp.OFP.OFPT_HELLO:
            raise OpenFlowError(f"{self.target}: expected HELLO, got type {msg_type}")
        if version < ofp.OFP.OFP_VERSION:
            raise OpenFlowError(
                f"{self.target}: switch speaks OpenFlow version {version}; veil needs 1.4 "
                "(set Bridge protocols to include OpenFlow14)")
        self._reader.start()
        # Packet-ins (a migrated guest's RARP) need a non-zero miss_send_len on this session.
        self._send(ofp.PARSER.OFPSetConfig(self.dp, ofp.OFP.OFPC_FRAG_NORMAL,
                                           ofp.OFP.OFPCML_NO_BUFFER))
        self.request(ofp.PARSER.OFPBarrierRequest(self.dp), "barrier after hello")

    def installed(self) -> frozenset[FlowId]:
        """veil's flows on the switch, by (table, cookie)."""
        replies = self.request(ofp.owned_flow_stats_request(self.dp), "flow dump")
        return ofp.flow_ids(s for r in replies for s in r.body)

    def apply(self, d: FlowDiff) -> None:
        """Send ``d`` as one atomic, ordered bundle; raises OpenFlowError if the switch refuses."""
        msgs = ofp.diff_messages(self.dp, d)
        if not msgs:
            return
        self.send_bundle(msgs)

    def send_bundle(self, msgs: Sequence[Any]) -> None:
        bundle_id = next(self._xids) & 0xFFFFFFFF
        flags = ofp.OFP.OFPBF_ATOMIC | ofp.OFP.OFPBF_ORDERED
        ctrl = ofp.PARSER.OFPBundleCtrlMsg
        self.request(ctrl(self.dp, bundle_id, ofp.OFP.OFPBCT_OPEN_REQUEST, flags, []),
                     "bundle open")
        adds = []
        for m in msgs:
            add = ofp.PARSER.OFPBundleAddMsg(self.dp, bundle_id, flags, m, [])
            add.set_xid(next(self._xids))
            adds.append((self._expect(add.xid), add))
            self._send(add)
        try:
            # A refused add leaves the bundle open without it: learn of every refusal (the
            # barrier answers after all adds were processed) before deciding to commit.
            self.request(ofp.PARSER.OFPBarrierRequest(self.dp), "barrier after bundle adds")
            with self._lock:
                errors = [w.error for w, _ in adds if w.error]
            if errors:
                self.request(ctrl(self.dp, bundle_id, ofp.OFP.OFPBCT_DISCARD_REQUEST, flags, []),
                             "bundle discard")
                raise OpenFlowError(f"{self.target}: bundle refused, nothing applied: "
                                    f"{errors[0]} ({len(errors)} of {len(msgs)} flow mods)")
            self.request(ctrl(self.dp, bundle_id, ofp.OFP.OFPBCT_COMMIT_REQUEST, flags, []),
                         f"bundle commit of {len(msgs)} flow mods")
        finally:
            with self._lock:
                for _, add in adds:
                    self._waiters.pop(add.xid, None)

    def send_packet_out(self, in_port: int, data: bytes, out_port: int) -> None:
        msg = ofp.PARSER.OFPPacketOut(
            self.dp, buffer_id=ofp.OFP.OFP_NO_BUFFER, in_port=in_port,
            actions=[ofp.PARSER.OFPActionOutput(out_port)], data=data)
        self._send(msg)

    # -- reader ------------------------------------------------------------------------------
    def _recv_exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self._sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError(f"{self.target}: connection closed")
            buf += chunk
        return buf

    def _read_loop(self) -> None:
        try:
            while not self._closed.is_set():
                head = self._recv_exact(OFP_HEADER.size)
                version, msg_type, length, xid = OFP_HEADER.unpack(head)
                buf = head + self._recv_exact(length - OFP_HEADER.size)
                msg = ofproto_parser.msg(self.dp, version, msg_type, length, xid, buf)
                self._dispatch(msg)
        except (OSError, ConnectionError) as exc:
            if not self._closed.is_set():
                LOG.warning("OpenFlow session %s lost: %s", self.target, exc)
        finally:
            self._closed.set()
            with self._lock:
                for w in self._waiters.values():
                    w.error = w.error or "session closed"
                    w.event.set()
            self._on_close()

    def _dispatch(self, msg: Any) -> None:
        o = ofp.OFP
        if msg.msg_type == o.OFPT_ECHO_REQUEST:
            self._send(ofp.PARSER.OFPEchoReply(self.dp, data=msg.data))
            return
        if msg.msg_type == o.OFPT_PACKET_IN:
            self._on_packet_in(msg)
            return
        with self._lock:
            w = self._waiters.get(msg.xid)
        if w is None:
            if msg.msg_type == o.OFPT_ERROR:
                LOG.error("OpenFlow error from %s: %s", self.target, msg)
            return
        if msg.msg_type == o.OFPT_ERROR:
            w.error = f"type={msg.type} code={msg.code}"
            w.event.set()
            return
        w.replies.append(msg)
        more = getattr(msg, "flags", 0) & o.OFPMPF_REPLY_MORE if msg.msg_type == (
            o.OFPT_MULTIPART_REPLY) else 0
        if not more:
            w.event.set()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def close(self) -> None:
        self._closed.set()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
