"""This host's OVSDB for the XenServer side, spoken over JSON-RPC with the standard library only.

The plugin and veil-xapi-sync run in dom0, on its Python 3.6 with nothing but the standard
library and dom0's XenAPI.py (shared reference xenapi-plugin.md): no ovsdbapp, no ``ovs`` IDL.
So registrations go through the hook core's lean client (``hooks.ovsdb.rpc.RpcRegistrar``, the
same rows as ``hooks.registrar.Registrar``), plus the few reads it does not offer (interface and
bridge names, system-id), the Bridge ``bridge-id`` writes, and an RFC 7047 ``monitor`` of the
Interface names that tells the daemon when xenopsd adds or removes a port.

vif-hotplug spools what OVSDB could not take: callers write inside ``in_order()`` so those
older events apply first (the rule in ``hooks.spool``).
"""

import json
import socket
import threading
from typing import Any, Callable, Dict, List, Mapping, Optional, Set

from hooks import contract
from hooks.backoff import Backoff
from hooks.errors import RegistrarError
from hooks.ovsdb.rpc import RpcRegistrar, map_of, ovs_map
from hooks.spool import DrainResult, Spool, in_order
from hooks.vif import Vif

TYPE_CHECKING = False
if TYPE_CHECKING:
    from contextlib import AbstractContextManager

_WATCH_ID = "veil-interfaces"
_MAX_MESSAGE = 16 << 20


class RegistrarOvs:
    """The ``sync.HostOvs`` of a real host: registrations on ``bridge`` of ``remote``.

    Used from one thread (the daemon's applier, or the plugin's one call); the Interface
    watch runs on its own thread with its own connection."""

    def __init__(self, remote: str, spool: Spool, bridge: str = contract.INTEGRATION_BRIDGE,
                 timeout: float = 5.0) -> None:
        self.remote = remote
        self.spool = spool
        self.bridge = bridge
        self.timeout = timeout
        self.registrar = RpcRegistrar(remote, bridge=bridge, timeout=timeout)
        self._watch: Optional[InterfaceWatch] = None

    # -- registrations: the hook core ------------------------------------------------------------
    def in_order(self) -> "AbstractContextManager[DrainResult]":
        """Hold the spool's apply lock and apply vif-hotplug's pending events, for a section
        that reads registrations and writes the newest intent (not reentrant)."""
        return in_order(self.spool, self.registrar)

    def registered(self) -> Dict[str, Vif]:
        return {v.port: v for v in self.registrar.registered()}

    def plug(self, vif: Vif, *, add_port: bool) -> None:
        self.registrar.plug(vif, add_port=add_port)

    def unplug(self, port: str, *, delete_port: bool) -> None:
        self.registrar.unplug(port, delete_port=delete_port)

    # -- reads and Bridge ids ----------------------------------------------------------------------
    def _interfaces(self) -> List[Dict[str, Any]]:
        return self.registrar.select("Interface", ["name", "external_ids"])

    def interface_names(self) -> Set[str]:
        return {str(r.get("name")) for r in self.registrar.select("Interface", ["name"])}

    def tagged_ports(self) -> Dict[str, str]:
        """Port name -> ``xs-vif-uuid`` of every interface xenopsd's vif script (or veil) tagged."""
        tagged = {}
        for row in self._interfaces():
            vif_uuid = map_of(row.get("external_ids")).get(contract.XS_VIF_UUID)
            if vif_uuid:
                tagged[str(row.get("name"))] = vif_uuid
        return tagged

    def owned_ports(self) -> Set[str]:
        """Interfaces veil added itself (``veil-owns-port=true``): the only ones it deletes."""
        return {str(r.get("name")) for r in self._interfaces()
                if map_of(r.get("external_ids")).get(contract.VEIL_OWNS_PORT) == "true"}

    def bridge_names(self) -> Set[str]:
        return {str(r.get("name")) for r in self.registrar.select("Bridge", ["name"])}

    def system_id(self) -> Optional[str]:
        return self.registrar.system_id()

    def set_bridge_ids(self, ids: Mapping[str, str]) -> None:
        """Set ``bridge-id`` on the given bridges (one transaction); a no-op for those already right."""
        current = {str(r.get("name")): map_of(r.get("external_ids")).get(contract.BRIDGE_ID)
                   for r in self.registrar.select("Bridge", ["name", "external_ids"])}
        todo = {b: i for b, i in ids.items() if b in current and current[b] != i}
        if not todo:
            return
        ops: List[Any] = []
        for bridge, bridge_id in sorted(todo.items()):
            where = [["name", "==", bridge]]
            ops.append({"op": "mutate", "table": "Bridge", "where": where,
                        "mutations": [["external_ids", "delete", ["set", [contract.BRIDGE_ID]]]]})
            ops.append({"op": "mutate", "table": "Bridge", "where": where,
                        "mutations": [["external_ids", "insert", ovs_map({contract.BRIDGE_ID: bridge_id})]]})
        self.registrar.transact(ops, "setting bridge-id on " + ", ".join(sorted(todo)))

    def watch_interfaces(self, callback: Callable[[], None], backoff: Optional[Backoff] = None) -> None:
        """Call ``callback`` (from a watch thread) whenever an Interface row appears or goes,
        and after the watch lost OVSDB and has it again (rows may have changed meanwhile).
        Raises RegistrarError when OVSDB does not answer now (the caller retries)."""
        self.registrar.system_id()  # OVSDB is there: the same error as every other first read
        if self._watch is None:
            self._watch = InterfaceWatch(self.remote, callback, backoff or Backoff(initial=0.5, maximum=10.0))
            self._watch.start()

    def close(self) -> None:
        self.registrar.close()
        if self._watch is not None:
            self._watch.stop()
            self._watch = None


