#!/usr/bin/env bash
# Installs what veil needs on a Debian host, only what is missing, and says what it does.
# Used by `make demo`, `make test`, `make bench`, .ci/run and the Vagrant provisioning.
#   deps.sh [--venv DIR] [--no-venv] [--libvirt] [--vagrant] [--ovn] [--browser] [--extras LIST]
# (--browser: Debian's chromium, for the headless test of the topology page)
set -euo pipefail

venv=""
want_venv=1
extras="test,xen"
groups=(base)
while [ $# -gt 0 ]; do
  case "$1" in
    --venv) venv="$2"; shift 2 ;;
    --no-venv) want_venv=0; shift ;;
    --libvirt) groups+=(libvirt); extras="$extras,libvirt"; shift ;;
    --vagrant) groups+=(vagrant); shift ;;
    --ovn) groups+=(ovn); shift ;;
    --browser) groups+=(browser); shift ;;
    --extras) extras="$2"; shift 2 ;;
    *) echo "deps.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done

say() { printf '[deps] %s\n' "$*"; }

declare -A pkgs
pkgs[base]="openvswitch-switch openvswitch-common iproute2 iputils-ping iputils-arping iptables iperf3 ethtool tcpdump procps psmisc python3 python3-venv python3-pip rpm systemd"
pkgs[libvirt]="libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients libvirt-dev pkg-config gcc libc6-dev python3-dev qemu-system-x86 libxml2-utils netcat-openbsd"
pkgs[vagrant]="vagrant vagrant-libvirt debootstrap qemu-utils dnsmasq-base openssh-client"
pkgs[ovn]="ovn-central ovn-host"
pkgs[browser]="chromium"

missing=()
for g in "${groups[@]}"; do
  for p in ${pkgs[$g]}; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
      missing+=("$p")
    fi
  done
done

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "deps.sh: missing Debian packages (${missing[*]}) and not root: run as root" >&2
    exit 1
  fi
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  # policy-rc.d keeps the packaged daemons (system OVS, libvirtd) from starting: veil's
  # labs run their own daemons per simulated host and must not clash with system ones.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
    made_policy=1
  fi
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/tmp/veil-apt.log 2>&1 || {
    tail -n 30 /tmp/veil-apt.log >&2; exit 1; }
  [ "${made_policy:-0}" = 1 ] && rm -f /usr/sbin/policy-rc.d
  say "Debian packages installed"
else
  say "Debian packages present (${groups[*]})"
fi

if [ "$want_venv" = 1 ]; then
  [ -n "$venv" ] || { echo "deps.sh: --venv DIR is required unless --no-venv" >&2; exit 2; }
  root=$(cd "$(dirname "$0")/../../.." && pwd)
  if [ ! -x "$venv/bin/python" ]; then
    say "creating Python venv $venv"
    python3 -m venv "$venv"
  fi
  stamp="$venv/.veil-installed-$extras"
  if [ ! -e "$stamp" ] || [ "$root/setup.cfg" -nt "$stamp" ]; then
    say "installing veil and its Python packages into $venv (extras: $extras)"
    "$venv/bin/pip" install -q --disable-pip-version-check -e "$root[$extras]"
    "$venv/bin/python" -c 'import ovsdbapp, os_ken, watchdog, yaml' 
    touch "$stamp"
  else
    say "Python venv $venv is up to date"
  fi
fi
