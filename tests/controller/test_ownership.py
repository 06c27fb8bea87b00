"""Host leases (controller/ownership.py): which instance programs which host, and the role
generation each takeover gives OVS to fence the previous owner with. ``plan`` is pure, so the
cases are plain values: the lease rows as read, the instance, the time."""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest
from ovsdbapp import exceptions as ovsdbapp_exceptions

from controller.daemon import parser
from controller.northbound.store import Store, StoreServer, WriteRaced, _raced_as
from controller.service import _database_away
from hooks.ovsdb import connect as ovsdb
from tests.support.poll import until
from controller.liveness import SETTLE, Verdict, decide, lock_name
from controller.ownership import Held, Lease, Ownership, Plan, plan

def test_a_free_host_is_taken_with_generation_one() -> None:
    p = plan({}, {}, ["h1"], "a", (), 100.0)
    assert p == Plan(keep={}, take={"h1": Lease("h1", "a", 1)})
    assert p.generations() == {"h1": 1}


def test_the_holder_keeps_its_generation_and_writes_no_host_row() -> None:
    # a renewal writes the instance's one expiry, whatever the number of hosts it holds
    leases = {f"h{i}": Lease(f"h{i}", "a", 4) for i in range(100)}
    p = plan(leases, {"a": 101.0}, list(leases), "a", set(leases), 100.0)
    assert p.take == {}
    assert p.generations() == {h: 4 for h in leases}


def test_a_live_lease_of_another_instance_is_left_alone() -> None:
    leases = {"h1": Lease("h1", "a", 4)}
    assert plan(leases, {"a": 101.0}, ["h1"], "b", (), 100.0) == Plan({}, {})
    assert plan(leases, {"a": 101.0}, ["h1"], "b", (), 100.999) == Plan({}, {})


def test_a_host_whose_owner_expired_is_taken_over_with_the_next_generation() -> None:
    leases = {"h1": Lease("h1", "a", 4), "h2": Lease("h2", "c", 7)}
    expiries = {"a": 101.0, "c": 200.0}
    assert plan(leases, expiries, ["h1", "h2"], "b", (), 101.0) == Plan({}, {"h1": Lease("h1", "b", 5)})
    # an owner with no Instance row at all (never renewed, or its row deleted) is expired too
    assert plan({"h1": Lease("h1", "x", 2)}, {}, ["h1"], "b", (), 1.0).take == {"h1": Lease("h1", "b", 3)}


def test_a_restarted_instance_takes_its_own_lease_back_at_once_with_a_new_generation() -> None:
    # its previous process may still have a session on the switch: the new generation fences it
    leases = {"h1": Lease("h1", "a", 4)}
    assert plan(leases, {"a": 150.0}, ["h1"], "a", (), 100.0) == Plan({}, {"h1": Lease("h1", "a", 5)})


def test_a_live_lease_of_an_instance_known_to_be_gone_is_taken_at_once() -> None:
    leases = {"h1": Lease("h1", "a", 4), "h2": Lease("h2", "c", 2)}
    expiries = {"a": 101.0, "c": 101.0}
    assert plan(leases, expiries, ["h1", "h2"], "b", (), 100.0, gone={"a"}) == Plan(
        {}, {"h1": Lease("h1", "b", 5)})
    # news of one's own death is nobody's to act on
    assert plan(leases, expiries, ["h1"], "a", {"h1"}, 100.0, gone={"a"}) == Plan({"h1": 4}, {})


