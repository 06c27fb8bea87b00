"""When each VIF was first seen, made durable: the rule "the older binding wins" must give the
same answer after a controller restart.

Placement breaks two ties by a binding's ``since``: which of two bindings of one MAC in one
network is forwarded (the other is a duplicate), and which of a migration's halves keeps the
traffic before the guest announces itself. A host's ``HostDb`` only knows when *this* process
first saw a port; after a restart every port would be first seen at once and the iface-id
order would decide, so a VM started later with a victim's MAC and a lower iface-id would take
the victim's traffic. The controller therefore keeps the first time in the veil database
(table FirstSeen, like migration claims), and a ``HostDb`` that sees a port for the first time
takes the recorded time if there is one (so bindings carry it, without a copy per round).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from controller.core.model import Binding

SeenKey = tuple[str, str, int]  # host, iface-id, ofport: one port of one VIF (as HostDb keys it)


def seen_key(b: Binding) -> SeenKey:
    return (b.host, b.iface_id, b.ofport)


def first_seen_after(stored: Mapping[SeenKey, float], bindings: Iterable[Binding],
                     reporting: frozenset[str], joined: frozenset[str]) -> dict[SeenKey, float]:
    """The records to keep: every reported binding with its recorded time (or, new, the
    time it carries); the records of a joined host that did not report this round are kept
    as they are (a host briefly unreachable must not make its VIFs new); those of a reporting
    host's ports that are gone, or of a host that left, are dropped."""
    out = {k: v for k, v in stored.items() if k[0] in joined and k[0] not in reporting}
    for b in bindings:
        key = seen_key(b)
        out[key] = stored.get(key, b.since)
    return out

