#!/usr/bin/env bash
# The controller VM: veil-controller from the unit veil ships (embedded database, TLS relay and
# enrollment on CONTROLLER_IP), with the topology's tenants and networks as its config file.
# Hosts then join with a token from `veil host add NAME` (run here, docs/pki.md). Idempotent.
set -euo pipefail
: "${CONTROLLER_IP:?}" "${CONTROLLER_GW:?}"
veil=/opt/veil/venv/bin
ip route replace 198.18.0.0/15 via "$CONTROLLER_GW"
mkdir -p /etc/veil
"$veil/python" -m controller.lab.vagrant config --topology /tmp/veil-topology.yaml > /etc/veil/veil.yaml
echo "VEIL_CONTROLLER_ARGS=\"--public-ip $CONTROLLER_IP --config /etc/veil/veil.yaml\"" > /etc/default/veil-controller
"$veil/veil" install-units controller
systemctl daemon-reload
systemctl enable --now veil-controller
# ready once the database relay and the enrollment endpoint listen
for _ in $(seq 120); do
  if ss -ltn | grep -q "$CONTROLLER_IP:6641" && ss -ltn | grep -q "$CONTROLLER_IP:6645"; then
    echo "veil-controller listens on $CONTROLLER_IP:6641 (database relay) and :6645 (enrollment)"
    exit 0
  fi
  sleep 1
done
journalctl -u veil-controller --no-pager | tail -n 30 >&2
exit 1
