"""ovsdbapp connections with change notification, one per database the controller talks to.

ovsdbapp keeps a Backend's connection on the class, so each connection gets its own subclass
(the pattern Neutron uses); otherwise two hosts would silently share one database.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from typing import Any

from ovs.db import idl as ovs_idl
from ovsdbapp import api
from ovsdbapp.backend import ovs_idl as backend
from ovsdbapp.backend.ovs_idl import connection, idlutils
from ovsdbapp.schema.open_vswitch import impl_idl

_ids = itertools.count(1)


class OvsdbUnreachable(RuntimeError):
    """The server did not answer (ovsdbapp itself raises a bare Exception for this)."""


class _NotifyingIdl(connection.OvsdbIdl):  # type: ignore[misc]
    """An IDL that calls ``on_change`` (on the connection thread) after any row change."""

    on_change: Callable[[], None] = staticmethod(lambda: None)

    def notify(self, event: str, row: Any, updates: Any = None) -> None:
        self.on_change()


class GenericApi(backend.Backend, api.API):  # type: ignore[misc]
    """ovsdbapp's generic db_* commands over any schema (used for veil's own database)."""

    lookup_table: dict[str, tuple[str, str, str | None]] = {}


def connect(remote: str, schema: str, base: type[Any], tables: Iterable[str],
            on_change: Callable[[], None], timeout: float = 10.0) -> Any:
    """Open an ovsdbapp API object of class ``base`` for ``remote``; raises if unreachable."""
    try:
        helper = idlutils.get_schema_helper(remote, schema)
    except Exception as exc:  # ovsdbapp's fetch_schema_json raises plain Exception
        raise OvsdbUnreachable(f"{remote}: {exc}") from exc
    for table in tables:
        helper.register_table(table)
    idl_cls = type(f"Idl{next(_ids)}", (_NotifyingIdl,), {"on_change": staticmethod(on_change)})
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
    idl: ovs_idl.Idl = api.idl
    return bool(idl.is_connected())


def stop(api: Any) -> None:
    api.ovsdb_connection.stop(timeout=5)
