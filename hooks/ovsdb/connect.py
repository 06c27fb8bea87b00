"""The one ovsdbapp connection factory: every OVSDB client of veil opens its IDL here.

Controller (host databases, veil's own database), the hook core's ``Registrar``, the host
guard and the XenServer host reader all need the same three things, which ovsdbapp leaves to
each caller:

- a connection of its own. ovsdbapp keeps a Backend's connection in a CLASS attribute (the
  first instance of a class wins for the whole process), so each connection gets a subclass of
  its own (the pattern Neutron uses); otherwise two hosts would silently share one database;
- change notification: the IDL calls ``on_change`` (on the connection thread, so it must only
  hand the news on) after row changes, optionally filtered by ``notify_if(event, table)``;
- one specific error when the server cannot be reached: ``OvsdbUnreachable`` names the remote
  (ovsdbapp itself raises a bare ``Exception`` or a ``TimeoutException`` for this).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from typing import Any

from ovsdbapp import api
from ovsdbapp import exceptions as ovsdbapp_exceptions
from ovsdbapp.backend import ovs_idl as backend
from ovsdbapp.backend.ovs_idl import connection, idlutils
from ovsdbapp.schema.open_vswitch import impl_idl

from hooks.errors import OvsdbUnreachable

__all__ = ["OvsdbUnreachable", "GenericApi", "connect", "open_vswitch", "stop"]

_ids = itertools.count(1)

OPEN_VSWITCH_TABLES = ("Open_vSwitch", "Bridge", "Port", "Interface", "Controller", "Manager")

ChangeFilter = Callable[[str, str], bool]  # (event "create"/"update"/"delete", table) -> notify?


class _NotifyingIdl(connection.OvsdbIdl):  # type: ignore[misc]
    """An IDL that calls ``on_change`` (on the connection thread) after row changes that pass
    ``notify_if``; each connection gets a subclass with its own callbacks."""

    on_change: Callable[[], None] = staticmethod(lambda: None)
    notify_if: ChangeFilter = staticmethod(lambda event, table: True)

    def notify(self, event: str, row: Any, updates: Any = None) -> None:
        if self.notify_if(event, row._table.name):
            self.on_change()


class GenericApi(backend.Backend, api.API):  # type: ignore[misc]
    """ovsdbapp's generic db_* commands over any schema (used for veil's own database)."""

    lookup_table: dict[str, tuple[str, str, str | None]] = {}


def connect(remote: str, schema: str, base: type[Any], tables: Iterable[str],
            on_change: Callable[[], None] | None = None, *, timeout: float = 10.0,
            notify_if: ChangeFilter | None = None) -> Any:
    """An ovsdbapp API object of class ``base`` on ``remote``, its IDL mirroring ``tables``.

    Returns once the initial dump is in (reads right after see the database). ``timeout`` bounds
    the connection and each later transaction. Raises ``OvsdbUnreachable`` when the server does
    not answer; close with ``stop``.
    """
    helper = idlutils.create_schema_helper(_fetch_schema(remote, schema))
    for table in tables:
        helper.register_table(table)
    idl_attrs: dict[str, Any] = {}
    if on_change is not None:
        idl_attrs["on_change"] = staticmethod(on_change)
    if notify_if is not None:
        idl_attrs["notify_if"] = staticmethod(notify_if)
    idl = type(f"Idl{next(_ids)}", (_NotifyingIdl,), idl_attrs)(remote, helper)
    conn = connection.Connection(idl, timeout)
    # ``_ovsdb_connection`` set explicitly: the setter tests the INHERITED value, so a subclass
    # of a class whose attribute was already set would otherwise share that connection.
    api_cls = type(f"{base.__name__}{next(_ids)}", (base,), {"_ovsdb_connection": None})
    instance = api_cls(conn, start=False)
    try:
        conn.start()
    except ovsdbapp_exceptions.TimeoutException:
        raise OvsdbUnreachable(remote, f"no initial dump within {timeout}s") from None
    return instance


def open_vswitch(remote: str, on_change: Callable[[], None] | None = None, *, timeout: float = 10.0,
                 tables: Iterable[str] = OPEN_VSWITCH_TABLES, notify_if: ChangeFilter | None = None) -> Any:
    """The Open_vSwitch API (add_port, db_set, db_list ...) of one host's database.

    ``tables`` narrows the mirror: every table watched costs memory and initial-dump time on
    hosts with many ports, so short-lived and focused clients register only what they read.
    """
    return connect(remote, "Open_vSwitch", impl_idl.OvsdbIdl, tables, on_change,
                   timeout=timeout, notify_if=notify_if)


def stop(instance: Any, timeout: float = 5.0) -> None:
    """Stop the connection thread of an API object made by ``connect``."""
    instance.ovsdb_connection.stop(timeout=timeout)


def _fetch_schema(remote: str, schema: str) -> Any:
    """The schema JSON of ``schema`` from ``remote``.

    ovsdbapp's ``fetch_schema_json`` reports "no remote answered" with a bare ``Exception`` (it
    logs the reason); only that exact type is translated, any other error is a bug and propagates.
    """
    try:
        return idlutils.fetch_schema_json(remote, schema)
    except Exception as exc:
        if type(exc) is not Exception:
            raise
        raise OvsdbUnreachable(remote, str(exc)) from None
