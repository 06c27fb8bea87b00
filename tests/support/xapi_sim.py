"""A small xapi for tests: the real XML-RPC wire protocol XenAPI.Session speaks, over HTTP on a
Unix socket (what ``XenAPI.xapi_local()`` uses on dom0), with an in-memory database.

Implemented: session.login_with_password / logout (SESSION_INVALID for unknown sessions, so
XenAPI.Session's transparent re-login path is exercised), ``<class>.get_record``,
``get_by_uuid``, ``get_all``, ``get_all_records``, ``get_all_records_where`` (``field "X"="Y"``
conditions), ``<class>.get_<field>``, ``add_to_other_config`` / ``remove_from_other_config`` and
``event.from`` (wire names ``event.from`` and ``event_from``) with generation tokens, long-polling up to its timeout. Records carry xapi's field
names; int fields go over the wire as strings, as xapi sends them.

Test-side operations (``add_host``, ``add_network``, ``add_vm``, ``start_vm``, ``plug_vif``,
``shutdown_vm``, ``migrate_vm`` ...) change the database the way xapi does and raise events.
``stop()`` / ``start()`` simulate an xapi restart: open connections are cut, sessions are lost,
the database (and its event generation) survives as xapi's does.
"""

from __future__ import annotations

import re
import socket
import socketserver
import threading
import uuid as uuidlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from xmlrpc.server import SimpleXMLRPCDispatcher, SimpleXMLRPCRequestHandler

NULL_REF = "OpaqueRef:NULL"
CLASSES = {"vm": "VM", "vif": "VIF", "network": "network", "host": "host"}
_WHERE = re.compile(r'^field\s+"(\w+)"\s*=\s*"([^"]*)"$')


class XapiError(Exception):
    def __init__(self, *description: str) -> None:
        super().__init__(*description)
        self.description = list(description)


def _new_ref() -> str:
    return f"OpaqueRef:{uuidlib.uuid4()}"


