"""What a plug or unplug writes into the Interface row: pure functions both registrars share.

The ovsdbapp registrar (daemons) and the JSON-RPC registrar (the qemu hook) must produce the
same rows; keeping the key arithmetic here keeps them from drifting apart.
"""

from hooks import contract
from hooks.errors import VifError
from hooks.vif import Vif

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

# Keys an unplug without port deletion removes (iface-status is rewritten to inactive).
DEACTIVATE_DROP_KEYS = contract.VEIL_INTERFACE_KEYS


def plug_external_ids(vif: "Vif", *, add_port: bool) -> "dict[str, str]":
    """The keys a plug sets; a port veil creates itself is marked so veil may delete it later."""
    ids = vif.external_ids()
    if add_port:
        ids[contract.VEIL_OWNS_PORT] = "true"
    return ids


def update_external_ids(ids: "dict[str, str]", current: "Mapping[str, str]") -> "dict[str, str]":
    """The keys a plug sets on a row that exists already: never a veil-owns-port mark on a port
    veil did not add (it would make veil delete someone else's port at unplug)."""
    if current.get(contract.VEIL_OWNS_PORT) == "true":
        return ids
    return {k: v for k, v in ids.items() if k != contract.VEIL_OWNS_PORT}


def foreign_owner(vif: "Vif", current: "Mapping[str, str]") -> "str | None":
    """Why the Interface row whose external_ids are ``current`` belongs to another VM than
    ``vif``'s (a plug must then be refused), or None when ``vif`` may register on it.

    Another VM's row: its vm-id (os-vif: vm-uuid) names another VM, or, without any VM id, its
    iface-id is another one (e.g. a port another controller placed). XenServer's xs-vm-uuid,
    when it matches the VIF's, settles it (the vm-id may come from nicira-vm-id instead)."""
    xs_vm = current.get(contract.XS_VM_UUID)
    if xs_vm and xs_vm == vif.extra.get(contract.XS_VM_UUID):
        return None
    owner = current.get(contract.VM_ID) or current.get(contract.VM_UUID)
    if owner and owner != vif.vm_id:
        return f"port {vif.port!r} belongs to VM {owner} (its external_ids:vm-id), not to VM {vif.vm_id}"
    iface_id = current.get(contract.IFACE_ID)
    if not owner and iface_id and iface_id != vif.iface_id:
        return f"port {vif.port!r} is iface-id {iface_id} of no known VM, not {vif.iface_id} of VM {vif.vm_id}"
    return None


# Keys a takeover of a stale row drops before writing the new VIF's (the old VM's veil keys
# and os-vif's vm-uuid would otherwise outlive it); veil-owns-port stays (veil added the port).
TAKEOVER_DROP_KEYS = (*(k for k in contract.VEIL_INTERFACE_KEYS if k != contract.VEIL_OWNS_PORT),
                      contract.VM_UUID)


def device_gone(ofport: object, error: object, link_state: object) -> "str | None":
    """Why OVS's Interface columns say no VM is behind the row's device any more (None: it
    may be live). A tap whose VM stopped is gone (vswitchd: ofport -1, error "could not open
    network device"), or, once libvirt made a new tap of that name for the VM starting now,
    has no carrier (no qemu holds it yet: link_state down). Unknown (vswitchd never looked)
    counts as live."""
    if isinstance(error, str) and error:
        return f"OVS reports: {error}"
    if ofport == -1:
        return "OVS cannot open its device (ofport -1)"
    if link_state == "down":
        return "its device has no carrier (link_state down): no VM holds it"
    return None


def claim(vif: "Vif", current: "Mapping[str, str]", gone: "str | None") -> "tuple[str | None, str | None]":
    """(why the plug is refused, the takeover note) for a plug of ``vif`` onto the row whose
    external_ids are ``current``; ``gone`` is ``device_gone`` of that row.

    Another VM's row is refused while that VM is plausibly alive; a row left by a lost unplug
    (its device gone: libvirt reuses tap names) is taken over, with a note naming the old
    owner. A port of no known VM (another controller's) is never taken over."""
    why = foreign_owner(vif, current)
    if why is None:
        return None, None
    owner = current.get(contract.VM_ID) or current.get(contract.VM_UUID)
    if gone is None or not owner:
        return why, None
    return None, (f"took over port {vif.port!r} from VM {owner} for VM {vif.vm_id}: a stale row "
                  f"(lost unplug?): {gone}")


def deactivate_external_ids() -> "dict[str, str]":
    """The keys an unplug without port deletion sets (after dropping DEACTIVATE_DROP_KEYS)."""
    return {contract.IFACE_STATUS: contract.STATUS_INACTIVE}


def vifs_from_rows(rows: "Iterable[tuple[str, Mapping[str, str]]]") -> "tuple[list[Vif], list[str]]":
    """Vifs of the Interface rows veil registered, plus one message per unreadable row."""
    vifs: "list[Vif]" = []
    problems: "list[str]" = []
    for name, ids in rows:
        if contract.VEIL_NETWORK not in ids:
            continue
        try:
            vifs.append(Vif.from_external_ids(name, ids))
        except VifError as exc:
            problems.append(f"interface {name!r}: {exc}")
    vifs.sort(key=lambda v: v.port)
    return vifs, problems


def ports_to_unplug(rows: "Iterable[tuple[str, Mapping[str, str]]]") -> "tuple[list[str], list[str]]":
    """Of a VM's Interface rows: (ports veil added and deletes, veil ports it only deactivates).

    Rows veil never registered (no veil key) are left alone: they belong to someone else.
    """
    delete: "list[str]" = []
    deactivate: "list[str]" = []
    for name, ids in rows:
        if ids.get(contract.VEIL_OWNS_PORT) == "true":
            delete.append(name)
        elif contract.VEIL_NETWORK in ids:
            deactivate.append(name)
    return sorted(delete), sorted(deactivate)
