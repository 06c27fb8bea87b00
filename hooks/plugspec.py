"""What a plug or unplug writes into the Interface row: pure functions both registrars share.

The ovsdbapp registrar (daemons) and the JSON-RPC registrar (the qemu hook) must produce the
same rows; keeping the key arithmetic here keeps them from drifting apart.
"""

from __future__ import annotations

from hooks import contract
from hooks.errors import VifError
from hooks.vif import Vif

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

# Keys an unplug without port deletion removes (iface-status is rewritten to inactive).
DEACTIVATE_DROP_KEYS = (contract.VEIL_NETWORK, contract.VEIL_TENANT, contract.VEIL_OWNS_PORT)


def plug_external_ids(vif: Vif, *, add_port: bool) -> dict[str, str]:
    """The keys a plug sets; a port veil creates itself is marked so veil may delete it later."""
    ids = vif.external_ids()
    if add_port:
        ids[contract.VEIL_OWNS_PORT] = "true"
    return ids


def deactivate_external_ids() -> dict[str, str]:
    """The keys an unplug without port deletion sets (after dropping DEACTIVATE_DROP_KEYS)."""
    return {contract.IFACE_STATUS: contract.STATUS_INACTIVE}


def vifs_from_rows(rows: Iterable[tuple[str, Mapping[str, str]]]) -> tuple[list[Vif], list[str]]:
    """Vifs of the Interface rows veil registered, plus one message per unreadable row."""
    vifs: list[Vif] = []
    problems: list[str] = []
    for name, ids in rows:
        if contract.VEIL_NETWORK not in ids:
            continue
        try:
            vifs.append(Vif.from_external_ids(name, ids))
        except VifError as exc:
            problems.append(f"interface {name!r}: {exc}")
    vifs.sort(key=lambda v: v.port)
    return vifs, problems


def ports_to_unplug(rows: Iterable[tuple[str, Mapping[str, str]]]) -> tuple[list[str], list[str]]:
    """Of a VM's Interface rows: (ports veil added and deletes, veil ports it only deactivates).

    Rows veil never registered (no veil key) are left alone: they belong to someone else.
    """
    delete: list[str] = []
    deactivate: list[str] = []
    for name, ids in rows:
        if ids.get(contract.VEIL_OWNS_PORT) == "true":
            delete.append(name)
        elif contract.VEIL_NETWORK in ids:
            deactivate.append(name)
    return sorted(delete), sorted(deactivate)
