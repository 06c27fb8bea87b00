#!/usr/bin/env bash
# Configures Open vSwitch on one veil host (a netns host of the lab, or a Vagrant VM):
#  - Open_vSwitch external_ids:system-id
#  - br-phy holding the underlay NIC, with the host's underlay IP on br-phy (OVS userspace
#    tunnelling then routes tunnel packets out of br-phy), and a route to the other DCs
#  - br-int, the integration bridge, in fail_mode=secure: nothing passes until a controller says so
# Idempotent. Environment:
#   SYSTEM_ID, UNDERLAY_DEV, UNDERLAY_CIDR (e.g. 198.18.1.11/24), UNDERLAY_GW (router in this DC),
#   UNDERLAY_ROUTE (default 198.18.0.0/15), DATAPATH_TYPE (default netdev),
#   UNDERLAY_BOND (optional "NIC NIC": a dual-homed host, an active-backup OVS bond of the two
#   NICs in br-phy; UNDERLAY_DEV is then the bond's name)
# The OVS tools find the right database through OVS_RUNDIR (the netns lab sets it per host).
set -euo pipefail
: "${SYSTEM_ID:?}" "${UNDERLAY_DEV:?}" "${UNDERLAY_CIDR:?}"
dp="${DATAPATH_TYPE:-netdev}"
route="${UNDERLAY_ROUTE:-198.18.0.0/15}"
vsctl() { ovs-vsctl --timeout=10 "$@"; }

if [ "$UNDERLAY_DEV" = auto ]; then
  # A Vagrant VM: the underlay NIC is the one Vagrant gave the underlay address (or br-phy
  # already holds it after an earlier run).
  UNDERLAY_DEV=$(ip -o -4 addr show | awk -v ip="${UNDERLAY_CIDR%/*}" '$4 ~ "^"ip"/" {print $2; exit}')
  if [ "$UNDERLAY_DEV" = br-phy ]; then
    UNDERLAY_DEV=$(ovs-vsctl list-ports br-phy | head -n 1)
  fi
  [ -n "$UNDERLAY_DEV" ] || { echo "ovs-host.sh: no interface carries ${UNDERLAY_CIDR%/*}" >&2; exit 1; }
fi

vsctl set Open_vSwitch . external_ids:system-id="$SYSTEM_ID" external_ids:hostname="$SYSTEM_ID"

# Underlay: the IP moves from the NIC to br-phy.
if [ -z "${UNDERLAY_BOND:-}" ]; then
  ip addr flush dev "$UNDERLAY_DEV" scope global
  ip link set "$UNDERLAY_DEV" up
fi
if [ -n "${UNDERLAY_BOND:-}" ]; then
  for nic in $UNDERLAY_BOND; do ip addr flush dev "$nic" scope global; ip link set "$nic" up; done
  # shellcheck disable=SC2086
  vsctl --may-exist add-br br-phy -- set Bridge br-phy datapath_type="$dp" \
        -- --may-exist add-bond br-phy "$UNDERLAY_DEV" $UNDERLAY_BOND bond_mode=active-backup \
           other_config:bond-detect-mode=carrier
else
  vsctl --may-exist add-br br-phy -- set Bridge br-phy datapath_type="$dp" \
        -- --may-exist add-port br-phy "$UNDERLAY_DEV"
fi
ip addr replace "$UNDERLAY_CIDR" dev br-phy
ip link set br-phy up
if [ -n "${UNDERLAY_GW:-}" ]; then
  ip route replace "$route" via "$UNDERLAY_GW" dev br-phy
fi

# Overlay: the integration bridge VMs attach to. Secure: no NORMAL fallback without a controller.
vsctl --may-exist add-br br-int -- set Bridge br-int datapath_type="$dp" fail_mode=secure \
      protocols=OpenFlow13,OpenFlow14,OpenFlow15 other_config:disable-in-band=true