class InterfaceWatch:
    """An RFC 7047 ``monitor`` of Interface names on its own connection and thread.

    ovsdb-server sends an ``update`` when a row is inserted or deleted (a name never changes);
    each one becomes one ``callback()``. A lost connection is retried on ``backoff``, never
    the end of the daemon."""

    def __init__(self, remote: str, callback: Callable[[], None], backoff: Backoff) -> None:
        self.remote = remote
        self.callback = callback
        self.backoff = backoff
        self._stopping = threading.Event()
        self._sock: Optional[socket.socket] = None
        self._thread = threading.Thread(target=self._run, name="ovsdb-interface-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(timeout=5)

    def _run(self) -> None:
        failures, first = 0, True
        while not self._stopping.is_set():
            healthy = False
            try:
                healthy = self._follow(first)
            except (OSError, ValueError, RegistrarError):
                pass
            if self._stopping.is_set():
                return
            first = first and not healthy
            failures = 1 if healthy else failures + 1  # a watch that got its rows was healthy
            if self._stopping.wait(self.backoff.delay(failures)):
                return

    def _connect(self) -> socket.socket:
        kind, _, where = self.remote.partition(":")
        if kind == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(10)
            sock.connect(where)
        elif kind == "tcp":
            host, _, port = where.rpartition(":")
            sock = socket.create_connection((host, int(port)), timeout=10)
        else:
            raise RegistrarError("unsupported OVSDB remote {!r} (use unix: or tcp:)".format(self.remote))
        sock.settimeout(None)
        return sock

    def _follow(self, first: bool) -> bool:
        """Until the connection ends; True when the monitor's first reply had come (a healthy
        watch), so the next reconnect starts its back-off anew. ``first``: the daemon has not
        seen any rows yet, so that reply is no news."""
        sock = self._sock = self._connect()
        replied = False
        try:
            request = {"id": _WATCH_ID, "method": "monitor",
                       "params": ["Open_vSwitch", _WATCH_ID, {"Interface": {"columns": ["name"]}}]}
            sock.sendall(json.dumps(request).encode())
            decoder = json.JSONDecoder()
            buf = ""
            while not self._stopping.is_set():
                chunk = sock.recv(65536)
                if not chunk:
                    return replied
                buf += chunk.decode("utf-8", "replace")
                if len(buf) > _MAX_MESSAGE:
                    raise RegistrarError("OVSDB message larger than {} bytes".format(_MAX_MESSAGE))
                while buf.strip():
                    try:
                        msg, end = decoder.raw_decode(buf.lstrip())
                    except ValueError:
                        break  # incomplete: read more
                    buf = buf.lstrip()[end:]
                    if not isinstance(msg, dict):
                        continue
                    if msg.get("method") == "echo":
                        sock.sendall(json.dumps({"id": msg.get("id"), "result": msg.get("params"),
                                                 "error": None}).encode())
                    elif msg.get("id") == _WATCH_ID:
                        replied = True
                        if not first:
                            self.callback()  # the rows after a reconnect: they may have changed meanwhile
                    elif msg.get("method") == "update":
                        self.callback()  # a row came or went
            return replied
        finally:
            self._sock = None
            sock.close()
