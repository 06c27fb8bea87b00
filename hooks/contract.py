"""Key names of the OVSDB external_ids contract (see shared reference ovs-external-ids.md).

Open vSwitch never reads these keys; hypervisor integrations write them and controllers read
them. The published names are used exactly; veil's own keys carry the ``veil-`` prefix.
"""

# typing costs ~10 ms to import here; the qemu hook imports this module on every call.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final  # novm: type checking only, never imported at run time

# Open_vSwitch table
SYSTEM_ID: "Final" = "system-id"

# Bridge table
BRIDGE_ID: "Final" = "bridge-id"

# Interface table, the published convention
IFACE_ID: "Final" = "iface-id"
ATTACHED_MAC: "Final" = "attached-mac"
IFACE_STATUS: "Final" = "iface-status"
VM_ID: "Final" = "vm-id"
VM_UUID: "Final" = "vm-uuid"  # written by os-vif instead of vm-id: read both
STATUS_ACTIVE: "Final" = "active"
STATUS_INACTIVE: "Final" = "inactive"

# XenServer keys written by the dom0 vif script
XS_VIF_UUID: "Final" = "xs-vif-uuid"
XS_NETWORK_UUID: "Final" = "xs-network-uuid"
XS_VM_UUID: "Final" = "xs-vm-uuid"
XS_NETWORK_UUIDS: "Final" = "xs-network-uuids"
XS_SYSTEM_UUID: "Final" = "xs-system-uuid"

# veil's own keys
VEIL_PREFIX: "Final" = "veil-"
VEIL_NETWORK: "Final" = "veil-network"  # Interface: the veil network (tenant L2 segment) joined
VEIL_TENANT: "Final" = "veil-tenant"  # Interface: the network's tenant (the controller refuses a mismatch)
VEIL_IPS: "Final" = "veil-ips"  # Interface: comma list of the VIF's IPs (port security, ARP responder)
VEIL_UNDERLAY_IP: "Final" = "veil-underlay-ip"  # Open_vSwitch: this host's tunnel endpoint
VEIL_TUNNEL_TYPES: "Final" = "veil-tunnel-types"  # Open_vSwitch: comma list, e.g. geneve,vxlan

INTEGRATION_BRIDGE: "Final" = "br-int"
VEIL_OWNS_PORT: "Final" = "veil-owns-port"  # Interface: "true" when veil added the port (tap case)
# Every Interface key veil writes: an unplug that keeps the row (libvirt's/xenopsd's port) drops them all.
VEIL_INTERFACE_KEYS: "Final" = (VEIL_NETWORK, VEIL_TENANT, VEIL_IPS, VEIL_OWNS_PORT)

# Names of veil networks (and tenants): ONE rule for the controller that declares them and the
# hypervisor integrations that tag VIFs with them, so no hypervisor can tag a VIF with a
# network the controller could never declare. Plain set arithmetic, no ``re``: this module is
# imported on every hook call.
NAME_MAX: "Final" = 63
NAME_RULE: "Final" = "1-63 of A-Z a-z 0-9 _ . -, starting with a letter or digit"
_NAME_START: "Final" = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_NAME_CHARS: "Final" = _NAME_START | frozenset("_.-")


def is_network_name(value: object) -> bool:
    """Whether ``value`` is a valid veil network (or tenant) name: see ``NAME_RULE``."""
    return (isinstance(value, str) and 0 < len(value) <= NAME_MAX and value[0] in _NAME_START
            and set(value) <= _NAME_CHARS)
