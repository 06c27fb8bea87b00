"""Incremental flow computation: an event costs what it touches, not what the fabric holds.

``compute.compute_flows(state, host)`` is the definition; this engine keeps the indexes it
needs (bindings per iface-id, forwarded members and hosts per network, tunnel ports per host)
and, per event, recomputes only the parts of the flows the event can change: the VIF parts of
the bindings that came, went or changed role, and the (host, network) parts of the networks
whose members or hosts changed, on those networks' hosts. It returns, per host, the ``FlowDiff``
that takes a switch holding the old desired flows to the new ones.

Declared changes (tenants, networks, hosts) are rare: the caller builds a new engine for them
(a full recompute). A property test checks that after any sequence of events the engine's flows
and tunnels equal the full computation on the same state, and that its diffs chain.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, Protocol

from controller.pipeline import tables as P
from controller.pipeline.compute import (
    DEFAULT_FLOWS,
    TunnelSpec,
    arp_flows,
    bum_flows,
    garp_flows,
    member_flows,
    standby_flows,
    tunnel_kind,
    tunnel_name,
    unique_ips,
    vif_dhcp_flows,
    vif_flows,
)
from controller.pipeline.diff import FlowDiff
from controller.pipeline.flows import Flow
from controller.core.model import (
    Binding,
    Host,
    InvalidState,
    Network,
    State,
    Tenant,
    TunnelPort,
    TunnelType,
    is_migration_twin,
    not_a_migration,
    unforwardable,
)



@dataclass(frozen=True)
class Changes:
    """Observed facts that appeared and disappeared since the last update.

    ``claims`` is the whole new claims mapping, or None when it did not change.
    """

    added: tuple[Binding, ...] = ()
    removed: tuple[Binding, ...] = ()
    tunnels_added: tuple[TunnelPort, ...] = ()
    tunnels_removed: tuple[TunnelPort, ...] = ()
    claims: Mapping[str, str] | None = None

    @staticmethod
    def between(old: State, new: State) -> Changes:
        """The observed difference of two states with the same declarations (O(size))."""
        ob, nb = set(old.bindings), set(new.bindings)
        ot, nt = set(old.tunnels), set(new.tunnels)
        return Changes(
            tuple(nb - ob), tuple(ob - nb), tuple(nt - ot), tuple(ot - nt),
            None if dict(old.claims) == dict(new.claims) else new.claims,
        )


def same_declarations(a: State, b: State) -> bool:
    """Whether ``b`` can be reached from ``a`` by events (else: build a new engine)."""
    return (dict(a.tenants), dict(a.networks), dict(a.hosts)) == (
        dict(b.tenants), dict(b.networks), dict(b.hosts))


@dataclass(frozen=True)
class Update:
    """What one event changed: per host the flow diff, and hosts whose tunnels may change."""

    flows: Mapping[str, FlowDiff]
    tunnel_hosts: frozenset[str]


class _Sink(Protocol):
    def swap(self, old: Iterable[Flow], new: Iterable[Flow]) -> None: ...


class _Discard:
    """Where the full recompute sends part changes: nobody needs them as a diff."""

    def swap(self, old: Iterable[Flow], new: Iterable[Flow]) -> None:
        pass


_DISCARD: Final = _Discard()
_NO_SPEC: Final = TunnelSpec("", "", "", "geneve")  # (``Engine._specs``: not computed yet)


class Pending:
    """What events applied so far changed, per host (``Engine.apply``); ``update()`` is the
    diff from each host's flows before the first event to its flows after the last."""

    def __init__(self) -> None:
        self.hosts: dict[str, _HostDelta] = {}
        self.tunnel_hosts: frozenset[str] = frozenset()

    def at(self, host: str) -> _Sink:
        return self.hosts.setdefault(host, _HostDelta())

    def update(self) -> Update:
        flows = {h: d for h, d in ((h, x.diff()) for h, x in self.hosts.items()) if d}
        return Update(MappingProxyType(flows), self.tunnel_hosts)


