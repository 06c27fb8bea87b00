#!/usr/bin/env bash
# A hypervisor VM after ovs-host.sh: joins the controller the way docs/controller.md tells an
# operator (`veil join` with the one-time token from `veil host add` on the controller), installs
# veil's libvirt hook and units (veil-hostd, veil-libvirt-agent), then starts this host's tenant
# guests as nested libvirt guests booting the lab's guest image (the VM's own KVM when a probe
# boot works, else TCG): veil's hook registers them.
set -euo pipefail
: "${SYSTEM_ID:?}" "${UNDERLAY_IP:?}" "${CONTROLLER_IP:?}" "${TUNNEL:?}"
veil=/opt/veil/venv/bin
if [ ! -e /etc/veil/pki/host-cert.pem ]; then
  [ -n "${TOKEN:-}" ] || { echo "host.sh: no join token for $SYSTEM_ID: run \`veil host add $SYSTEM_ID\` on the controller and put it in VEIL_TOKEN_DIR/$SYSTEM_ID" >&2; exit 1; }
  "$veil/veil" join --controller "ssl:$CONTROLLER_IP:6641" --token "$TOKEN" --pki-dir /etc/veil/pki \
    --system-id "$SYSTEM_ID" --underlay-ip "$UNDERLAY_IP" --tunnel-types "$TUNNEL"
fi
# live moves: the run's key (uploaded by the Vagrantfile) lets libvirt on another host reach this
# one's as root over qemu+ssh (virsh migrate --live); the stream itself goes over the underlay
if [ -f /tmp/veil-migrate-key ]; then
  install -d -m 700 /root/.ssh
  install -m 600 /tmp/veil-migrate-key /root/.ssh/veil-migrate
  pub=$(cat /tmp/veil-migrate-key.pub)
  grep -qxF "$pub" /root/.ssh/authorized_keys 2>/dev/null || echo "$pub" >> /root/.ssh/authorized_keys
  chmod 600 /root/.ssh/authorized_keys
  rm -f /tmp/veil-migrate-key /tmp/veil-migrate-key.pub
fi
# nested guests: qemu as root, no confinement (a lab VM; the guests' files are under /var/lib/veil-lab)
cat > /etc/libvirt/qemu.conf <<'CONF'
user = "root"
group = "root"
security_driver = "none"
CONF
"$veil/veil-libvirt-install"
systemctl daemon-reload
systemctl enable --now veil-hostd
systemctl restart libvirtd   # it reads hooks only when it starts
systemctl enable --now veil-libvirt-agent
"$veil/python" -m controller.lab.vagrant guests --topology /tmp/veil-topology.yaml --host "$SYSTEM_ID"
