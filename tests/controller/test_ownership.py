"""Host leases (controller/ownership.py): which instance programs which host, and the role
generation each takeover gives OVS to fence the previous owner with. ``plan`` is pure, so the
cases are plain values: the lease rows as read, the instance, the time."""

from __future__ import annotations

import re

import pytest
from ovsdbapp import exceptions as ovsdbapp_exceptions

from controller.daemon import parser
from controller.northbound.store import Store, StoreServer, WriteRaced, _raced_as
from controller.service import _database_away
from hooks.ovsdb import connect as ovsdb
from tests.support.poll import until
from controller.liveness import SETTLE, Verdict, decide, lock_name
from controller.ownership import Held, Lease, plan

TTL = 3.0


def test_a_free_host_is_taken_with_generation_one() -> None:
    assert plan({}, ["h1"], "a", (), 100.0, TTL) == {"h1": Lease("h1", "a", 1, 103.0)}


def test_the_holder_renews_and_keeps_its_generation() -> None:
    leases = {"h1": Lease("h1", "a", 4, 101.0)}
    assert plan(leases, ["h1"], "a", {"h1"}, 100.0, TTL) == {"h1": Lease("h1", "a", 4, 103.0)}


def test_a_live_lease_of_another_instance_is_left_alone() -> None:
    leases = {"h1": Lease("h1", "a", 4, 101.0)}
    assert plan(leases, ["h1"], "b", (), 100.0, TTL) == {}
    assert plan(leases, ["h1"], "b", (), 100.999, TTL) == {}


def test_an_expired_lease_is_taken_over_with_the_next_generation() -> None:
    leases = {"h1": Lease("h1", "a", 4, 101.0)}
    assert plan(leases, ["h1"], "b", (), 101.0, TTL) == {"h1": Lease("h1", "b", 5, 104.0)}


def test_a_restarted_instance_takes_its_own_lease_back_at_once_with_a_new_generation() -> None:
    # its previous process may still have a session on the switch: the new generation fences it
    leases = {"h1": Lease("h1", "a", 4, 150.0)}
    assert plan(leases, ["h1"], "a", (), 100.0, TTL) == {"h1": Lease("h1", "a", 5, 103.0)}


def test_a_live_lease_of_an_instance_known_to_be_gone_is_taken_at_once() -> None:
    leases = {"h1": Lease("h1", "a", 4, 101.0), "h2": Lease("h2", "c", 2, 101.0)}
    assert plan(leases, ["h1", "h2"], "b", (), 100.0, TTL, gone={"a"}) == {"h1": Lease("h1", "b", 5, 103.0)}
    # news of one's own death is nobody's to act on
    assert plan(leases, ["h1"], "a", {"h1"}, 100.0, TTL, gone={"a"}) == {"h1": Lease("h1", "a", 4, 103.0)}


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
    leases = {"gone": Lease("gone", "a", 2, 50.0)}
    assert plan(leases, ["h2"], "a", {"gone"}, 100.0, TTL) == {"h2": Lease("h2", "a", 1, 103.0)}


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