class SimDB:
    """Objects by class and ref, an event log, and the sessions of the running 'xapi'."""

    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.tables: dict[str, dict[str, dict[str, Any]]] = {c: {} for c in CLASSES}
        self.generation = 0
        self.created: dict[tuple[str, str], int] = {}
        self.modified: dict[tuple[str, str], int] = {}
        self.deleted: dict[tuple[str, str], int] = {}
        self.sessions: set[str] = set()
        self.calls: list[str] = []

    # -- mutations (hold the lock) -------------------------------------------------------------
    # xapi keeps, per object, the generation it was created and last modified at (and, for a
    # destroyed one, when it went); event.from reports objects, not a log of changes.
    def _emit(self, cls: str, op: str, ref: str) -> None:
        self.generation += 1
        key = (cls, ref)
        if op == "add":
            self.created[key] = self.modified[key] = self.generation
        elif op == "mod":
            self.modified[key] = self.generation
        else:
            self.created.pop(key, None)
            self.modified.pop(key, None)
            self.deleted[key] = self.generation
        self.lock.notify_all()

    def create(self, cls: str, record: dict[str, Any]) -> str:
        with self.lock:
            ref = _new_ref()
            self.tables[cls][ref] = record
            self._emit(cls, "add", ref)
            return ref

    def update(self, cls: str, ref: str, **fields: Any) -> None:
        with self.lock:
            self.tables[cls][ref].update(fields)
            self._emit(cls, "mod", ref)

    def destroy(self, cls: str, ref: str) -> None:
        with self.lock:
            del self.tables[cls][ref]
            self._emit(cls, "del", ref)

    def get_ref(self, cls: str, uuid: str) -> str:
        with self.lock:
            return next(r for r, rec in self.tables[cls].items() if rec["uuid"] == uuid)

    # -- API ---------------------------------------------------------------------------------
    def call(self, method: str, params: tuple[Any, ...]) -> Any:
        self.calls.append(method)
        if method == "session.login_with_password":
            ref = _new_ref()
            with self.lock:
                self.sessions.add(ref)
            return ref
        if not params or params[0] not in self.sessions:
            raise XapiError("SESSION_INVALID", str(params[0] if params else ""))
        args = params[1:]
        if method == "session.logout":
            with self.lock:
                self.sessions.discard(params[0])
            return ""
        if method in ("event.from", "event_from"):  # Python clients send event_from ('from' is a keyword)
            return self.event_from(list(args[0]), str(args[1]), float(args[2]), session=str(params[0]))
        cls_name, _, op = method.partition(".")
        cls = {v: k for k, v in CLASSES.items()}.get(cls_name)
        if cls is None:
            raise XapiError("MESSAGE_METHOD_UNKNOWN", method)
        return self.class_call(cls, op, args)

    def class_call(self, cls: str, op: str, args: tuple[Any, ...]) -> Any:
        with self.lock:
            table = self.tables[cls]
            if op == "get_all":
                return list(table)
            if op == "get_all_records":
                return {r: dict(rec) for r, rec in table.items()}
            if op == "get_all_records_where":
                m = _WHERE.match(str(args[0]))
                if not m:
                    raise XapiError("INTERNAL_ERROR", f"unsupported expression {args[0]}")
                key, value = m.groups()
                return {r: dict(rec) for r, rec in table.items() if str(rec.get(key)) == value}
            if op == "get_by_uuid":
                for r, rec in table.items():
                    if rec["uuid"] == args[0]:
                        return r
                raise XapiError("UUID_INVALID", CLASSES[cls], str(args[0]))
            ref = str(args[0])
            if ref not in table:
                raise XapiError("HANDLE_INVALID", CLASSES[cls], ref)
            if op == "get_record":
                return dict(table[ref])
            if op.startswith("get_"):
                return table[ref][op[4:]]
        if op == "add_to_other_config":
            oc = dict(self.tables[cls][ref]["other_config"])
            if args[1] in oc:
                raise XapiError("MAP_DUPLICATE_KEY", CLASSES[cls], "other_config", ref, str(args[1]))
            oc[str(args[1])] = str(args[2])
            self.update(cls, ref, other_config=oc)
            return ""
        if op == "remove_from_other_config":
            oc = dict(self.tables[cls][ref]["other_config"])
            oc.pop(str(args[1]), None)
            self.update(cls, ref, other_config=oc)
            return ""
        raise XapiError("MESSAGE_METHOD_UNKNOWN", f"{CLASSES[cls]}.{op}")

    def expire_sessions(self) -> None:
        """xapi drops every session (expiry, a pool change) while its socket stays up: each
        call of one, a blocked event.from too, gets SESSION_INVALID."""
        with self.lock:
            self.sessions.clear()
            self.lock.notify_all()

    def event_from(self, classes: list[str], token: str, timeout: float, session: str = "") -> dict[str, Any]:
        """xapi's event.from: every object of ``classes`` that changed since ``token``, ONCE,
        with its record as it is now; creates, then mods, then deletes (a del has no snapshot).
        Token "" is everything as ``add``. Tokens are opaque strings; a malformed one is
        EVENT_FROM_TOKEN_PARSE_FAILURE. Blocks up to ``timeout`` while nothing changed."""
        wanted = {c.lower() for c in classes}
        match: Callable[[str], bool] = (lambda c: True) if "*" in wanted else (lambda c: c in wanted)
        with self.lock:
            if token == "":
                events = [self._event(c, "add", r, self.created.get((c, r), 0)) for c, table in self.tables.items()
                          if match(c) for r in table]
                return self._answer(events)
            since = parse_token(token)
            self.lock.wait_for(
                lambda: bool(self._changes(since, match)) or self.closing
                or bool(session and session not in self.sessions), timeout
            )
            if self.closing:
                raise ConnectionAbortedError("xapi is shutting down")
            if session and session not in self.sessions:
                raise XapiError("SESSION_INVALID", session)
            return self._answer(self._changes(since, match))

    def _changes(self, since: int, match: Callable[[str], bool]) -> list[dict[str, Any]]:
        adds = sorted((g, k) for k, g in self.created.items() if g > since and match(k[0]))
        mods = sorted((g, k) for k, g in self.modified.items()
                      if g > since and self.created.get(k, 0) <= since and match(k[0]))
        dels = sorted((g, k) for k, g in self.deleted.items() if g > since and match(k[0]))
        return ([self._event(c, "add", r, g) for g, (c, r) in adds] + [self._event(c, "mod", r, g) for g, (c, r) in mods]
                + [self._event(c, "del", r, g) for g, (c, r) in dels])

    def _event(self, cls: str, op: str, ref: str, generation: int) -> dict[str, Any]:
        event: dict[str, Any] = {"id": str(generation), "timestamp": f"20261124T00:00:{generation % 60:02d}Z", "class": cls,
                 "operation": op, "ref": ref}
        if op != "del":
            event["snapshot"] = dict(self.tables[cls][ref])
        return event

    closing = False

    def _answer(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        counts = {CLASSES[c]: str(len(t)) for c, t in self.tables.items()}
        return {"events": events, "valid_ref_counts": counts, "token": make_token(self.generation)}


def make_token(generation: int) -> str:
    """xapi's event.from token today: two zero-padded generation counters (clients must treat
    it as opaque; veil only hands it back)."""
    return "%020d,%020d" % (generation, 0)


def parse_token(token: str) -> int:
    first, comma, second = token.partition(",")
    if not comma or not first.isdigit() or not second.isdigit():
        raise XapiError("EVENT_FROM_TOKEN_PARSE_FAILURE", token)
    return int(first)


class _Handler(SimpleXMLRPCRequestHandler):
    rpc_paths = ("/", "/RPC2")
    disable_nagle_algorithm = False  # TCP_NODELAY does not exist on Unix sockets

    def address_string(self) -> str:  # unix sockets have no peer address
        return "unix"


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer, SimpleXMLRPCDispatcher):
    daemon_threads = True

    def __init__(self, path: str, db: SimDB) -> None:
        self.db = db
        self.open_requests: set[socket.socket] = set()
        self.logRequests = False
        SimpleXMLRPCDispatcher.__init__(self, allow_none=True, encoding=None, use_builtin_types=False)
        socketserver.UnixStreamServer.__init__(self, path, _Handler)

    def _dispatch(self, method: str, params: Iterable[Any]) -> Any:
        try:
            return {"Status": "Success", "Value": self.db.call(method, tuple(params))}
        except XapiError as exc:
            return {"Status": "Failure", "ErrorDescription": exc.description}

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Writing to a connection cut by stop() fails: that is the point, not an error."""

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        self.open_requests.add(request)
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.open_requests.discard(request)


class _TcpServer(socketserver.ThreadingMixIn, socketserver.TCPServer, SimpleXMLRPCDispatcher):
    """xapi over HTTP on 127.0.0.1 (what a remote client reaches): the pool master's database,
    or, with ``slave_of``, a pool member that refuses logins with HOST_IS_SLAVE [master]."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, db: SimDB, slave_of: str | None = None) -> None:
        self.db = db
        self.slave_of = slave_of
        self.logRequests = False
        SimpleXMLRPCDispatcher.__init__(self, allow_none=True, encoding=None, use_builtin_types=False)
        socketserver.TCPServer.__init__(self, ("127.0.0.1", 0), _Handler)

    def _dispatch(self, method: str, params: Iterable[Any]) -> Any:
        try:
            if self.slave_of is not None:  # xapi on a member: logins go to the master
                if method.startswith("session.login"):
                    raise XapiError("HOST_IS_SLAVE", self.slave_of)
                raise XapiError("SESSION_INVALID", str(next(iter(params), "")))
            return {"Status": "Success", "Value": self.db.call(method, tuple(params))}
        except XapiError as exc:
            return {"Status": "Failure", "ErrorDescription": exc.description}

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up mid-answer is not the simulator's error."""

    @property
    def address(self) -> str:
        host, port = self.socket.getsockname()[:2]
        return f"{host}:{port}"


