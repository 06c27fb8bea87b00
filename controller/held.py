"""The state the controller's rounds hold, kept from events: a round costs what changed.

The old round rebuilt the whole ``State`` from every host's view and diffed it whole against
the last one (``Changes.between``), so one VIF event cost what the fabric holds (about 110 ms
at 1,000 hosts, issue 14). ``Held`` keeps, per host, the bindings and tunnel ports the engine
holds; a host's OVSDB row events make a new view of that host (``set_view``), and ``step``
turns only the hosts whose view changed into the engine's ``Changes``, learns the migration
claims from the engine's own placement (``claims_of``) and returns the per-host flow diffs,
the first-seen records to write, the VIFs newly ignored and the VIF counts, all from the
touched hosts and iface-ids. The hosts that did not change are not looked at.

A change of the declarations (tenants, networks, hosts) is a full recompute (a new engine),
as before; ``full=True`` (the audit round) recomputes the first-seen records from everything.
``state()`` is the ``State`` the old rebuild made (``build_state``), built on demand for what
needs a whole value (status, trace, reactive networks). tests/controller/test_held.py drives
random view events through ``Held`` against a full rebuild as the oracle.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType

from controller.core.migration import PacketIn, claims_after, claims_of
from controller.core.model import Binding, Host, Network, State, Tenant, TunnelPort
from controller.core.seen import SeenKey, first_seen_after, seen_key
from controller.northbound.store import Declared
from controller.pipeline.incremental import Changes, Engine, Pending, Update
from controller.southbound.hostdb import HostView

Ignored = tuple[tuple[Binding, str], ...]


def build_state(declared: Declared, views: Mapping[str, HostView],
                claims: Mapping[str, str] | None = None) -> State:
    """The desired state: what is declared plus what the hosts report (the definition)."""
    bindings: list[Binding] = [b for v in views.values() for b in v.bindings]
    tunnels: list[TunnelPort] = [t for v in views.values() for t in v.tunnels]
    return State.build(declared.tenants, declared.networks, (r.host for r in declared.hosts),
                       bindings, tunnels, declared.claims if claims is None else claims)


@dataclass(frozen=True)
class Snapshot:
    """What a round held, for other threads (status, trace, punts): its ``state`` is built
    the first time someone asks (O(size)), never by a round of a proactive fabric."""

    declared: Declared
    views: Mapping[str, HostView]
    claims: Mapping[str, str]
    prebuilt: State | None = field(default=None, compare=False)

    @cached_property
    def state(self) -> State:
        if self.prebuilt is not None:
            return self.prebuilt
        return build_state(self.declared, self.views, self.claims)


@dataclass(frozen=True)
class Step:
    """What one step changed."""

    update: Update  # per host the flow diff (rebuilt: empty, every host is diffed whole)
    changed: bool  # the state changed: the round takes a new number
    rebuilt: bool  # a new engine (first step or new declarations)
    claims: Mapping[str, str]  # the claims after the step (written when not what was read)
    seen_set: Mapping[SeenKey, float]  # first-seen records to write (controller/core/seen.py)
    seen_drop: frozenset[SeenKey]  # and to delete
    newly_ignored: Ignored  # bindings not forwarded that were not before (logged once)
    vifs_added: int  # (iface-id, host) pairs that appeared / went (metrics)
    vifs_removed: int
    hosts: frozenset[str]  # the hosts whose view changed


def _declarations(declared: Declared) -> tuple[dict[str, Tenant], dict[str, Network],
                                                dict[str, Host]]:
    return ({t.name: t for t in declared.tenants}, {n.name: n for n in declared.networks},
            {r.host.system_id: r.host for r in declared.hosts})


class Held:
    """The engine and what it was fed, per host; one thread (the controller's loop)."""

    def __init__(self) -> None:
        self.engine: Engine | None = None
        self.views: dict[str, HostView] = {}  # host -> its newest view (reporting hosts)
        self._dirty: set[str] = set()  # hosts whose view may differ from what the engine holds
        self._bindings: dict[str, frozenset[Binding]] = {}  # host -> as the engine holds them
        self._tunnels: dict[str, frozenset[TunnelPort]] = {}
        self._declared: Declared | None = None
        self._decl: tuple[dict[str, Tenant], dict[str, Network], dict[str, Host]] | None = None
        self._joined: frozenset[str] = frozenset()
        self._ignored: dict[str, Ignored] = {}  # iface-id -> its ignored bindings
        self._seen: dict[str, frozenset[SeenKey]] = {}  # host -> its first-seen keys
        self._was: dict[str, frozenset[Binding]] = {}  # (the step's hosts' bindings before)
        self.snapshot: Snapshot | None = None

    # -- events ---------------------------------------------------------------------------------
    def set_view(self, host: str, view: HostView | None) -> None:
        """``host``'s newest view (None: it reports nothing usable, e.g. a wrong system-id)."""
        if view is None:
            if self.views.pop(host, None) is not None:
                self._dirty.add(host)
            return
        old = self.views.get(host)
        self.views[host] = view
        if old is None or old.bindings != view.bindings or old.tunnels != view.tunnels:
            self._dirty.add(host)

    def forget(self, host: str) -> None:
        """``host`` left (its declarations change too: the next step rebuilds)."""
        self.set_view(host, None)

    @property
    def dirty(self) -> frozenset[str]:
        return frozenset(self._dirty)

    # -- one step -------------------------------------------------------------------------------
    def step(self, declared: Declared, claims: Mapping[str, str],
             stored_seen: Mapping[SeenKey, float], packet_ins: list[PacketIn] = [],  # noqa: B006
             full: bool = False) -> Step:
        """Bring the engine to the declarations, the claims and the views set so far.

        ``declared`` is the same object until the caller re-read the declarations (then they
        are compared, and a change rebuilds). ``InvalidState`` (hosts report one ofport twice):
        nothing changed, the same views are retried by the next step."""
        if declared is not self._declared:
            decl = _declarations(declared)
            if decl != self._decl:
                self._decl, self.engine = decl, None
            self._declared = declared
            self._joined = frozenset(decl[2])
        if self.engine is None:
            return self._rebuild(declared, claims, stored_seen, packet_ins)
        return self._advance(declared, claims, stored_seen, packet_ins, full)

    def _rebuild(self, declared: Declared, claims: Mapping[str, str],
                 stored_seen: Mapping[SeenKey, float], packet_ins: list[PacketIn]) -> Step:
        state = build_state(declared, self.views, claims)
        new_claims = claims_after(claims, state, packet_ins)
        if new_claims != dict(claims):
            state = build_state(declared, self.views, new_claims)
        old_bound = {(i, h) for h, bs in self._bindings.items() for i in {b.iface_id for b in bs}}
        engine = Engine.of(state)
        # The engine is long-lived and acyclic: keep the cyclic GC from walking it again on
        # every collection (measured: it otherwise puts tens of ms pauses into events).
        gc.collect()
        gc.freeze()
        self.engine = engine
        self._bindings = {h: frozenset(v.bindings) for h, v in self.views.items()}
        self._tunnels = {h: frozenset(v.tunnels) for h, v in self.views.items()}
        self._dirty.clear()
        before = {(b.host, b.iface_id, why) for ig in self._ignored.values() for b, why in ig}
        grouped: dict[str, list[tuple[Binding, str]]] = {}
        for b, why in state.placed.ignored:
            grouped.setdefault(b.iface_id, []).append((b, why))
        self._ignored = {i: tuple(v) for i, v in grouped.items()}
        newly = tuple((b, why) for b, why in state.placed.ignored
                      if (b.host, b.iface_id, why) not in before)
        bound = {(b.iface_id, b.host) for b in state.bindings}
        seen_set, seen_drop = self._all_seen(stored_seen)
        self.snapshot = Snapshot(declared, dict(self.views), state.claims, state)
        return Step(Update({}, frozenset(state.hosts)), True, True,
                    MappingProxyType(dict(state.claims)), seen_set, seen_drop, newly,
                    len(bound - old_bound), len(old_bound - bound), frozenset(self.views))

    def _all_seen(self, stored: Mapping[SeenKey, float]
                  ) -> tuple[dict[SeenKey, float], frozenset[SeenKey]]:
        """The first-seen records of everything (``first_seen_after``), as a change of ``stored``."""
        want = first_seen_after(stored, (b for v in self.views.values() for b in v.bindings),
                                frozenset(self.views), self._joined)
        by_host: dict[str, set[SeenKey]] = {}
        for key in want:
            by_host.setdefault(key[0], set()).add(key)
        self._seen = {h: frozenset(ks) for h, ks in by_host.items()}
        return ({k: v for k, v in want.items() if stored.get(k) != v},
                frozenset(stored.keys() - want.keys()))

    def _advance(self, declared: Declared, claims: Mapping[str, str],
                 stored_seen: Mapping[SeenKey, float], packet_ins: list[PacketIn],
                 full: bool) -> Step:
        engine = self.engine
        assert engine is not None
        hosts = frozenset(self._dirty)
        added: list[Binding] = []
        removed: list[Binding] = []
        t_added: list[TunnelPort] = []
        t_removed: list[TunnelPort] = []
        new_b: dict[str, frozenset[Binding]] = {}
        new_t: dict[str, frozenset[TunnelPort]] = {}
        for h in sorted(hosts):
            view = self.views.get(h)
            nb = frozenset(view.bindings) if view else frozenset()
            nt = frozenset(view.tunnels) if view else frozenset()
            ob, ot = self._bindings.get(h, frozenset()), self._tunnels.get(h, frozenset())
            added += nb - ob
            removed += ob - nb
            t_added += nt - ot
            t_removed += ot - nt
            new_b[h], new_t[h] = nb, nt
        old_claims = dict(engine.claims)
        pending = Pending()
        engine.apply(Changes(tuple(added), tuple(removed), tuple(t_added), tuple(t_removed),
                             None if dict(claims) == old_claims else claims), pending)
        # (applied: from here on nothing raises; the views are the engine's)
        new_claims = claims_of(claims, engine.standby, engine.active, packet_ins)
        if new_claims != dict(engine.claims):
            engine.apply(Changes(claims=new_claims), pending)
        now_claims = dict(engine.claims)
        self._was = {h: self._bindings.get(h, frozenset()) for h in hosts}
        for h in hosts:
            self._set_held(h, new_b[h], new_t[h])
        self._dirty -= hosts
        # the iface-ids whose placement may differ: their bindings or claim changed, or they
        # share a network with one that did (the one-MAC rule)
        ifaces = {b.iface_id for b in (*added, *removed)}
        ifaces |= {k for k in old_claims.keys() | now_claims.keys()
                   if old_claims.get(k) != now_claims.get(k)}
        nets = {b.network for b in removed}
        for i in list(ifaces):
            nets |= {b.network for b in engine.bindings_of(i)}
        for n in nets:
            ifaces |= engine.chosen_in(n)
        newly: list[tuple[Binding, str]] = []
        for i in sorted(ifaces):
            old = {(b.host, why) for b, why in self._ignored.get(i, ())}
            now = engine.ignored(i)
            newly += [(b, why) for b, why in now if (b.host, why) not in old]
            if now:
                self._ignored[i] = now
            else:
                self._ignored.pop(i, None)
        vifs_added = vifs_removed = 0
        for h in hosts:  # (iface-id, host) pairs: they partition by host
            before = {b.iface_id for b in self._was[h]}
            after = {b.iface_id for b in new_b[h]}
            vifs_added += len(after - before)
            vifs_removed += len(before - after)
        if full:
            seen_set, seen_drop = self._all_seen(stored_seen)
        else:
            seen_set, seen_drop = self._host_seen(hosts, stored_seen)
        changed = bool(added or removed or t_added or t_removed) or now_claims != old_claims
        self.snapshot = Snapshot(declared, dict(self.views), MappingProxyType(now_claims))
        return Step(pending.update(), changed, False, MappingProxyType(now_claims), seen_set,
                    seen_drop, tuple(newly), vifs_added, vifs_removed, hosts)

    def _set_held(self, host: str, bindings: frozenset[Binding],
                  tunnels: frozenset[TunnelPort]) -> None:
        if bindings or tunnels or host in self.views:
            self._bindings[host], self._tunnels[host] = bindings, tunnels
        else:
            self._bindings.pop(host, None)
            self._tunnels.pop(host, None)

    def _host_seen(self, hosts: Iterable[str], stored: Mapping[SeenKey, float]
                   ) -> tuple[dict[SeenKey, float], frozenset[SeenKey]]:
        """``first_seen_after`` for ``hosts`` only: a reporting host's records become its
        bindings' (the recorded time, or the one the binding carries); a joined host that does
        not report keeps its records."""
        put: dict[SeenKey, float] = {}
        drop: set[SeenKey] = set()
        for h in hosts:
            view = self.views.get(h)
            if view is None:
                continue
            want = {seen_key(b): stored.get(seen_key(b), b.since) for b in view.bindings}
            put.update({k: v for k, v in want.items() if stored.get(k) != v})
            drop |= {k for k in self._seen.get(h, frozenset()) - want.keys() if k in stored}
            if want:
                self._seen[h] = frozenset(want)
            else:
                self._seen.pop(h, None)
        return put, frozenset(drop)

    # -- reading --------------------------------------------------------------------------------
    def state(self) -> State:
        """The whole state held (O(size)): the engine's input as one value."""
        assert self.snapshot is not None
        return self.snapshot.state

    def ignored(self) -> frozenset[tuple[Binding, str]]:
        """Every binding not forwarded, with its reason (``placement(state()).ignored``)."""
        return frozenset(x for ig in self._ignored.values() for x in ig)
