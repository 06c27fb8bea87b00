"""The one ovsdbapp connection factory: every OVSDB client of veil opens its IDL here.

Controller (host databases, veil's own database), the hook core's ``Registrar``, the host
guard and the XenServer host reader all need the same three things, which ovsdbapp leaves to
each caller:

- a connection of its own. ovsdbapp keeps a Backend's connection in a CLASS attribute (the
  first instance of a class wins for the whole process), so each connection gets a subclass of
  its own (the pattern Neutron uses); otherwise two hosts would silently share one database;
- change notification: the IDL calls ``on_change`` (on the connection thread, so it must only
  hand the news on) after row changes, optionally filtered by ``wake(event, row, old)``;
- one specific error when the server cannot be reached: ``OvsdbUnreachable`` names the remote
  (ovsdbapp itself raises a bare ``Exception`` or a ``TimeoutException`` for this).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from ovs.db import idl as ovs_idl
from ovsdbapp import api
from ovsdbapp import exceptions as ovsdbapp_exceptions
from ovsdbapp.backend import ovs_idl as backend
from ovsdbapp.backend.ovs_idl import command, connection, idlutils, transaction
from ovsdbapp.schema.open_vswitch import impl_idl

from hooks.errors import OvsdbUnreachable

__all__ = [
    "OvsdbUnreachable", "GenericApi", "connect", "open_vswitch", "stop", "is_connected", "transact",
    "changed_columns", "has_lock", "session_seqno",
]

_ids = itertools.count(1)
T = TypeVar("T")

OPEN_VSWITCH_TABLES = ("Open_vSwitch", "Bridge", "Port", "Interface", "Controller", "Manager")

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


class _UnackedTransaction(transaction.Transaction):  # type: ignore[misc]
    def pre_commit(self, txn: Any) -> None:
        txn.expected_ifaces = set()  # ovsdbapp's add_port records its new interfaces here


class _UnackedOvsIdl(impl_idl.OvsdbIdl):  # type: ignore[misc]
    """The Open_vSwitch API whose transactions end when ovsdb-server has committed them.

    ovsdbapp's default (ovs-vsctl's) bumps next_cfg and then waits, up to the timeout, until
    ovs-vswitchd has applied the change: a caller that learns the outcome from the IDL anyway
    (a new port's ofport arrives as a row update) would only sit in that wait."""

    def create_transaction(self, check_error: bool = False, log_errors: bool = True,
                           **kwargs: Any) -> Any:
        return _UnackedTransaction(self, self.ovsdb_connection, check_error=check_error,
                                   log_errors=log_errors)


class GenericApi(backend.Backend, api.API):  # type: ignore[misc]
    """ovsdbapp's generic db_* commands over any schema (used for veil's own database)."""

    lookup_table: dict[str, tuple[str, str, str | None]] = {}


def connect(remote: str, schema: str, base: type[Any], tables: Iterable[str] | Mapping[str, Sequence[str]],
            on_change: Callable[[], None] | None = None, *, timeout: float = 10.0,
            wake: Wake | None = None, probe_ms: int | None = None, lock: str | None = None) -> Any:
    """An ovsdbapp API object of class ``base`` on ``remote``, its IDL mirroring ``tables``.

    ``tables`` is table names (every column mirrored) or a table -> columns mapping: the server
    then sends only those columns, so a change to any other column (ovs-vswitchd's statistics,
    every few seconds per interface) costs neither a message nor a wake-up. Returns once the
    initial dump is in (reads right after see the database). ``timeout`` bounds the connection
    and each later transaction. ``wake`` decides which row changes call ``on_change`` (default:
    every change). ``probe_ms``: the inactivity probe (python-ovs sends none on unix: remotes
    by default, so a silent server, e.g. behind a partition, would hold a commit, and with it
    the IDL's lock, for ever); after twice that much silence the connection is dropped and
    retried. ``lock``: the IDL asks for this OVSDB lock (RFC 7047 4.1.8) on every (re)connection
    and ``has_lock`` says whether it holds it; python-ovs then refuses the IDL's own writes while
    another client holds it. Raises ``OvsdbUnreachable`` when the server does not answer; close
    with ``stop``.
    """
    helper = idlutils.create_schema_helper(_fetch_schema(remote, schema))
    if isinstance(tables, Mapping):
        for table, columns in tables.items():
            helper.register_columns(table, list(columns))
    else:
        for table in tables:
            helper.register_table(table)
    idl_attrs: dict[str, Any] = {}
    if on_change is not None:
        idl_attrs["on_change"] = staticmethod(on_change)
    if wake is not None:
        idl_attrs["wake"] = staticmethod(wake)
    idl = type(f"Idl{next(_ids)}", (_NotifyingIdl,), idl_attrs)(remote, helper)
    if probe_ms is not None:  # (python-ovs' own parameter is forced to 0 for unix: remotes)
        idl._session.reconnect.set_probe_interval(probe_ms)
    if lock is not None:  # (before the connection thread runs: sent with the first connect)
        idl.set_lock(lock)
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
                 tables: Iterable[str] | Mapping[str, Sequence[str]] = OPEN_VSWITCH_TABLES,
                 wake: Wake | None = None, acked: bool = True, probe_ms: int | None = None) -> Any:
    """The Open_vSwitch API (add_port, db_set, db_list ...) of one host's database.

    ``tables`` narrows the mirror: every table watched costs memory and initial-dump time on
    hosts with many ports, so short-lived and focused clients register only what they read.
    ``acked``: each transaction also waits until ovs-vswitchd has applied it (ovs-vsctl's
    behaviour; the mirror then needs Open_vSwitch's next_cfg and cur_cfg columns); without it a
    transaction ends at ovsdb-server's commit. ``probe_ms``: as for ``connect``.
    """
    return connect(remote, "Open_vSwitch", impl_idl.OvsdbIdl if acked else _UnackedOvsIdl, tables,
                   on_change, timeout=timeout, wake=wake, probe_ms=probe_ms)


def has_lock(api: Any) -> bool:
    """Whether the server has granted the IDL the lock ``connect(lock=...)`` asked for."""
    idl: ovs_idl.Idl = api.idl
    return bool(idl.has_lock)


def session_seqno(api: Any) -> int:
    """A number that changes each time the IDL's session connects or disconnects (python-ovs'
    jsonrpc session counts them): how a caller tells one connection from the next."""
    idl: ovs_idl.Idl = api.idl
    return int(idl._session.get_seqno())


def is_connected(api: Any) -> bool:
    """Whether the IDL's session is connected now (python-ovs' Idl has no public call for it;
    its jsonrpc session does)."""
    idl: ovs_idl.Idl = api.idl
    return bool(idl._session.is_connected())


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
