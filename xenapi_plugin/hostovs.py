"""This host's OVSDB for the XenServer side: the hook core's Registrar plus the few reads it
does not offer (interface and bridge names, system-id) and the Bridge ``bridge-id`` writes.

VIF registration itself always goes through ``hooks.registrar.Registrar``; the extra IDL
connection here only reads, and writes Bridge external_ids in one transaction per change.
vif-hotplug spools what OVSDB could not take: callers write inside ``in_order()`` so those
older events apply first (the rule in ``hooks.spool``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any

from ovsdbapp import exceptions as ovsdbapp_exceptions

from hooks import contract
from hooks.errors import RegistrarError
from hooks.ovsdb import connect as ovsdb_connect
from hooks.registrar import Registrar
from hooks.spool import DrainResult, Spool, in_order
from hooks.vif import Vif

_TABLES = ("Open_vSwitch", "Bridge", "Interface")


class RegistrarOvs:
    """The ``sync.HostOvs`` of a real host: registrations on ``bridge`` of ``remote``."""

    def __init__(self, remote: str, spool: Spool, bridge: str = contract.INTEGRATION_BRIDGE,
                 timeout: float = 5.0) -> None:
        self.remote = remote
        self.spool = spool
        self.bridge = bridge
        self.timeout = timeout
        self.registrar = Registrar(remote, bridge=bridge, timeout=timeout)
        self._api: Any = None
        self._on_interface_change: Callable[[], None] | None = None
        self._lock = threading.Lock()

    # -- registrations: the hook core ------------------------------------------------------------
    def in_order(self) -> AbstractContextManager[DrainResult]:
        """Hold the spool's apply lock and apply vif-hotplug's pending events, for a section
        that reads registrations and writes the newest intent (not reentrant)."""
        return in_order(self.spool, self.registrar)

    def registered(self) -> dict[str, Vif]:
        return {v.port: v for v in self.registrar.registered()}

    def plug(self, vif: Vif, *, add_port: bool) -> None:
        self.registrar.plug(vif, add_port=add_port)

    def unplug(self, port: str, *, delete_port: bool) -> None:
        self.registrar.unplug(port, delete_port=delete_port)

    # -- reads and Bridge ids ----------------------------------------------------------------------
    def interface_names(self) -> set[str]:
        return {r.name for r in self._rows("Interface")}

    def tagged_ports(self) -> dict[str, str]:
        """Port name -> ``xs-vif-uuid`` of every interface xenopsd's vif script (or veil) tagged."""
        tagged = {}
        for row in self._rows("Interface"):
            vif_uuid = dict(row.external_ids).get(contract.XS_VIF_UUID)
            if vif_uuid:
                tagged[str(row.name)] = str(vif_uuid)
        return tagged

    def owned_ports(self) -> set[str]:
        """Interfaces veil added itself (``veil-owns-port=true``): the only ones it deletes."""
        return {r.name for r in self._rows("Interface")
                if dict(r.external_ids).get(contract.VEIL_OWNS_PORT) == "true"}

    def bridge_names(self) -> set[str]:
        return {r.name for r in self._rows("Bridge")}

    def system_id(self) -> str | None:
        for row in self._rows("Open_vSwitch"):
            value = dict(row.external_ids).get(contract.SYSTEM_ID)
            return str(value) if value else None
        return None

    def set_bridge_ids(self, ids: Mapping[str, str]) -> None:
        """Set ``bridge-id`` on the given bridges; a no-op for those already right."""
        current = {r.name: dict(r.external_ids).get(contract.BRIDGE_ID) for r in self._rows("Bridge")}
        todo = {b: i for b, i in ids.items() if current.get(b) != i}
        if not todo:
            return
        api = self._connected()
        try:
            with api.transaction(check_error=True, log_errors=False) as txn:
                for bridge, bridge_id in sorted(todo.items()):
                    txn.add(api.db_set("Bridge", bridge, ("external_ids", {contract.BRIDGE_ID: bridge_id})))
        except (ovsdbapp_exceptions.TimeoutException, RuntimeError) as exc:
            raise RegistrarError(f"OVSDB at {self.remote}: setting bridge-id failed: {exc}") from None

    def watch_interfaces(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (from the OVSDB thread) whenever an Interface row appears or goes."""
        self._connected()
        self._on_interface_change = callback

    def close(self) -> None:
        self.registrar.close()
        with self._lock:
            if self._api is not None:
                ovsdb_connect.stop(self._api, timeout=self.timeout)
                self._api = None

    def _rows(self, table: str) -> list[Any]:
        api = self._connected()
        with api.ovsdb_connection.lock:
            return list(api.tables[table].rows.values())

    def _connected(self) -> Any:
        with self._lock:
            if self._api is None:
                # OvsdbUnreachable is a RegistrarError: the daemon retries, the plugin reports it.
                self._api = ovsdb_connect.open_vswitch(
                    self.remote, self._interface_changed, timeout=self.timeout, tables=_TABLES,
                    wake=lambda event, row, updates: row._table.name == "Interface" and event in ("create", "delete"))
            return self._api

    def _interface_changed(self) -> None:
        """On the OVSDB thread: an Interface row appeared or went; only hand the news on."""
        callback = self._on_interface_change
        if callback is not None:
            callback()
