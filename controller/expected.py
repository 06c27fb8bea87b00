"""What a joined host's br-int should hold, computed from live state (behind `veil flows`).

It reads every joined host's OVSDB once (the flows of one host depend on where the others'
VIFs are) and runs the controller's own pure pipeline, so the answer is exactly what the
running controller would program, without asking it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from controller.core.model import InvalidState
from controller.northbound.store import Store


def expected_flows(store: Store, host: str, reach: Mapping[str, str] | None = None) -> list[str]:
    """``host``'s flows in ovs-ofctl syntax, ordered by table, then priority (highest first).

    ``reach`` overrides, per system-id, the remote its OVSDB is read at (default: the Host
    row's, which is how the controller reaches it; a lab or an operator on the host itself
    may reach it through its local socket instead)."""
    from controller.pipeline.compute import compute_flows
    from controller.pipeline.flows import to_ofctl
    from controller.service import build_state
    from controller.southbound.hostdb import HostDb

    declared = store.read()
    if host not in {r.host.system_id for r in declared.hosts}:
        raise InvalidState(f"host {host!r} has not joined")
    views = {}
    for rec in declared.hosts:
        remote = (reach or {}).get(rec.host.system_id, rec.ovsdb)
        db = HostDb(rec.host.system_id, remote, lambda: None)
        try:
            views[rec.host.system_id] = db.view(time.time())
        finally:
            db.close()
    flows = compute_flows(build_state(declared, views), host)
    return [to_ofctl(f) for f in sorted(flows, key=lambda f: (f.table, -f.priority, to_ofctl(f)))]