@dataclass
class _HostDelta:
    add: set[Flow] = field(default_factory=set)
    delete: set[Flow] = field(default_factory=set)

    def swap(self, old: Iterable[Flow], new: Iterable[Flow]) -> None:
        """A part's flows went from ``old`` to ``new``: the net change since the first swap
        (a flow taken out and put back is no change; put back and taken out again, a delete:
        a round that applies several events may do both)."""
        old_s, new_s = set(old), set(new)
        for f in old_s - new_s:
            if f in self.add:
                self.add.discard(f)
            else:
                self.delete.add(f)
        for f in new_s - old_s:
            if f in self.delete:
                self.delete.discard(f)
            else:
                self.add.add(f)

    def diff(self) -> FlowDiff:
        add, delete = self.add, self.delete
        P.check_flows(add)
        return FlowDiff(tuple(sorted(add, key=lambda f: (f.table, -f.priority, f.cookie))),
                        tuple(sorted(f.ident for f in delete)))


@dataclass(slots=True)
class _NetPart:
    """One host's flows for one of its networks, kept in pieces that change separately."""

    l2: dict[Binding, tuple[Flow, ...]]  # per member with a path: L2 entry; from a remote
    # member's host's tunnel: classify, tunnel security
    bum: tuple[Flow, ...]
    garp: tuple[Flow, ...]  # local owners' gratuitous ARP

    @staticmethod
    def of(host: str, vni: int, members: tuple[Binding, ...], tun_port: Mapping[str, int],
           reactive: bool = False) -> _NetPart:
        l2 = {b: fs for b in members if (fs := member_flows(host, vni, b, tun_port, reactive))}
        return _NetPart(l2, bum_flows(host, vni, members, tun_port), _garp(host, vni, members))

    def flows(self) -> list[Flow]:
        return [*(f for fs in self.l2.values() for f in fs), *self.bum, *self.garp]

    def members_changed(self, host: str, vni: int, left: set[Binding], joined: set[Binding],
                        members: tuple[Binding, ...], tun_port: Mapping[str, int],
                        reactive: bool = False) -> tuple[list[Flow], list[Flow]]:
        """Update in place; the flows that went and the flows that came."""
        old = [f for b in left for f in self.l2.pop(b, ())]
        new: list[Flow] = []
        for b in joined:
            fs = member_flows(host, vni, b, tun_port, reactive)
            if fs:
                self.l2[b] = fs
                new.extend(fs)
        old.extend((*self.bum, *self.garp))
        self.bum = bum_flows(host, vni, members, tun_port)
        self.garp = _garp(host, vni, members)
        new.extend((*self.bum, *self.garp))
        return old, new


def _garp(host: str, vni: int, members: tuple[Binding, ...]) -> tuple[Flow, ...]:
    unique = unique_ips(members)
    return tuple(f for b in members if b.host == host for f in garp_flows(vni, b, unique))


