"""The table simulator, for the tests: the product's own (controller/pipeline/sim.py, also
behind `veil trace`), re-exported so there is one simulator; ``ReactiveFabric`` puts the
controller's reactive handler (controller/reactive.py) behind its punts."""

from __future__ import annotations

from controller.core.model import Binding, State
from controller.pipeline.flows import Flow, Output
from controller.reactive import Install, Message, PacketOut, Punt, Reactive, Remove

from controller.pipeline.sim import (
    CONTROLLER,
    AmbiguousMatch,
    Delivery,
    Emit,
    Fabric,
    Hop,
    Packet,
    Step,
    arp_request,
    as_switch_reads,
    field_matches,
    flow_matches,
    ipv4,
    neighbor_advert,
    neighbor_solicit,
    rarp,
    run_switch,
    trace_switch,
)



def _mac_bytes(mac: object) -> bytes:
    return bytes(int(x, 16) for x in str(mac).split(":"))


class ReactiveFabric(Fabric):
    """A ``Fabric`` whose punts go to a ``Reactive`` handler as the controller's would: its
    entries are added to (and removed from) the hosts' flows, its packet-outs delivered.

    ``send`` returns every delivery of the packet: by the flows, by packet-out for a punt,
    and (once the punt set a path up) by the flows again, as the sender's next packet."""

    def __init__(self, state: State, reactive: Reactive | None = None) -> None:
        super().__init__(state)
        # (no underlay here: a tunnel is ready once both ends have their ports)
        self.reactive = reactive or Reactive(require_bfd=False)
        self.installed: dict[str, dict[int, Flow]] = {h: {} for h in state.hosts}
        self._frames: dict[bytes, Packet] = {}
        self._base = dict(self.flows)
        self.punts = 0
        self.apply(self.reactive.after_round(state))

    def apply(self, sends: dict[str, list[Message]]) -> list[Delivery]:
        """Install/remove entries; packet-outs become deliveries."""
        out: list[Delivery] = []
        for host, msgs in sends.items():
            table = self.installed[host]
            for m in msgs:
                if isinstance(m, Install):
                    for cookie, f in list(table.items()):
                        if f.key == m.flow.key:  # an OpenFlow ADD replaces its key's flow
                            del table[cookie]
                    table[m.cookie] = m.flow
                elif isinstance(m, Remove):
                    table.pop(m.cookie, None)
                elif isinstance(m, PacketOut):
                    pkt = self._frames[m.data]
                    for a in m.actions:
                        assert isinstance(a, Output), a
                        vif = self.vif_at[(host, a.port)]
                        out.append(Delivery(host, vif.iface_id, pkt))
            self.flows[host] = self._base[host] | frozenset(table.values())
        return out

    def send(self, src: Binding, pkt: Packet) -> list[Delivery]:
        """Where ``pkt`` ends up: by the flows, and by packet-out for what was punted (the
        entries it set up then carry the sender's next packets)."""
        if self.state.placed.active.get(src.iface_id) != src:  # a standby port: table 0's
            return super().send(src, pkt)  # punts are the migration's (core/migration.py)
        out = []
        for d in super().send(src, pkt):
            if d.iface_id is not None:
                out.append(d)
                continue
            self.punts += 1
            frame = _mac_bytes(d.packet["eth_dst"]) + _mac_bytes(d.packet["eth_src"]) + \
                len(self._frames).to_bytes(4, "big")
            self._frames[frame] = d.packet
            out += self.apply(self.reactive.on_punt(self.state, Punt(d.host, src.ofport, frame)))
        self.apply(self.reactive.after_round(self.state))
        return out


__all__ = ["ReactiveFabric", "CONTROLLER", "AmbiguousMatch", "Delivery", "Emit", "Fabric", "Hop", "Packet",
           "Step", "arp_request", "as_switch_reads", "field_matches", "flow_matches", "ipv4",
           "neighbor_advert", "neighbor_solicit", "rarp", "run_switch", "trace_switch"]
