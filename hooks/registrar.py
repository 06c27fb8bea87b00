"""Registers VIFs in the host's OVSDB through ovsdbapp: the API of veil's long-running daemons.

One ``plug`` or ``unplug`` is ONE OVSDB transaction (check_error=True). External ids are
written key by key (partial map updates), so keys another writer owns (libvirt's, XenServer's)
survive even when it writes concurrently. The short-lived qemu hook uses
``hooks.ovsdb.rpc.RpcRegistrar`` instead, which has this same interface and yields the same
rows without ovsdbapp's connection bootstrap (see docs/kvm.md for the figures).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from ovsdbapp import exceptions as ovsdbapp_exceptions
from ovsdbapp.backend.ovs_idl import command, idlutils

from hooks import contract
from hooks.errors import PlugRejected, RegistrarError, VifError
from hooks.ovsdb import connect as ovsdb_connect
from hooks.plugspec import (
    DEACTIVATE_DROP_KEYS,
    TAKEOVER_DROP_KEYS,
    claim,
    deactivate_external_ids,
    device_gone,
    plug_external_ids,
    ports_to_unplug,
    update_external_ids,
    vifs_from_rows,
)
from hooks.vif import Vif

__all__ = ["Registrar", "RegistrarError", "PlugRejected", "VifError"]

# The IDL only mirrors what registration needs: every table the daemon watches costs memory
# and initial-dump time on hosts with many ports.
_TABLES = ("Open_vSwitch", "Bridge", "Port", "Interface")
LOG = logging.getLogger("veil.registrar")


class _BridgeMissing(Exception):
    pass


class Registrar:
    """Plugs and unplugs VIFs on ``bridge`` of the OVSDB at ``db_remote``; thread-safe."""

    def __init__(self, db_remote: str, bridge: str = contract.INTEGRATION_BRIDGE, timeout: float = 5.0) -> None:
        self.db_remote = db_remote
        self.bridge = bridge
        self.timeout = timeout
        self._api: Any = None
        self._lock = threading.Lock()
        self.took_over: list[str] = []  # one note per stale row a plug took over (also logged)

    def plug(self, vif: Vif, *, add_port: bool) -> None:
        """Write ``vif`` into its Interface row, adding the port first when ``add_port``
        (another VM's row: refused while that VM is plausibly alive, else taken over)."""
        ids = plug_external_ids(vif, add_port=add_port)
        cmd = _PlugCommand(self._connected(), self.bridge, vif, ids, add_port)
        self._commit(cmd)
        if cmd.took_over:
            LOG.warning("%s", cmd.took_over)
            self.took_over.append(cmd.took_over)

    def unplug(self, port: str, *, delete_port: bool) -> None:
        """Remove the port, or mark it inactive and drop veil's keys. A missing port is a no-op."""
        api = self._connected()
        if delete_port:
            self._commit(api.del_port(port, if_exists=True))
        else:
            self._commit(_DeactivateCommand(api, port))

    def unplug_vm(self, vm_id: str) -> None:
        """Unplug every port veil registered for ``vm_id`` in one transaction (see RpcRegistrar)."""
        self._commit(_UnplugVmCommand(self._connected(), vm_id))

    def registered(self) -> list[Vif]:
        """The VIFs veil registered on this host, from the IDL's mirror of the Interface table."""
        api = self._connected()
        with api.ovsdb_connection.lock:
            rows = [(r.name, dict(r.external_ids)) for r in api.tables["Interface"].rows.values()]
        return vifs_from_rows(rows)[0]

    def system_id(self) -> str | None:
        """This host's ``external_ids:system-id`` (the VIF's host in the contract), if set."""
        api = self._connected()
        with api.ovsdb_connection.lock:
            rows = list(api.tables["Open_vSwitch"].rows.values())
        return rows[0].external_ids.get(contract.SYSTEM_ID) if rows else None

    def owned_ports(self) -> frozenset[str]:
        """Ports veil added itself (tap case): on unplug veil deletes them, not just deactivates."""
        api = self._connected()
        with api.ovsdb_connection.lock:
            return frozenset(
                r.name for r in api.tables["Interface"].rows.values()
                if r.external_ids.get(contract.VEIL_OWNS_PORT) == "true"
            )

    def close(self) -> None:
        with self._lock:
            if self._api is not None:
                ovsdb_connect.stop(self._api, timeout=self.timeout)
                self._api = None

    # -- internals -------------------------------------------------------------------------------
    def _connected(self) -> Any:
        with self._lock:
            if self._api is None:
                self._api = self._connect()
            return self._api

    def _connect(self) -> Any:
        # OvsdbUnreachable is a RegistrarError: callers spool and retry.
        return ovsdb_connect.open_vswitch(self.db_remote, timeout=self.timeout, tables=_TABLES)

    def _commit(self, cmd: Any) -> None:
        try:
            with self._api.transaction(check_error=True, log_errors=False) as txn:
                txn.add(cmd)
        except _BridgeMissing:
            raise RegistrarError(f"bridge {self.bridge!r} does not exist in {self.db_remote}") from None
        except PlugRejected:
            raise
        except ovsdbapp_exceptions.TimeoutException:
            raise RegistrarError(f"OVSDB at {self.db_remote} did not commit within {self.timeout}s") from None
        except RuntimeError as exc:
            # ovsdbapp reports both "OVS transaction timed out" and server-side errors this way.
            if "timed out" in str(exc):
                raise RegistrarError(f"OVSDB at {self.db_remote}: {exc}") from None
            raise PlugRejected(f"OVSDB refused the change: {exc}") from None


class _PlugCommand(command.BaseCommand):  # type: ignore[misc]
    """Adds the port when asked and missing, then sets veil's keys one by one (setkey) unless the
    row is another VM's; external_ids is verified, so the check holds when the write lands."""

    def __init__(self, api: Any, bridge: str, vif: Vif, ids: dict[str, str], add_port: bool) -> None:
        super().__init__(api)
        self.bridge = bridge
        self.vif = vif
        self.port = vif.port
        self.ids = ids
        self.add_port = add_port
        self.took_over: str | None = None

    def run_idl(self, txn: Any) -> None:
        iface = idlutils.row_by_value(self.api.idl, "Interface", "name", self.port, None)
        if iface is None:
            if not self.add_port:
                raise PlugRejected(f"no Interface {self.port!r} in OVSDB to register")
            br = idlutils.row_by_value(self.api.idl, "Bridge", "name", self.bridge, None)
            if br is None:
                raise _BridgeMissing(self.bridge)
            iface = txn.insert(self.api.tables["Interface"])
            iface.name = self.port
            iface.external_ids = self.ids
            port = txn.insert(self.api.tables["Port"])
            port.name = self.port
            port.interfaces = [iface]
            br.addvalue("ports", port)
            return
        iface.verify("external_ids")
        current = dict(iface.external_ids)
        why, self.took_over = claim(self.vif, current, device_gone(
            _one(iface.ofport), _one(iface.error), _one(iface.link_state)))
        if why:
            raise PlugRejected(why)
        if self.took_over:
            for key in TAKEOVER_DROP_KEYS:
                iface.delkey("external_ids", key)
        for key, value in update_external_ids(self.ids, current).items():
            iface.setkey("external_ids", key, value)


def _one(column: Any) -> object:
    """An optional IDL column (a list of zero or one value) as its value or None."""
    return column[0] if isinstance(column, list) and len(column) == 1 else None


class _DeactivateCommand(command.BaseCommand):  # type: ignore[misc]
    def __init__(self, api: Any, port: str) -> None:
        super().__init__(api)
        self.port = port

    def run_idl(self, txn: Any) -> None:
        iface = idlutils.row_by_value(self.api.idl, "Interface", "name", self.port, None)
        if iface is None:
            return
        for key in DEACTIVATE_DROP_KEYS:
            iface.delkey("external_ids", key)
        for key, value in deactivate_external_ids().items():
            iface.setkey("external_ids", key, value)


class _UnplugVmCommand(command.BaseCommand):  # type: ignore[misc]
    def __init__(self, api: Any, vm_id: str) -> None:
        super().__init__(api)
        self.vm_id = vm_id

    def run_idl(self, txn: Any) -> None:
        rows = [
            (r.name, dict(r.external_ids)) for r in self.api.tables["Interface"].rows.values()
            if r.external_ids.get(contract.VM_ID) == self.vm_id
        ]
        delete, deactivate = ports_to_unplug(rows)
        for name in delete:
            port = idlutils.row_by_value(self.api.idl, "Port", "name", name, None)
            if port is None:
                continue
            for br in self.api.tables["Bridge"].rows.values():
                if port in br.ports:
                    br.delvalue("ports", port)
            port.delete()
        for name in deactivate:
            _DeactivateCommand(self.api, name).run_idl(txn)
