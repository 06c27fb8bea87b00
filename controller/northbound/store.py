"""veil's own OVSDB database: tenants, networks and joined hosts.

By default the controller runs a standalone ovsdb-server for it (``StoreServer``); anything
that speaks OVSDB (the ``veil`` CLI, ``veil join`` on a host) writes to it, and the controller
watches it. Writes go through ovsdbapp transactions with check_error=True.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from hooks.ovsdb import connect as ovsdb
from controller.core.seen import SeenKey
from controller.core.model import (
    Host,
    InvalidState,
    Network,
    Tenant,
    allocate_vni,
    check_declared,
    check_tunnel_types,
)

SCHEMA: Final = Path(__file__).with_name("schema") / "veil.ovsschema"
SCHEMA_NAME: Final = "Veil"
SOURCE_KEY: Final = "veil-source"  # external_ids: "config" for rows the config file owns


class StoreServer:
    """A standalone ovsdb-server holding the Veil database in ``rundir``."""

    def __init__(self, rundir: Path) -> None:
        self.rundir = Path(rundir)

    @property
    def db_file(self) -> Path:
        return self.rundir / "veil.db"

    @property
    def sock(self) -> Path:
        return self.rundir / "veil-db.sock"

    @property
    def remote(self) -> str:
        return f"unix:{self.sock}"

    @property
    def pidfile(self) -> Path:
        return self.rundir / "veil-db.pid"

    def start(self, listen: Iterable[str] = ()) -> None:
        """Create the database if needed and start the server; returns when it answers."""
        self.rundir.mkdir(parents=True, exist_ok=True)
        if not self.db_file.exists():
            _run(["ovsdb-tool", "create", str(self.db_file), str(SCHEMA)])
        else:
            _run(["ovsdb-tool", "convert", str(self.db_file), str(SCHEMA)])
        _run([
            "ovsdb-server", str(self.db_file), f"--remote=punix:{self.sock}",
            *(f"--remote={r}" for r in listen),
            f"--unixctl={self.rundir / 'veil-db.ctl'}", f"--pidfile={self.pidfile}", "--detach",
            f"--log-file={self.rundir / 'veil-db.log'}",
        ])
        deadline = time.monotonic() + 10
        while not self.sock.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"veil ovsdb-server did not start; see {self.rundir}")
            time.sleep(0.01)

    def pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def stop(self) -> None:
        pid = self.pid()
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.02)


def _run(argv: list[str]) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip()}")


@dataclass(frozen=True)
class HostRecord:
    """A joined host and how the controller reaches it."""

    host: Host
    ovsdb: str
    openflow: str


@dataclass(frozen=True)
class Declared:
    tenants: tuple[Tenant, ...]
    networks: tuple[Network, ...]
    hosts: tuple[HostRecord, ...]
    claims: Mapping[str, str]  # iface-id -> host, while a VIF is live on two hosts
    first_seen: Mapping[SeenKey, float] = field(default_factory=dict)  # see controller/core/seen.py


class Store:
    """Typed reads and writes of the Veil database through ovsdbapp."""

    def __init__(self, remote: str, on_change: Callable[[], None] = lambda: None) -> None:
        self.api = ovsdb.connect(remote, SCHEMA_NAME, ovsdb.GenericApi,
                                 ("Tenant", "Network", "Host", "Claim", "FirstSeen"),
                                 on_change)

    def close(self) -> None:
        ovsdb.stop(self.api)

    def read(self) -> Declared:
        """The declared state; a row that breaks the invariants is an error, never skipped."""
        with self.api.ovsdb_connection.lock:
            t = self.api.tables
            tenants = tuple(Tenant(r.name) for r in t["Tenant"].rows.values())
            networks = tuple(
                Network(r.name, r.tenant, r.vni,
                        ipaddress.ip_network(r.subnet[0]) if r.subnet else None)
                for r in t["Network"].rows.values()
            )
            hosts = tuple(
                HostRecord(
                    Host(r.system_id, ipaddress.ip_address(r.underlay_ip),
                         check_tunnel_types(r.tunnel_types, f"host {r.system_id}.tunnel_types")),
                    r.ovsdb, r.openflow)
                for r in t["Host"].rows.values()
            )
            claims = {r.iface_id: r.host for r in t["Claim"].rows.values()}
            first_seen = {(r.host, r.iface_id, r.ofport): r.since
                          for r in t["FirstSeen"].rows.values()}
        check_declared({x.name: x for x in tenants}, {x.name: x for x in networks},
                       {x.host.system_id: x.host for x in hosts})
        return Declared(tenants, networks, hosts, claims, first_seen)

    def write_claims(self, want: Mapping[str, str]) -> None:
        """Make the Claim table equal ``want``, in one transaction."""
        with self.api.ovsdb_connection.lock:
            have = {r.iface_id: (r.uuid, r.host) for r in self.api.tables["Claim"].rows.values()}
        with self.api.transaction(check_error=True) as txn:
            for iface, (uuid, host) in have.items():
                if iface not in want:
                    txn.add(self.api.db_destroy("Claim", uuid))
                elif want[iface] != host:
                    txn.add(self.api.db_set("Claim", uuid, ("host", want[iface])))
            for iface in want.keys() - have.keys():
                txn.add(self.api.db_create("Claim", iface_id=iface, host=want[iface]))

    def write_first_seen(self, want: Mapping[SeenKey, float]) -> None:
        """Make the FirstSeen table equal ``want``, in one transaction."""
        with self.api.ovsdb_connection.lock:
            have = {(r.host, r.iface_id, r.ofport): (r.uuid, r.since)
                    for r in self.api.tables["FirstSeen"].rows.values()}
        with self.api.transaction(check_error=True) as txn:
            for key, (uuid, since) in have.items():
                if key not in want:
                    txn.add(self.api.db_destroy("FirstSeen", uuid))
                elif want[key] != since:
                    txn.add(self.api.db_set("FirstSeen", uuid, ("since", want[key])))
            for key in want.keys() - have.keys():
                host, iface, ofport = key
                txn.add(self.api.db_create("FirstSeen", host=host, iface_id=iface, ofport=ofport,
                                           since=want[key]))

    # -- writes (each one transaction) ----------------------------------------------------------
    def _find(self, table: str, column: str, value: object) -> Any | None:
        with self.api.ovsdb_connection.lock:
            for r in self.api.tables[table].rows.values():
                if getattr(r, column) == value:
                    return r.uuid
        return None

    def add_tenant(self, name: str) -> None:
        if self._find("Tenant", "name", name) is None:
            self.api.db_create("Tenant", name=name).execute(check_error=True)

    def add_network(self, name: str, tenant: str, vni: int | None = None,
                    subnet: str | None = None, source: str = "cli") -> Network:
        current = self.read()
        if tenant not in {t.name for t in current.tenants}:
            raise InvalidState(f"network {name}.tenant: unknown tenant {tenant!r}")
        if any(n.name == name for n in current.networks):
            raise InvalidState(f"network {name}.name: a network {name!r} already exists")
        chosen = vni if vni is not None else allocate_vni(n.vni for n in current.networks)
        net = Network(name, tenant, chosen, ipaddress.ip_network(subnet) if subnet else None)
        check_declared({t.name: t for t in current.tenants},
                       {n.name: n for n in (*current.networks, net)}, {})
        self.api.db_create(
            "Network", name=name, tenant=tenant, vni=chosen,
            subnet=[str(net.subnet)] if net.subnet else [],
            external_ids={SOURCE_KEY: source},
        ).execute(check_error=True)
        return net

    def delete_network(self, name: str) -> None:
        row = self._find("Network", "name", name)
        if row is None:
            raise InvalidState(f"network {name}: no such network")
        self.api.db_destroy("Network", row).execute(check_error=True)

    def join(self, rec: HostRecord) -> None:
        """Insert or update the host's row (a re-join updates remotes and underlay IP)."""
        cols = dict(system_id=rec.host.system_id, underlay_ip=str(rec.host.underlay_ip),
                    tunnel_types=",".join(rec.host.tunnel_types), ovsdb=rec.ovsdb,
                    openflow=rec.openflow)
        row = self._find("Host", "system_id", rec.host.system_id)
        if row is None:
            self.api.db_create("Host", **cols).execute(check_error=True)
        else:
            self.api.db_set("Host", row, *cols.items()).execute(check_error=True)

    def sync_config(self, tenants: Iterable[Tenant], networks: Iterable[Network]) -> None:
        """Make the config-owned rows equal the config file, in one transaction.

        Rows created by the CLI (source != config) are left alone; a config network whose VNI
        is not given keeps the VNI it already has.
        """
        want_t = {t.name: t for t in tenants}
        want_n = {n.name: n for n in networks}
        with self.api.ovsdb_connection.lock:
            tab = self.api.tables
            have_t = {r.name: r.uuid for r in tab["Tenant"].rows.values()}
            have_n = {r.name: (r.uuid, r.external_ids.get(SOURCE_KEY), r.vni, list(r.subnet),
                               r.tenant)
                      for r in tab["Network"].rows.values()}
        with self.api.transaction(check_error=True) as txn:
            for name in want_t.keys() - have_t.keys():
                txn.add(self.api.db_create("Tenant", name=name))
            for name, (uuid, source, vni, subnet, tenant) in have_n.items():
                if source != "config":
                    continue
                net = want_n.get(name)
                if net is None:
                    txn.add(self.api.db_destroy("Network", uuid))
                    continue
                cols = dict(vni=net.vni, subnet=[str(net.subnet)] if net.subnet else [],
                            tenant=net.tenant)
                if (vni, subnet, tenant) != (cols["vni"], cols["subnet"], cols["tenant"]):
                    txn.add(self.api.db_set("Network", uuid, *cols.items()))
            for name in want_n.keys() - have_n.keys():
                net = want_n[name]
                txn.add(self.api.db_create(
                    "Network", name=name, tenant=net.tenant, vni=net.vni,
                    subnet=[str(net.subnet)] if net.subnet else [],
                    external_ids={SOURCE_KEY: "config"}))
