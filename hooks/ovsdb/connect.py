"""ovsdbapp connections with change notification, one per database the controller talks to.

ovsdbapp keeps a Backend's connection on the class, so each connection gets its own subclass
(the pattern Neutron uses); otherwise two hosts would silently share one database.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from ovs.db import idl as ovs_idl
from ovsdbapp import api
from ovsdbapp.backend import ovs_idl as backend
from ovsdbapp.backend.ovs_idl import command, connection, idlutils
from ovsdbapp.schema.open_vswitch import impl_idl

_ids = itertools.count(1)
T = TypeVar("T")


class OvsdbUnreachable(RuntimeError):
    """The server did not answer (ovsdbapp itself raises a bare Exception for this)."""


# (event, row, the row's old values of the changed columns or None) -> whether to call on_change
Wake = Callable[[str, Any, Any], bool]


class _NotifyingIdl(connection.OvsdbIdl):  # type: ignore[misc]
    """An IDL that calls ``on_change`` (on the connection thread, under the connection's lock)
    after any row change ``wake`` says is news."""

    on_change: Callable[[], None] = staticmethod(lambda: None)
    wake: Wake = staticmethod(lambda event, row, updates: True)

    def notify(self, event: str, row: Any, updates: Any = None) -> None:
        if self.wake(event, row, updates):
            self.on_change()


def changed_columns(row: Any, updates: Any) -> frozenset[str]:
    """The columns an update event changed (``updates`` holds only their old values)."""
    return frozenset(c for c in row._table.columns if hasattr(updates, c))


class GenericApi(backend.Backend, api.API):  # type: ignore[misc]
    """ovsdbapp's generic db_* commands over any schema (used for veil's own database)."""

    lookup_table: dict[str, tuple[str, str, str | None]] = {}


def connect(remote: str, schema: str, base: type[Any], tables: Iterable[str],
            on_change: Callable[[], None], timeout: float = 10.0,
            wake: Wake | None = None) -> Any:
    """Open an ovsdbapp API object of class ``base`` for ``remote``; raises if unreachable."""
    try:
        helper = idlutils.get_schema_helper(remote, schema)
    except Exception as exc:  # ovsdbapp's fetch_schema_json raises plain Exception
        raise OvsdbUnreachable(f"{remote}: {exc}") from exc
    for table in tables:
        helper.register_table(table)
    idl_cls = type(f"Idl{next(_ids)}", (_NotifyingIdl,), {
        "on_change": staticmethod(on_change),
        "wake": staticmethod(wake or (lambda event, row, updates: True))})
    idl = idl_cls(remote, helper)
    conn = connection.Connection(idl, timeout)
    api_cls = type(f"{base.__name__}{next(_ids)}", (base,), {})
    return api_cls(conn, start=True)


def open_vswitch(remote: str, on_change: Callable[[], None], timeout: float = 10.0) -> Any:
    """The Open_vSwitch API (add_port, db_set ...) for one host's database."""
    return connect(remote, "Open_vSwitch", impl_idl.OvsdbIdl,
                   ("Open_vSwitch", "Bridge", "Port", "Interface", "Controller", "Manager"),
                   on_change, timeout)


def is_connected(api: Any) -> bool:
    """Whether the IDL's session is connected now (python-ovs' Idl has no public call for it;
    its jsonrpc session does)."""
    idl: ovs_idl.Idl = api.idl
    return bool(idl._session.is_connected())


def stop(api: Any) -> None:
    api.ovsdb_connection.stop(timeout=5)


class _Body(command.BaseCommand):  # type: ignore[misc]
    def __init__(self, api: Any, body: Callable[[Any], Any]) -> None:
        super().__init__(api)
        self.body = body

    def run_idl(self, txn: Any) -> None:
        self.result = self.body(txn)


def transact(api: Any, body: Callable[[Any], T]) -> T:
    """Run ``body(idl_txn)`` as one transaction and return what it returned: for what the db_*
    commands cannot say (a compare-and-set through ``row.verify``). ovsdbapp re-runs the body
    on fresh rows when a verified column changed meanwhile."""
    cmd = _Body(api, body)
    with api.transaction(check_error=True) as txn:
        txn.add(cmd)
    result: T = cmd.result
    return result