class XapiSim:
    """The simulated xapi of a pool: one database, a server on ``sock_path`` that can restart;
    ``serve_http()`` adds the master's HTTP endpoint, ``serve_member()`` a member's."""

    def __init__(self, sock_path: Path) -> None:
        if "_" in str(sock_path):
            raise ValueError(f"XenAPI's UDS transport maps '_' to '/': no '_' allowed in {sock_path}")
        self.sock_path = sock_path
        self.db = SimDB()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._tcp: list[_TcpServer] = []
        self._master_http: str | None = None

    @property
    def uri(self) -> str:
        """What the sync daemon's --xapi takes for this simulator."""
        return f"unix:{self.sock_path}"

    def start(self) -> None:
        self.sock_path.unlink(missing_ok=True)
        self.db.closing = False
        self._server = _Server(str(self.sock_path), self.db)
        self._thread = threading.Thread(target=self._server.serve_forever, name="xapi-sim", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """xapi goes away: connections are cut, sessions are forgotten, the database stays."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        for req in list(server.open_requests):  # cut in-flight calls (a long event.from) mid-answer
            try:
                req.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        with self.db.lock:
            self.db.closing = True
            self.db.sessions.clear()
            self.db.lock.notify_all()
        server.server_close()
        self.sock_path.unlink(missing_ok=True)

    def restart(self) -> None:
        self.stop()
        self.start()

    def _serve(self, server: _TcpServer) -> str:
        threading.Thread(target=server.serve_forever, name="xapi-sim-http", daemon=True).start()
        self._tcp.append(server)
        return f"http://{server.address}"

    def serve_http(self) -> str:
        """The pool master over HTTP on 127.0.0.1; its URL (stopped with ``stop_http``)."""
        self._master_http = self._master_http or self._serve(_TcpServer(self.db))
        return self._master_http

    def serve_member(self) -> str:
        """A pool member's xapi: its URL; a login there is HOST_IS_SLAVE [master address]."""
        master = self.serve_http()[len("http://"):]
        return self._serve(_TcpServer(self.db, slave_of=master))

    def stop_http(self) -> None:
        for server in self._tcp:
            server.shutdown()
            server.server_close()
        self._tcp, self._master_http = [], None

    # -- the world, changed the way xapi changes it --------------------------------------------
    def add_host(self, name: str, address: str) -> str:
        return self.db.create("host", {"uuid": str(uuidlib.uuid4()), "name_label": name, "hostname": name,
                                       "address": address, "resident_VMs": []})

    def add_network(self, name: str, bridge: str, other_config: dict[str, str] | None = None,
                    managed: bool = True) -> str:
        return self.db.create("network", {"uuid": str(uuidlib.uuid4()), "name_label": name, "bridge": bridge,
                                          "other_config": dict(other_config or {}), "VIFs": [], "PIFs": [],
                                          "MTU": "1500", "default_locking_mode": "unlocked", "managed": managed})

    def add_vm(self, name: str, other_config: dict[str, str] | None = None) -> str:
        return self.db.create("vm", {"uuid": str(uuidlib.uuid4()), "name_label": name, "power_state": "Halted",
                                     "resident_on": NULL_REF, "domid": "-1", "VIFs": [],
                                     "is_a_template": False, "is_a_snapshot": False, "is_control_domain": False,
                                     "other_config": dict(other_config or {})})

    def add_vif(self, vm: str, network: str, device: str, mac: str,
                other_config: dict[str, str] | None = None, ipv4_allowed: list[str] | None = None,
                locking_mode: str = "network_default") -> str:
        running = self.db.tables["vm"][vm]["power_state"] == "Running"
        ref = self.db.create("vif", {"uuid": str(uuidlib.uuid4()), "device": device, "MAC": mac, "network": network,
                                     "VM": vm, "currently_attached": False, "MTU": "1500",
                                     "other_config": dict(other_config or {}), "locking_mode": locking_mode,
                                     "ipv4_allowed": list(ipv4_allowed or []), "ipv6_allowed": []})
        self.db.update("vm", vm, VIFs=[*self.db.tables["vm"][vm]["VIFs"], ref])
        self.db.update("network", network, VIFs=[*self.db.tables["network"][network]["VIFs"], ref])
        if running:
            self.db.update("vif", ref, currently_attached=True)
        return ref

    def start_vm(self, vm: str, host: str, domid: int) -> None:
        self.db.update("vm", vm, power_state="Running", resident_on=host, domid=str(domid))
        for vif in self.db.tables["vm"][vm]["VIFs"]:
            self.db.update("vif", vif, currently_attached=True)

    def shutdown_vm(self, vm: str) -> None:
        for vif in self.db.tables["vm"][vm]["VIFs"]:
            self.db.update("vif", vif, currently_attached=False)
        self.db.update("vm", vm, power_state="Halted", resident_on=NULL_REF, domid="-1")

    def migrate_vm(self, vm: str, host: str, domid: int) -> None:
        """The end of a live migration as xapi shows it: the VM's fields change in separate
        updates (``resident_on``, then ``domid``), VIFs stay attached. The destination's ports
        came before, from its xenopsd, under a temporary VM uuid (``Xenopsd.plug(...,
        domain_uuid=...)``); a reader may see the first update alone."""
        self.db.update("vm", vm, resident_on=host)
        self.db.update("vm", vm, domid=str(domid))

    def unplug_vif(self, vif: str) -> None:
        self.db.update("vif", vif, currently_attached=False)

    def destroy_vif(self, vif: str) -> None:
        rec = self.db.tables["vif"][vif]
        self.db.update("vm", rec["VM"], VIFs=[v for v in self.db.tables["vm"][rec["VM"]]["VIFs"] if v != vif])
        self.db.destroy("vif", vif)

    def set_other_config(self, cls: str, ref: str, key: str, value: str | None) -> None:
        oc = dict(self.db.tables[cls][ref]["other_config"])
        if value is None:
            oc.pop(key, None)
        else:
            oc[key] = value
        self.db.update(cls, ref, other_config=oc)

    def record(self, cls: str, ref: str) -> dict[str, Any]:
        with self.db.lock:
            return dict(self.db.tables[cls][ref])
