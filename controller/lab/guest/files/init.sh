#!/bin/busybox sh
# veil test guest /init (PID 1 of the initramfs built by controller/lab/guest/image.py).
# Configuration comes from the kernel command line, e.g.
#   veil.name=a1 veil.mac=52:54:00:00:00:11 veil.ip4=198.19.0.11/24 veil.gw4=198.19.0.1
#   veil.ip6=fd00:0:0:19::11/64 veil.gw6=... veil.mtu=1400 veil.echo=7
# It brings lo and the NIC up, starts the UDP+TCP echo responder and the exec agent on the
# virtio-serial port "org.veil.exec", then prints "veil-guest ready name=NAME ..." on the
# console. Any failure prints "veil-guest failed name=NAME: REASON" and powers off, so a
# test waiting for the ready marker fails at once with the reason instead of timing out.
/bin/busybox mkdir -p /proc /sys /dev /tmp /run /bin /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp
exec </dev/console >/dev/console 2>&1

name=guest mac= ip4= gw4= ip6= gw6= mtu= echo_port=7
for word in $(cat /proc/cmdline); do
  case "$word" in
    veil.name=*) name=${word#veil.name=} ;;
    veil.mac=*) mac=$(echo "${word#veil.mac=}" | tr 'A-F' 'a-f') ;;
    veil.ip4=*) ip4=${word#veil.ip4=} ;;
    veil.gw4=*) gw4=${word#veil.gw4=} ;;
    veil.ip6=*) ip6=${word#veil.ip6=} ;;
    veil.gw6=*) gw6=${word#veil.gw6=} ;;
    veil.mtu=*) mtu=${word#veil.mtu=} ;;
    veil.echo=*) echo_port=${word#veil.echo=} ;;
  esac
done
hostname "$name"

fail() {
  echo "veil-guest failed name=$name: $*"
  sync
  poweroff -f
  sleep 3600
}

for m in $(cat /etc/veil/modules); do
  insmod "/lib/modules/$m" || fail "insmod $m"
done

ip link set lo up
# The NIC: the one with veil.mac when given (checked, so a MAC mix-up is visible), else eth0.
dev=
i=0
while [ -z "$dev" ] && [ $i -lt 50 ]; do
  for d in /sys/class/net/*; do
    n=${d##*/}
    [ "$n" = lo ] && continue
    if [ -z "$mac" ] || [ "$(cat "$d/address")" = "$mac" ]; then dev=$n; break; fi
  done
  [ -z "$dev" ] && { i=$((i + 1)); sleep 0.1; }
done
[ -n "$dev" ] || fail "no network interface with MAC ${mac:-any} (have: $(ls /sys/class/net | tr '\n' ' '))"
if [ "$dev" != eth0 ]; then ip link set "$dev" name eth0 || fail "rename $dev"; fi
[ -n "$mtu" ] && { ip link set eth0 mtu "$mtu" || fail "mtu $mtu"; }
# No duplicate address detection: a test guest's address is unique by construction, and DAD
# would keep the IPv6 address unusable for a second after boot (busybox ip has no "nodad").
echo 0 > /proc/sys/net/ipv6/conf/eth0/accept_dad
ip link set eth0 up || fail "eth0 up"
if [ -n "$ip4" ]; then ip addr add "$ip4" dev eth0 || fail "ip4 $ip4"; fi
if [ -n "$gw4" ]; then ip route add default via "$gw4" || fail "gw4 $gw4"; fi
if [ -n "$ip6" ]; then ip -6 addr add "$ip6" dev eth0 || fail "ip6 $ip6"; fi
if [ -n "$gw6" ]; then ip -6 route add default via "$gw6" dev eth0 || fail "gw6 $gw6"; fi

/bin/veil-echo "$echo_port" &

# Exec agent: one request per line "veil-exec ID TIMEOUT BASE64(COMMAND)"; the reply is
# "veil-exec-begin ID", the base64 of the command's stdout+stderr, "veil-exec-end ID RC".
# A virtio-serial port reads EOF while no host end is connected: reopen and wait then.
port=
for p in /sys/class/virtio-ports/*; do
  [ "$(cat "$p/name" 2>/dev/null)" = org.veil.exec ] && port=/dev/${p##*/}
done
agent() {
  while true; do
    while read -r verb id limit b64; do
      [ "$verb" = veil-exec ] || continue
      echo "$b64" | base64 -d > /tmp/veil-cmd
      timeout "$limit" sh /tmp/veil-cmd </dev/null >/tmp/veil-out 2>&1
      rc=$?
      { echo "veil-exec-begin $id"; base64 /tmp/veil-out; echo "veil-exec-end $id $rc"; } >&3
    done <&3
    sleep 0.2
  done
}
if [ -n "$port" ]; then
  exec 3<>"$port"
  agent &
fi

echo "veil-guest ready name=$name dev=eth0 ip4=${ip4:-none} ip6=${ip6:-none} exec=${port:-none} echo=$echo_port uptime=$(cut -d' ' -f1 /proc/uptime)"
# PID 1 must never exit; reap orphans meanwhile.
while true; do wait; sleep 60; done
