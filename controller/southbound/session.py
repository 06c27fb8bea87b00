"""One OpenFlow 1.4 session to a switch, dialled by the controller (unix:, tcp: or TLS target).

The switch listens (its br-int.mgmt unix socket, or a ``ptcp:`` controller target) and the
controller connects: a passive switch answers at once, whereas an active OVS 3.1 connection can
stall ~0.5 s before reading the HELLO. os-ken's own StreamClient only dials TCP and its
app-manager dispatcher has native-thread bugs, so this module uses os-ken for what it is good at
(parsing messages, encoding the rare ones) and does the socket and thread handling itself: one
reader thread per switch, requests answered through per-xid waiters, errors raised to the
caller. Flow-mods are encoded by ``ofwire`` and a whole bundle goes out in one write.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from os_ken.ofproto import ofproto_parser

from controller.southbound import ofp
from controller.southbound import ofwire
from controller.southbound import tls
from controller.pipeline.diff import FlowDiff
from controller.pipeline.fields import OFPC_FRAG_NX_MATCH
from controller.pipeline.flows import FlowId

LOG = logging.getLogger(__name__)
OFP_HEADER = struct.Struct("!BBHI")
CHUNK: Final = 512  # bundle adds per socket write (~60 KB): encoding overlaps the switch's work
T = TypeVar("T")


class OpenFlowError(RuntimeError):
    """The switch rejected a request, or the session broke while waiting for an answer."""


class RoleRefused(OpenFlowError):
    """The switch refused a role request: ``stale`` when it has seen a newer generation id
    (another controller took the switch over since; controller/ownership.py)."""

    def __init__(self, message: str, stale: bool) -> None:
        super().__init__(message)
        self.stale = stale


def dial(target: str, timeout: float = 5.0) -> tls.Conn:
    """Connect to ``unix:PATH``, ``tcp:IP:PORT`` or ``vssl:SYSTEM_ID@IP:PORT`` (TLS, the peer's
    certificate must name SYSTEM_ID: ``tls.pin`` makes these from a host's ``ssl:`` remote)."""
    kind, _, rest = target.partition(":")
    if kind == tls.PINNED:
        cn, address = tls.split_pinned(target)
        return tls.dial_tls(address, cn, timeout)
    if kind == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(rest)
    elif kind == "tcp":
        host, _, port = rest.rpartition(":")
        sock = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    else:
        raise ValueError(f"OpenFlow target {target!r}: expected unix:PATH, tcp:IP:PORT or "
                         f"{tls.PINNED}:SYSTEM_ID@IP:PORT")
    sock.settimeout(None)
    return sock


@dataclass
class _Waiter:
    event: threading.Event = field(default_factory=threading.Event)
    replies: list[Any] = field(default_factory=list)
    error: str | None = None
    code: tuple[int, int] | None = None  # an OFPT_ERROR's (type, code)
    # reads a multipart reply's raw bytes instead of os-ken (what os-ken would spend most on)
    parse: Callable[[bytes], Any] | None = None


@dataclass
class _Run:
    """Errors for a run of consecutive xids (a bundle's adds): one object, not one waiter per
    message; a successful add has no reply at all."""

    first: int
    count: int
    errors: list[str] = field(default_factory=list)

    def __contains__(self, xid: int) -> bool:
        return (xid - self.first) & ofwire.XID_MASK < self.count


class OfSession:
    """A connected, handshaken OpenFlow session; ``on_packet_in`` runs on the reader thread."""

    def __init__(self, target: str, on_packet_in: Callable[[Any], None],
                 on_close: Callable[[], None], timeout: float = 5.0,
                 on_flow_removed: Callable[[Any], None] | None = None) -> None:
        self.target = target
        self.dp = ofp.protocol()
        self.timeout = timeout
        self._on_packet_in = on_packet_in
        self._on_flow_removed = on_flow_removed
        self._on_close = on_close
        self._next_xid = 1
        self._waiters: dict[int, _Waiter] = {}
        self._runs: list[_Run] = []
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._closed = threading.Event()
        self.generation: int | None = None  # the role generation this session is master with
        self._sock = dial(target, timeout)
        self._reader = threading.Thread(target=self._read_loop, name=f"of:{target}", daemon=True)
        self._handshake()

    # -- requests -----------------------------------------------------------------------------
    def _take_xids(self, n: int) -> int:
        """The first of ``n`` consecutive xids (modulo 2**32) nobody else gets."""
        with self._lock:
            first = self._next_xid
            self._next_xid = (first + n) & ofwire.XID_MASK
        return first

    def _send_bytes(self, data: bytes) -> None:
        with self._send_lock:
            self._sock.sendall(data)

    def _send(self, msg: Any) -> int:
        if msg.xid is None:
            msg.set_xid(self._take_xids(1))
        msg.serialize()
        self._send_bytes(msg.buf)
        xid: int = msg.xid
        return xid

    def _expect(self, xid: int, parse: Callable[[bytes], Any] | None = None) -> _Waiter:
        w = _Waiter(parse=parse)
        with self._lock:
            self._waiters[xid] = w
        return w

    def _wait(self, xid: int, w: _Waiter, what: str) -> list[Any]:
        """The replies to ``xid``; raises if the switch refused it or never answered."""
        try:
            if not w.event.wait(self.timeout):
                raise OpenFlowError(f"{self.target}: no reply to {what} within {self.timeout}s")
        finally:
            with self._lock:
                self._waiters.pop(xid, None)
        if w.error:
            raise OpenFlowError(f"{self.target}: {what} failed: {w.error}")
        return w.replies

    def request(self, msg: Any, what: str,
                parse: Callable[[bytes], Any] | None = None) -> list[Any]:
        """Send ``msg`` and wait for its (possibly multipart) reply: os-ken messages, or what
        ``parse`` makes of each multipart reply's bytes."""
        msg.set_xid(self._take_xids(1))
        w = self._expect(msg.xid, parse)
        self._send(msg)
        return self._wait(msg.xid, w, what)

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
        # Fragments: nx-match handling (the switch's, kept until ovs-vswitchd restarts, which
        # ends this session: every connect sets it again), so first fragments carry their L4
        # header for port security's guards (compute.PORT_GUARD_FLOWS) and ip_frag is
        # matched; OVS's default ("normal") reads every fragment's ports/types as 0.
        self._send(ofp.PARSER.OFPSetConfig(self.dp, OFPC_FRAG_NX_MATCH, ofp.OFP.OFPCML_NO_BUFFER))
        self.request(ofp.PARSER.OFPBarrierRequest(self.dp), "barrier after hello")

    def claim_role(self, generation: int, master: bool = True) -> None:
        """Become the switch's MASTER (or SLAVE) controller with role ``generation`` id: OVS
        then demotes any other master to slave, and refuses a slave's flow-mods (OFPBRC_IS_SLAVE)
        and a request older than the newest generation it has seen (``RoleRefused``, stale)."""
        o = ofp.OFP
        msg = ofp.PARSER.OFPRoleRequest(self.dp, o.OFPCR_ROLE_MASTER if master else
                                        o.OFPCR_ROLE_SLAVE, generation)
        msg.set_xid(self._take_xids(1))
        w = self._expect(msg.xid)
        self._send(msg)
        try:
            self._wait(msg.xid, w, f"role request (generation {generation})")
        except OpenFlowError as exc:
            if w.code is None or w.code[0] != o.OFPET_ROLE_REQUEST_FAILED:
                raise
            raise RoleRefused(str(exc), w.code[1] == o.OFPRRFC_STALE) from None
        self.generation = generation if master else None

    def installed(self) -> frozenset[FlowId]:
        """veil's flows on the switch, by (table, cookie)."""
        replies = self.request(ofp.owned_flow_stats_request(self.dp), "flow dump",
                               ofwire.flow_stats_ids)
        return frozenset(i for ids in replies for i in ids)

    def send_raw(self, count: int, encode: Callable[[int], bytes]) -> None:
        """Send what ``encode(first_xid)`` makes of ``count`` messages, unacknowledged (a
        reactive set-up: a refusal is logged by the reader, its entry is soft state)."""
        self._send_bytes(encode(self._take_xids(count)))

    def checked(self, msgs: Sequence[Any], what: str) -> list[str | None]:
        """Send os-ken messages that answer only when refused (meter-mods), then a barrier;
        each one's error (``type=T code=C``) or None."""
        waiters = []
        for msg in msgs:
            msg.set_xid(self._take_xids(1))
            waiters.append((msg.xid, self._expect(msg.xid)))
        barrier = ofp.PARSER.OFPBarrierRequest(self.dp)
        barrier.set_xid(self._take_xids(1))
        w = self._expect(barrier.xid)
        for msg in msgs:
            self._send(msg)
        self._send(barrier)
        try:
            self._wait(barrier.xid, w, f"barrier after {what}")
        finally:
            with self._lock:
                for xid, _ in waiters:
                    self._waiters.pop(xid, None)
        return [x.error for _, x in waiters]

    def reactive_flows(self, cookie: int, mask: int) -> list[Any]:
        """The switch's flows under cookie ``cookie``/``mask``, parsed by os-ken (rare: a new
        session reads its reactive entries back)."""
        req = ofp.PARSER.OFPFlowStatsRequest(
            self.dp, 0, ofp.OFP.OFPTT_ALL, ofp.OFP.OFPP_ANY, ofp.OFP.OFPG_ANY, cookie, mask,
            ofp.PARSER.OFPMatch())
        return [stat for reply in self.request(req, "reactive flow dump") for stat in reply.body]

    def apply(self, d: FlowDiff) -> None:
        """Send ``d`` as one atomic, ordered bundle; raises OpenFlowError if the switch refuses."""
        items = ofp.diff_items(d)
        if items:
            self._bundle(items, ofp.item_wire)

    def send_bundle(self, msgs: Sequence[Any]) -> None:
        """os-ken messages as one atomic, ordered bundle."""
        self._bundle(msgs, ofp.wire)

    def _bundle(self, items: Sequence[T], encode: Callable[[T], tuple[int, bytes]]) -> None:
        """Open, the adds and a barrier are streamed in writes of CHUNK messages each, encoded
        while the switch decodes the previous chunk. The barrier's answer means every add was
        processed: the bundle is committed only if none was refused (a refused add would leave
        the bundle open without it), and discarded otherwise."""
        n = len(items)
        flags = ofp.OFP.OFPBF_ATOMIC | ofp.OFP.OFPBF_ORDERED
        first = self._take_xids(n + 2)
        open_xid, barrier_xid = first, (first + n + 1) & ofwire.XID_MASK
        bundle_id = first  # unique among this session's open bundles
        adds = _Run((first + 1) & ofwire.XID_MASK, n)
        opened, barrier = self._expect(open_xid), self._expect(barrier_xid)
        with self._lock:
            self._runs.append(adds)
        try:
            self._send_bytes(
                ofwire.bundle_ctrl(open_xid, bundle_id, ofp.OFP.OFPBCT_OPEN_REQUEST, flags))
            try:
                for start in range(0, n, CHUNK):
                    self._send_bytes(b"".join([
                        ofwire.bundle_add((adds.first + i) & ofwire.XID_MASK, bundle_id, flags,
                                          *encode(items[i]))
                        for i in range(start, min(start + CHUNK, n))]))
            except BaseException:  # e.g. a flow that cannot be encoded: drop the half bundle
                with contextlib.suppress(OSError):  # (unless the socket itself broke)
                    self._send_bytes(ofwire.bundle_ctrl(self._take_xids(1), bundle_id,
                                                        ofp.OFP.OFPBCT_DISCARD_REQUEST, flags))
                raise
            self._send_bytes(ofwire.barrier_request(barrier_xid))
            self._wait(barrier_xid, barrier, "barrier after bundle adds")
            with self._lock:  # the open was answered before the barrier
                refused = list(adds.errors)
                errors = ([f"bundle open: {opened.error}"] if opened.error else []) + refused
        finally:
            with self._lock:
                self._runs.remove(adds)
                self._waiters.pop(open_xid, None)
                self._waiters.pop(barrier_xid, None)
        ctrl = ofp.PARSER.OFPBundleCtrlMsg
        if errors:
            # (after a refused open the adds may have created the bundle implicitly, or not)
            with contextlib.suppress(OpenFlowError):
                self.request(ctrl(self.dp, bundle_id, ofp.OFP.OFPBCT_DISCARD_REQUEST, flags, []),
                             "bundle discard")
            raise OpenFlowError(f"{self.target}: bundle refused, nothing applied: "
                                f"{errors[0]} ({len(refused)} of {n} messages refused)")
        self.request(ctrl(self.dp, bundle_id, ofp.OFP.OFPBCT_COMMIT_REQUEST, flags, []),
                     f"bundle commit of {n} flow mods")

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
                if msg_type == ofwire.OFPT_MULTIPART_REPLY and self._parsed_reply(xid, buf):
                    continue
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

    def _parsed_reply(self, xid: int, buf: bytes) -> bool:
        """Hand a multipart reply to its waiter's own parser, if it has one."""
        with self._lock:
            w = self._waiters.get(xid)
        if w is None or w.parse is None:
            return False
        try:
            w.replies.append(w.parse(buf))
        except ValueError as exc:  # the switch sent something we cannot read: say what
            w.error = f"unreadable reply: {exc}"
            w.event.set()
            return True
        if not ofwire.multipart_more(buf):
            w.event.set()
        return True

    def _dispatch(self, msg: Any) -> None:
        o = ofp.OFP
        if msg.msg_type == o.OFPT_ECHO_REQUEST:
            self._send(ofp.PARSER.OFPEchoReply(self.dp, data=msg.data))
            return
        if msg.msg_type == o.OFPT_PACKET_IN:
            self._on_packet_in(msg)
            return
        if msg.msg_type == o.OFPT_FLOW_REMOVED:
            if self._on_flow_removed is not None:
                self._on_flow_removed(msg)
            return
        with self._lock:
            w = self._waiters.get(msg.xid)
            if w is None and msg.msg_type == o.OFPT_ERROR:
                run = next((r for r in self._runs if msg.xid in r), None)
                if run is not None:
                    run.errors.append(f"type={msg.type} code={msg.code}")
                    return
        if w is None:
            if msg.msg_type == o.OFPT_ERROR:
                LOG.error("OpenFlow error from %s: %s", self.target, msg)
            return
        if msg.msg_type == o.OFPT_ERROR:
            w.error, w.code = f"type={msg.type} code={msg.code}", (msg.type, msg.code)
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