def test_liveness_lock_names_are_ovsdb_ids_and_distinct() -> None:
    names = ["dc1-ctl", "dc1_ctl", "dc1.ctl", "ctl-ä", "a"]
    locks = [lock_name(n) for n in names]
    assert all(re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", l) for l in locks), locks
    assert len(set(locks)) == len(names)


def test_a_liveness_lock_grant_is_believed_only_on_a_settled_connection() -> None:
    assert decide(False, 100.0) == Verdict(gone=False, drop=False)  # the holder lives
    assert decide(True, SETTLE) == Verdict(gone=True, drop=True)
    assert decide(True, SETTLE - 0.1) == Verdict(gone=False, drop=True)  # a reconnection race


def test_only_joined_hosts_are_leased() -> None:
    leases = {"gone": Lease("gone", "a", 2)}
    assert plan(leases, {"a": 103.0}, ["h2"], "a", {"gone"}, 100.0) == Plan({}, {"h2": Lease("h2", "a", 1)})


def test_a_held_lease_counts_only_until_it_lapses() -> None:
    held = Held({"h1": 3}, until=102.5)
    assert held.owned(102.4) == {"h1": 3}
    assert held.owned(102.5) == {}


def test_the_daemon_takes_every_cluster_member_and_refuses_a_bad_one(
        capsys: pytest.CaptureFixture[str]) -> None:
    remotes = "ssl:198.18.0.1:6641,ssl:198.18.0.2:6641,ssl:198.18.0.3:6641"
    args = parser().parse_args(["--db", remotes, "--instance", "c1", "--lease-ttl", "5"])
    assert (args.db, args.instance, args.lease_ttl) == (remotes, "c1", 5.0)
    with pytest.raises(SystemExit):
        parser().parse_args(["--db", "ssl:198.18.0.1:6641,db.example:6641"])
    assert "'db.example:6641' is not a remote" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser().parse_args(["--db", remotes, "--lease-ttl", "1"])


def test_a_write_that_failed_on_a_connected_database_is_a_bug_but_a_timeout_is_not(
        store_server: StoreServer) -> None:
    store = Store(store_server.remote)
    try:
        refused = RuntimeError('OVSDB Error: {"error":"constraint violation"}')
        assert not _database_away(refused, store)  # the loop crashes on it (an invariant)
        assert _database_away(RuntimeError("OVS transaction timed out"), store)
        assert _database_away(ovsdbapp_exceptions.TimeoutException(commands=[], timeout=10,
                                                                   cause="queue"), store)
        store_server.stop()
        until("the IDL sees the database gone", lambda: not ovsdb.is_connected(store.api))
        assert _database_away(refused, store)  # while it is away, any failed write waits
    finally:
        store.close()


def _first_seen(store: Store) -> dict[tuple[str, str, int], float]:
    with store.api.ovsdb_connection.lock:
        return {(r.host, r.iface_id, r.ofport): r.since
                for r in store.api.tables["FirstSeen"].rows.values()}


def test_an_instance_writes_claims_only_for_the_hosts_it_programs(store_server: StoreServer) -> None:
    a, b = Store(store_server.remote), Store(store_server.remote)
    try:
        a.write_claims({"vif1": "h1", "vif2": "h1", "vif9": "h2"}, {"h1"})  # vif9's host is b's
        until("a's claims", lambda: b.read().claims == {"vif1": "h1", "vif2": "h1"})
        b.write_claims({"vif3": "h2", "vif1": "h2"}, {"h2"})  # moves vif1 to b's host
        until("b's claims", lambda: a.read().claims == {"vif1": "h2", "vif2": "h1", "vif3": "h2"})
        a.write_claims({"vif1": "h2", "vif3": "h2"}, {"h1"})  # drops its own vif2 only
        until("a's drop", lambda: b.read().claims == {"vif1": "h2", "vif3": "h2"})
    finally:
        a.close()
        b.close()


def test_a_row_inserted_by_another_instance_first_is_a_lost_race_not_a_bug(
        store_server: StoreServer) -> None:
    """What the server answers when two instances insert the same FirstSeen row (one of them
    a moment before its view had the other's): ``WriteRaced``, which the round takes as "next
    round"; any other refusal stays an error the controller crashes on."""
    store = Store(store_server.remote)
    try:
        key = {"host": "h1", "iface_id": "vif1", "ofport": 1}
        with pytest.raises(WriteRaced, match="FirstSeen"):
            with _raced_as("FirstSeen"), store.api.transaction(check_error=True) as txn:
                txn.add(store.api.db_create("FirstSeen", since=1.0, **key))
                txn.add(store.api.db_create("FirstSeen", since=2.0, **key))
        with pytest.raises(RuntimeError) as other:
            with _raced_as("Claim"), store.api.transaction(check_error=True) as txn:
                txn.add(store.api.db_create("FirstSeen", since=1.0, **key))
                txn.add(store.api.db_create("FirstSeen", since=2.0, **key))
        assert not isinstance(other.value, WriteRaced)
        assert _first_seen(store) == {}  # nothing was written
    finally:
        store.close()


def _rows(server: StoreServer, table: str, key: str) -> dict[str, tuple[str, dict[str, object]]]:
    """``key`` -> (``_version``, row) of every row of ``table``, read by ovsdb-client."""
    txn = json.dumps(["Veil", {"op": "select", "table": table, "where": []}])
    out = subprocess.run(["ovsdb-client", "transact", server.remote, txn], check=True,
                         capture_output=True, text=True, timeout=10).stdout
    return {r[key]: (r["_version"][1], r) for r in json.loads(out)[0]["rows"]}


def test_a_renewal_writes_one_row_however_many_hosts_and_a_survivor_takes_over_at_expiry(
        store_server: StoreServer) -> None:
    """The idle cost of the leases does not grow with the fabric: a renewal rewrites the
    instance's own Instance row and leaves every held host's Lease row as it is (its
    ``_version`` unchanged); when that instance stops renewing, another takes every host at its
    expiry with the next generation."""
    hosts = [f"h{i}" for i in range(6)]
    txn = json.dumps(["Veil", *({"op": "insert", "table": "Host", "row": {"system_id": h}}
                                for h in hosts)])
    subprocess.run(["ovsdb-client", "transact", store_server.remote, txn], check=True,
                   capture_output=True, timeout=10)
    a = Ownership(store_server.remote, "a", time.time, lambda: None, ttl=1.5)
    b = Ownership(store_server.remote, "b", time.time, lambda: None, ttl=1.5)
    try:
        a.start()
        until("a holds every host", lambda: set(a.owned(time.time())) == set(hosts))
        leases = _rows(store_server, "Lease", "host")
        assert {h: r["owner"] for h, (_, r) in leases.items()} == {h: "a" for h in hosts}
        assert {r["generation"] for _, r in leases.values()} == {1}
        first = _rows(store_server, "Instance", "name")["a"][0]
        seen = [first]

        def renewed_twice() -> bool:
            v = _rows(store_server, "Instance", "name")["a"][0]
            if v != seen[-1]:
                seen.append(v)
            return len(seen) >= 3
        until("two more renewals of a's Instance row", renewed_twice)
        assert {h: v for h, (v, _) in _rows(store_server, "Lease", "host").items()} == {
            h: v for h, (v, _) in leases.items()}, "a renewal rewrote host lease rows"
        assert set(a.owned(time.time())) == set(hosts)
        a.stop()  # no more renewals: its row expires within the TTL
        b.start()
        until("b takes every host", lambda: b.owned(time.time()) == {h: 2 for h in hosts})
        assert {r["owner"] for _, r in _rows(store_server, "Lease", "host").values()} == {"b"}
    finally:
        a.stop()
        b.stop()