class Engine:
    """Desired flows and tunnels of every host, kept up to date event by event."""

    def __init__(self, tenants: Iterable[Tenant], networks: Iterable[Network],
                 hosts: Iterable[Host]) -> None:
        t = {x.name: x for x in tenants}
        n = {x.name: x for x in networks}
        h = {x.system_id: x for x in hosts}
        State.build(t.values(), n.values(), h.values())  # check the declarations
        self.tenants: Mapping[str, Tenant] = MappingProxyType(t)
        self.networks: Mapping[str, Network] = MappingProxyType(n)
        self.hosts: Mapping[str, Host] = MappingProxyType(h)
        self._bindings: dict[str, set[Binding]] = {}  # iface-id -> every binding reported
        self._tunnels: dict[tuple[str, str], TunnelPort] = {}
        self._ports: dict[tuple[str, int], Binding | TunnelPort] = {}  # (host, ofport) -> owner
        self._claims: dict[str, str] = {}
        self._chosen: dict[str, Binding] = {}  # iface-id -> binding before the MAC rule
        self._chosen_in: dict[str, dict[str, Binding]] = {}  # network -> iface-id -> chosen
        self._members: dict[str, tuple[Binding, ...]] = {}  # network -> forwarded, iface order
        self._active: dict[str, Binding] = {}  # iface-id -> forwarded binding
        self._placed: dict[str, Binding] = {}  # iface-id -> binding whose VIF part is out
        self._standby: dict[str, tuple[Binding, ...]] = {}  # iface-id -> live standby
        self._standby_in: dict[str, set[Binding]] = {}  # network -> live standby bindings
        self._net_hosts: dict[str, frozenset[str]] = {}
        self._host_nets: dict[str, set[str]] = {}
        self._tun_port: dict[str, dict[str, int]] = {}  # host -> remote -> ofport
        self._arp: dict[str, tuple[Flow, ...]] = {}
        self._parts: dict[tuple[str, str], _NetPart] = {}  # (host, network)
        self._local: dict[str, set[Binding]] = {}  # host -> its forwarded VIFs
        self._local_standby: dict[str, set[Binding]] = {}
        # host -> ``tunnels(host)``, kept until an event names the host in ``tunnel_hosts``
        # (a round asks every host it programs: ~1 ms each at 100 peers, issue 14)
        self._wanted: dict[str, frozenset[TunnelSpec]] = {}
        # (local tunnel types, remote) -> the port towards it: a spec depends on nothing else
        self._specs: dict[tuple[tuple[TunnelType, ...], str], TunnelSpec | None] = {}

    @staticmethod
    def of(state: State) -> Engine:
        """An engine holding ``state``: every shared part computed (the full recompute); a
        host's whole flow set is then ``flows(host)``, assembled when a switch needs it."""
        engine = Engine(state.tenants.values(), state.networks.values(), state.hosts.values())
        engine._apply(Changes(state.bindings, (), state.tunnels, (), state.claims),
                      lambda host: _DISCARD)
        return engine

    # -- reading ----------------------------------------------------------------------------
    def flows(self, host: str) -> frozenset[Flow]:
        """Equal to ``compute_flows(self.state(), host)``."""
        out: list[Flow] = list(DEFAULT_FLOWS)
        for b in self._local.get(host, ()):
            out.extend(self._vif(b))
        for b in self._local_standby.get(host, ()):
            out.extend(standby_flows(b))
        for n in self._host_nets.get(host, ()):
            out.extend(self._arp.get(n, ()))
            out.extend(self._parts[(host, n)].flows())
        return P.check_flows(out)

    def tunnels(self, host: str) -> frozenset[TunnelSpec]:
        """Equal to ``compute_tunnels(self.state(), host)``."""
        kept = self._wanted.get(host)
        if kept is None:
            kept = self._wanted[host] = self._compute_tunnels(host)
        return kept

    def _compute_tunnels(self, host: str) -> frozenset[TunnelSpec]:
        local = self.hosts.get(host)
        if local is None:
            return frozenset()
        peers = {r for n in self._host_nets.get(host, ()) if not self.networks[n].reactive
                 for r in self._net_hosts[n]} - {host}
        specs = set()
        for rid in peers:
            spec = self._specs.get((local.tunnel_types, rid), _NO_SPEC)
            if spec is _NO_SPEC:  # (the declarations are fixed for an engine's life)
                remote = self.hosts[rid]
                kind = tunnel_kind(local, remote)
                spec = None if kind is None else TunnelSpec(
                    tunnel_name(remote.underlay_ip, kind), rid, str(remote.underlay_ip), kind)
                self._specs[(local.tunnel_types, rid)] = spec
            if spec is not None:
                specs.add(spec)
        return frozenset(specs)

    def network_hosts(self, network: str) -> frozenset[str]:
        """The hosts with live bindings in ``network``."""
        return self._net_hosts.get(network, frozenset())

    def forwarded(self, iface: str) -> Binding | None:
        """The binding ``iface``'s traffic goes to, if any."""
        return self._active.get(iface)

    @property
    def claims(self) -> Mapping[str, str]:
        return MappingProxyType(self._claims)

    def tunnel_remotes(self, host: str) -> frozenset[str]:
        """The remotes ``host`` has a tunnel port (with an ofport) towards."""
        return frozenset(self._tun_port.get(host, ()))

    def state(self) -> State:
        """The whole state this engine holds (O(size): for tests and tools)."""
        return State.build(self.tenants.values(), self.networks.values(), self.hosts.values(),
                           (b for bs in self._bindings.values() for b in bs),
                           self._tunnels.values(), self._claims)

    # -- one event --------------------------------------------------------------------------
    def update(self, ch: Changes) -> Update:
        """Apply ``ch``; return per touched host the diff from its old flows to its new ones."""
        pending = Pending()
        self.apply(ch, pending)
        return pending.update()

    def apply(self, ch: Changes, into: Pending) -> None:
        """Apply ``ch``, adding what it changed to ``into``: several events applied into one
        ``Pending`` give one diff per host, from the flows before the first to those after the
        last (a round that learns a claim from the placement its bindings made). Broken input
        (``InvalidState``) is refused before anything changes."""
        changed = self._apply(ch, into.at)
        for h in changed:
            self._wanted.pop(h, None)
        into.tunnel_hosts |= changed

    @property
    def standby(self) -> tuple[Binding, ...]:
        """The live standby bindings (a migration's other half), as ``placement`` has them."""
        return tuple(b for bs in self._standby.values() for b in bs)

    @property
    def active(self) -> Mapping[str, Binding]:
        """iface-id -> forwarded binding (``placement(...).active``)."""
        return MappingProxyType(self._active)

    def bindings_of(self, iface: str) -> frozenset[Binding]:
        """Every binding reported for ``iface``."""
        return frozenset(self._bindings.get(iface, ()))

    def chosen_in(self, network: str) -> frozenset[str]:
        """The iface-ids whose chosen binding is in ``network`` (before the one-MAC rule)."""
        return frozenset(self._chosen_in.get(network, ()))

    def ignored(self, iface: str) -> tuple[tuple[Binding, str], ...]:
        """``iface``'s bindings ``placement`` ignores, each with its reason (the same reasons,
        from the engine's indexes: O(the iface's bindings and its network's size))."""
        out: list[tuple[Binding, str]] = []
        cands: list[Binding] = []
        for b in sorted(self._bindings.get(iface, ()), key=lambda b: (b.host, b.ofport)):
            if (why := unforwardable(b, self.networks, self.hosts)) is not None:
                out.append((b, why))
            else:
                cands.append(b)
        chosen = self._chosen.get(iface)
        if chosen is None:
            return tuple(out)
        for b in cands:
            if b != chosen and not is_migration_twin(chosen, b):
                out.append((b, not_a_migration(chosen)))
        if self._active.get(iface) is not chosen:
            first = next(m for m in self._members.get(chosen.network, ()) if m.mac == chosen.mac)
            out.append((chosen, f"MAC {chosen.mac} is already VIF {first.iface_id} in "
                                f"{chosen.network}"))
        return tuple(out)

    def _apply(self, ch: Changes, at: Callable[[str], _Sink]) -> frozenset[str]:
        """Apply ``ch``, telling ``at(host)`` each part that changed; the hosts whose tunnels
        may have changed."""
        self._check_ports(ch)
        touched: set[str] = set()
        old_ports = {t.host: dict(self._tun_port.get(t.host, {}))
                     for t in (*ch.tunnels_added, *ch.tunnels_removed)}
        for b in ch.removed:
            self._bindings[b.iface_id].remove(b)  # KeyError: it was never added (caller bug)
            if not self._bindings[b.iface_id]:
                del self._bindings[b.iface_id]
            if b.ofport > 0:
                del self._ports[(b.host, b.ofport)]
            touched.add(b.iface_id)
        for t in ch.tunnels_removed:
            if self._tunnels.pop((t.host, t.remote)) != t:
                raise KeyError(f"tunnel {t} was not the one held")
            if t.ofport > 0:
                del self._ports[(t.host, t.ofport)]
                del self._tun_port[t.host][t.remote]
        for b in ch.added:
            self._take_port(b.host, b.ofport, b)
            self._bindings.setdefault(b.iface_id, set()).add(b)
            touched.add(b.iface_id)
        for t in ch.tunnels_added:
            if (t.host, t.remote) in self._tunnels:
                raise KeyError(f"tunnel {t.host} -> {t.remote} is already held")
            self._take_port(t.host, t.ofport, t)
            self._tunnels[(t.host, t.remote)] = t
            if t.ofport > 0:
                self._tun_port.setdefault(t.host, {})[t.remote] = t.ofport
        if ch.claims is not None:
            new_claims = dict(ch.claims)
            touched |= {k for k in self._claims.keys() | new_claims.keys()
                        if self._claims.get(k) != new_claims.get(k)}
            self._claims = new_claims

        # 1. the choice per iface-id (claim, else the oldest binding)
        nets: set[str] = set()
        for iface in touched:
            old, new = self._chosen.pop(iface, None), self._choose(iface)
            if old is not None:
                del self._chosen_in[old.network][iface]
                nets.add(old.network)
            if new is not None:
                self._chosen[iface] = new
                self._chosen_in.setdefault(new.network, {})[iface] = new
                nets.add(new.network)
        # 2. one MAC per network decides who is forwarded
        old_members = {n: self._members.get(n, ()) for n in nets}
        roles = set(touched)
        for n in nets:
            members = self._mac_rule(n)
            for b in old_members[n]:
                if self._active.get(b.iface_id) is b:
                    del self._active[b.iface_id]
            for b in members:
                self._active[b.iface_id] = b
            if members:
                self._members[n] = members
            else:
                self._members.pop(n, None)
            roles |= {b.iface_id for b in set(old_members[n]) ^ set(members)}
        # 3. each iface's forwarded and standby bindings: VIF parts on their hosts
        host_nets_changed: set[str] = set()
        for iface in roles:
            self._set_roles(iface, at, host_nets_changed)
        changed_members = {n for n in nets if old_members[n] != self._members.get(n, ())}
        # 4. hosts per network; tunnel port maps
        old_hosts = {n: self._net_hosts.get(n, frozenset()) for n in host_nets_changed | nets}
        for n in old_hosts:
            hosts = frozenset({b.host for b in self._members.get(n, ())}
                              | {b.host for b in self._standby_in.get(n, ())})
            if hosts:
                self._net_hosts[n] = hosts
            else:
                self._net_hosts.pop(n, None)
            for h in old_hosts[n] - hosts:
                self._host_nets[h].discard(n)
            for h in hosts - old_hosts[n]:
                self._host_nets.setdefault(h, set()).add(n)
        moved = {n for n in old_hosts if old_hosts[n] != self._net_hosts.get(n, frozenset())}
        tun_hosts = {h for h, before in old_ports.items() if before != self._tun_port.get(h, {})}
        # 5. ARP parts (the same on every host of a network), diffed once per network
        for n in changed_members | moved:
            before, after = old_hosts.get(n, frozenset()), self._net_hosts.get(n, frozenset())
            old_arp = self._arp.pop(n, ())
            new_arp = arp_flows(self.networks[n], self._members.get(n, ())) if after else ()
            if new_arp:
                self._arp[n] = new_arp
            gone, came = set(old_arp) - set(new_arp), set(new_arp) - set(old_arp)
            for h in before | after:
                if h in before and h in after:
                    at(h).swap(gone, came)
                else:
                    at(h).swap(old_arp if h in before else (), new_arp if h in after else ())
        # 6. (host, network) parts: whole where the host joined or left the network; else
        # only the pieces that depend on what changed (its hosts, members, tunnel ports)
        whole = {(h, n) for n in moved for h in old_hosts[n] ^ self._net_hosts.get(n, frozenset())}
        for h, n in whole:
            old_part = self._parts.pop((h, n), None)
            new_part = None
            if h in self._net_hosts.get(n, ()):
                new_part = _NetPart.of(h, self.networks[n].vni, self._members.get(n, ()),
                                       self._tun_port.get(h, {}), self.networks[n].reactive)
                self._parts[(h, n)] = new_part
            at(h).swap(old_part.flows() if old_part else (), new_part.flows() if new_part else ())
        retunneled: dict[str, set[str]] = {}  # host -> remotes whose tunnel port changed
        for h in tun_hosts:
            was, now = old_ports[h], self._tun_port.get(h, {})
            retunneled[h] = {r for r in was.keys() | now.keys() if was.get(r) != now.get(r)}
        pieces = {(h, n) for n in changed_members | moved for h in self._net_hosts.get(n, ())}
        pieces |= {(h, n) for h, rs in retunneled.items() for n in self._host_nets.get(h, ())
                   if rs & self._net_hosts[n]}
        for h, n in pieces - whole:
            part, tun_port, vni = self._parts[(h, n)], self._tun_port.get(h, {}), \
                self.networks[n].vni
            members = self._members.get(n, ())
            remotes = retunneled.get(h, set()) & self._net_hosts[n]
            if n in changed_members:
                old_m, new_m = set(old_members[n]), set(members)
                left, joined = old_m - new_m, new_m - old_m
            else:
                left, joined = set(), set()
            # members behind a changed tunnel port are re-pointed: out and in again
            moved_behind = {b for b in members if b.host in remotes} - joined
            m_out, m_in = part.members_changed(h, vni, left | moved_behind,
                                               joined | moved_behind, members, tun_port,
                                               self.networks[n].reactive)
            at(h).swap(m_out, m_in)
        return frozenset(h for n in moved for h in old_hosts[n] | self._net_hosts.get(n, frozenset()))

    # -- helpers ------------------------------------------------------------------------------
    def _check_ports(self, ch: Changes) -> None:
        """OVS numbers a bridge's ports uniquely: two owners of one ofport is broken input,
        refused before anything changes (the engine stays as it was)."""
        gone: tuple[Binding | TunnelPort, ...] = (*ch.removed, *ch.tunnels_removed)
        came: tuple[Binding | TunnelPort, ...] = (*ch.added, *ch.tunnels_added)
        freed = {(x.host, x.ofport) for x in gone if x.ofport > 0}
        new: dict[tuple[str, int], Binding | TunnelPort] = {}
        for x in came:
            key = (x.host, x.ofport)
            if x.ofport <= 0:
                continue
            other = new.setdefault(key, x)
            if other is x and key in self._ports and key not in freed:
                other = self._ports[key]
            if other is not x:
                raise InvalidState(f"host {x.host}: ofport {x.ofport} is both {other} and {x}")

    def _take_port(self, host: str, ofport: int, owner: Binding | TunnelPort) -> None:
        if ofport > 0:
            self._ports[(host, ofport)] = owner

    def _eligible(self, iface: str) -> list[Binding]:
        """The bindings placement may forward to, in State.build's order."""
        return sorted((b for b in self._bindings.get(iface, ())
                       if unforwardable(b, self.networks, self.hosts) is None),
                      key=lambda b: (b.host, b.ofport))

    def _choose(self, iface: str) -> Binding | None:
        cands = self._eligible(iface)
        if not cands:
            return None
        claimed = self._claims.get(iface)
        chosen = next((b for b in cands if b.host == claimed), None)
        return chosen or min(cands, key=lambda b: (b.since, b.host))

    def _mac_rule(self, net: str) -> tuple[Binding, ...]:
        owner: dict[str, Binding] = {}
        for b in sorted(self._chosen_in.get(net, {}).values(), key=lambda b: (b.since, b.iface_id)):
            owner.setdefault(b.mac, b)
        return tuple(sorted(owner.values(), key=lambda b: b.iface_id))

    def _vif(self, b: Binding) -> tuple[Flow, ...]:
        """The VIF part of forwarded binding ``b`` (``compute._flows``'s two VIF calls)."""
        net = self.networks[b.network]
        return (*vif_flows(b, net.vni, net.reactive), *vif_dhcp_flows(b, net))

    def _set_roles(self, iface: str, at: Callable[[str], _Sink],
                   host_nets_changed: set[str]) -> None:
        """Move ``iface``'s VIF parts to match its new forwarded/standby bindings."""
        old_active = self._placed.get(iface)
        new_active = self._active.get(iface)
        if old_active is not new_active:
            if old_active is not None:
                self._local[old_active.host].discard(old_active)
                at(old_active.host).swap(self._vif(old_active), ())
            if new_active is not None:
                self._local.setdefault(new_active.host, set()).add(new_active)
                at(new_active.host).swap((), self._vif(new_active))
            if new_active is not None:
                self._placed[iface] = new_active
            else:
                del self._placed[iface]
        old_sb = self._standby.get(iface, ())
        new_sb = tuple(b for b in self._eligible(iface)
                       if b is not new_active and is_migration_twin(new_active, b)) \
            if new_active is not None else ()
        if old_sb != new_sb:
            for b in old_sb:
                self._standby_in[b.network].discard(b)
                self._local_standby[b.host].discard(b)
                at(b.host).swap(standby_flows(b), ())
                host_nets_changed.add(b.network)
            for b in new_sb:
                self._standby_in.setdefault(b.network, set()).add(b)
                self._local_standby.setdefault(b.host, set()).add(b)
                at(b.host).swap((), standby_flows(b))
                host_nets_changed.add(b.network)
            if new_sb:
                self._standby[iface] = new_sb
            else:
                self._standby.pop(iface, None)
