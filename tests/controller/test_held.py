"""The event-driven round against the full rebuild it replaced (issue 14).

``Held`` (controller/held.py) is fed one host's new view at a time, as the hosts' OVSDB row
events make them, plus Claim table changes and guests' announcements (packet-ins). The oracle
is what the controller computed before, every round, from everything: ``build_state`` over
every view, ``claims_after`` on it, the state rebuilt with the new claims, and
``compute_flows``/``compute_tunnels``/``placement``/``first_seen_after`` on that. After any
random sequence of events the held engine's flows and tunnels equal the definition's, the
per-host diffs it returned take every switch to exactly those flows, and the claims, the
ignored bindings, the first-seen records and the VIF counts are the rebuild's.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.core.migration import PacketIn, claims_after
from controller.core.model import Binding, Host, Network, State, Tenant, TunnelPort
from controller.core.seen import SeenKey, first_seen_after
from controller.held import Held, build_state
from controller.northbound.store import Declared, HostRecord
from controller.pipeline.compute import compute_flows, compute_tunnels
from controller.pipeline.diff import apply_diff
from controller.pipeline.flows import FlowId
from controller.southbound.hostdb import HostView
from tests.support.strategies import mac, topologies


def _declared(state: State) -> Declared:
    hosts = tuple(HostRecord(h, f"tcp:127.0.0.1:{6640 + i}", f"tcp:127.0.0.1:{6650 + i}")
                  for i, h in enumerate(state.hosts.values()))
    return Declared(tuple(state.tenants.values()), tuple(state.networks.values()), hosts, {})


def _view(host: str, bindings: list[Binding], tunnels: list[TunnelPort]) -> HostView:
    return HostView(host, True, tuple(bindings), tuple(tunnels),
                    frozenset(f"vt{t.remote}" for t in tunnels), ())


def _views(state: State) -> dict[str, HostView]:
    return {h: _view(h, [b for b in state.bindings if b.host == h],
                     [t for t in state.tunnels if t.host == h]) for h in state.hosts}


@st.composite
def _host_event(draw: st.DrawFn, state: State, views: Mapping[str, HostView]
                ) -> tuple[str, HostView | None]:
    """One host's rows changed: some of its VIFs and tunnel ports go, others come (a port
    may reuse a freed ofport, have none yet, be a migration's second half ...)."""
    host = draw(st.sampled_from(sorted(state.hosts)))
    if draw(st.integers(0, 9)) == 0:
        return host, None  # its view becomes unusable (a wrong system-id)
    old = views.get(host)
    bindings = [b for b in (old.bindings if old else ()) if draw(st.integers(0, 3)) > 0]
    used = {b.ofport for b in bindings}
    known = sorted({b.iface_id for v in views.values() for b in v.bindings})
    nets = sorted(state.networks) + ["undeclared"]
    for _ in range(draw(st.integers(0, 2))):
        free = [p for p in range(1, 10) if p not in used]
        port = draw(st.sampled_from(free + [-1]))
        if port > 0:
            used.add(port)
        iface = draw(st.sampled_from(known + ["new-a", "new-b"]))
        net = draw(st.sampled_from(nets))
        owner = state.networks[net].tenant if net in state.networks else None
        ip = ipaddress.ip_address(f"198.19.0.{draw(st.integers(1, 4))}")
        bindings.append(Binding(iface, host, mac(draw(st.integers(0, 5))), net, port, (ip,),
                                active=draw(st.integers(0, 5)) > 0,
                                since=float(draw(st.integers(0, 3))),
                                tenant=draw(st.sampled_from([None, owner, "t-other"]))))
    tunnels = [t for t in (old.tunnels if old else ()) if draw(st.integers(0, 3)) > 0]
    have = {t.remote for t in tunnels}
    for r in sorted(state.hosts):
        if r != host and r not in have and draw(st.integers(0, 2)) == 0:
            port = draw(st.sampled_from([1000 + int(r[1:]), 2000 + int(r[1:]), -1]))
            if port not in used:
                tunnels.append(TunnelPort(host, r, port, draw(st.sampled_from([None, True]))))
    return host, _view(host, bindings, tunnels)


def _oracle(declared: Declared, views: Mapping[str, HostView], claims: Mapping[str, str],
            packet_ins: list[PacketIn]) -> State:
    """The old round: a whole state, its claims, the state again with them."""
    state = build_state(declared, views, claims)
    new_claims = claims_after(claims, state, packet_ins)
    if new_claims != dict(claims):
        state = build_state(declared, views, new_claims)
    return state


def _ids(state: State, host: str) -> frozenset[FlowId]:
    return frozenset(f.ident for f in compute_flows(state, host))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(topologies(), st.data())
def test_event_rounds_equal_the_full_rebuild(start: State, data: st.DataObject) -> None:
    declared = _declared(start)
    joined = frozenset(start.hosts)
    views = _views(start)
    held = Held()
    for h, v in views.items():
        held.set_view(h, v)
    claims: dict[str, str] = dict(start.claims)
    stored: dict[SeenKey, float] = {}
    switches: dict[str, frozenset[FlowId]] = {}
    before = State.build(start.tenants.values(), start.networks.values(), start.hosts.values())
    for round_no in range(data.draw(st.integers(1, 8), label="rounds")):
        if round_no:
            for _ in range(data.draw(st.integers(0, 3), label="hosts changed")):
                host, view = data.draw(_host_event(start, views), label="event")
                if view is None:
                    views.pop(host, None)
                else:
                    views[host] = view
                held.set_view(host, view)
            if data.draw(st.booleans(), label="claim table edited") and claims:
                del claims[data.draw(st.sampled_from(sorted(claims)))]
        # guests announcing themselves from a standby port (a migration's destination)
        standby = sorted(build_state(declared, views, claims).placed.standby,
                         key=lambda b: (b.iface_id, b.host))
        packet_ins = [PacketIn(b.host, b.ofport, b.mac, 0x8035) for b in standby
                      if data.draw(st.booleans(), label="announced")]
        want = _oracle(declared, views, claims, packet_ins)
        want_seen = first_seen_after(stored, want.bindings, frozenset(views), joined)
        full = data.draw(st.integers(0, 4), label="audit") == 0
        step = held.step(declared, claims, stored, packet_ins, full=full)
        engine = held.engine
        assert engine is not None
        assert dict(step.claims) == dict(want.claims)
        for h in want.hosts:
            assert engine.flows(h) == compute_flows(want, h)
            assert engine.tunnels(h) == compute_tunnels(want, h)
            if step.rebuilt or h not in switches:
                switches[h] = _ids(want, h)  # a new engine: every switch diffed whole
            elif h in step.update.flows:
                switches[h] = apply_diff(switches[h], step.update.flows[h])
            assert switches[h] == _ids(want, h), f"{h}: the diffs do not chain"
        assert held.state() == want
        assert {(b.host, b.iface_id, why) for b, why in held.ignored()} == {
            (b.host, b.iface_id, why) for b, why in want.placed.ignored}
        pairs = {(b.iface_id, b.host) for b in want.bindings}
        old_pairs = {(b.iface_id, b.host) for b in before.bindings}
        if not step.rebuilt:
            assert (step.vifs_added, step.vifs_removed) == (
                len(pairs - old_pairs), len(old_pairs - pairs))
            assert step.changed == (
                set(want.bindings) != set(before.bindings)
                or set(want.tunnels) != set(before.tunnels)
                or dict(want.claims) != dict(before.claims))
        for key in step.seen_drop:
            stored.pop(key, None)
        stored.update(step.seen_set)
        assert stored == want_seen
        claims = dict(step.claims)  # the controller writes them back
        before = want


def test_a_round_reads_only_the_hosts_whose_rows_changed() -> None:
    """One VIF plugged on one host of many: the step looks at that host alone, and the diff
    goes to the hosts of that VIF's network only."""
    hosts = [f"h{i}" for i in range(50)]
    start = State.build(
        [Tenant("t")], [Network("n0", "t", 100), Network("n1", "t", 101)],
        [Host(h, ipaddress.ip_address(f"198.18.1.{i + 1}")) for i, h in enumerate(hosts)],
        [Binding(f"v{i}", h, mac(i), f"n{i % 2}", 1, (ipaddress.ip_address(f"198.19.1.{i + 1}"),))
         for i, h in enumerate(hosts)])
    declared = _declared(start)
    held = Held()
    views = _views(start)
    for h, v in views.items():
        held.set_view(h, v)
    stored = dict(held.step(declared, {}, {}).seen_set)
    plugged = Binding("new", "h0", mac(200), "n0", 2, (ipaddress.ip_address("198.19.2.1"),))
    held.set_view("h0", _view("h0", [*views["h0"].bindings, plugged], []))
    assert held.dirty == {"h0"}
    step = held.step(declared, {}, stored)
    assert step.hosts == {"h0"} and not step.rebuilt and step.changed
    assert set(step.update.flows) == {h for i, h in enumerate(hosts) if i % 2 == 0}
    assert step.seen_set == {("h0", "new", 2): 0.0} and step.vifs_added == 1
