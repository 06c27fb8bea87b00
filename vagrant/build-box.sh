#!/usr/bin/env bash
# Builds the veil lab's vagrant-libvirt box offline, from Debian packages only, and adds it to
# Vagrant (`make vagrant-box`). Cached: the box is rebuilt only when an input changes (this
# script, setup.cfg, veil's sources, the guest image); otherwise it is only (re)added.
#
#   vagrant/build-box.sh [--name veil/bookworm-lab] [--cache /var/cache/veil/vagrant-box]
#
# What is in the box (Debian 12 "bookworm"):
#  - a debootstrap minbase root with systemd, udev, openssh, sudo, rsync (Vagrant's synced
#    folder), Debian's cloud kernel (booted directly by libvirt: no boot loader, no partition)
#  - the `vagrant` user with NOPASSWD sudo and Vagrant's well-known insecure key, the one Debian's
#    vagrant package ships (Vagrant replaces it with a fresh key at the first `vagrant up`)
#  - Open vSwitch, libvirt + qemu (the hosts' tenant guests are nested libvirt guests: the VM's
#    own KVM when its probe boot works, else TCG)
#  - veil and its Python dependencies in /opt/veil/venv, installed from a wheelhouse built here
#  - the lab's guest image (controller/lab/guest: Debian kernel + busybox initramfs) in
#    /var/lib/veil-lab/guest, for the nested guests
# The image is an ext4 file system made with `mkfs.ext4 -d` (no loop device, no mount).
set -euo pipefail

name="veil/bookworm-lab"
cache="${VEIL_BOX_CACHE:-/var/cache/veil/vagrant-box}"
mirror="${VEIL_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
while [ $# -gt 0 ]; do
  case "$1" in
    --name) name="$2"; shift 2 ;;
    --cache) cache="$2"; shift 2 ;;
    *) echo "build-box.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
say() { printf '[vagrant-box] %s\n' "$*"; }
root_src=$(cd "$(dirname "$0")/.." && pwd)
py="${VEIL_PYTHON:-$root_src/.venv/bin/python}"

for tool in debootstrap mkfs.ext4 qemu-img vagrant; do
  command -v "$tool" >/dev/null || { echo "build-box.sh: '$tool' is missing (deps.sh --vagrant installs it)" >&2; exit 1; }
done
[ -x "$py" ] || { echo "build-box.sh: no Python venv at $py (make deps-test)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "build-box.sh: run as root (debootstrap)" >&2; exit 1; }

# debootstrap's own resolver configures packages in an order some postinsts fail in (polkitd, which
# libvirt-daemon-system needs): it installs the base, apt inside the root the rest.
base_packages=(systemd-sysv udev dbus openssh-server sudo rsync linux-image-cloud-amd64 initramfs-tools
  iproute2 iputils-ping procps kmod ca-certificates python3 python3-venv)
packages=(openvswitch-switch libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients
  qemu-system-x86 tcpdump netcat-openbsd)

# The lab's guest image (built or found in its own cache).
guest_dir=$("$py" -m controller.lab.guest build | awk '/^kernel /{print $2}' | xargs dirname)
[ -f "$guest_dir/manifest.json" ] || { echo "build-box.sh: guest image not found ($guest_dir)" >&2; exit 1; }

# Inputs: this script, the package list, veil's sources (tracked files), the guest image.
key=$( {
  cat "$0"; printf '%s\n' "${base_packages[@]}" "${packages[@]}"; cat "$guest_dir/manifest.json"
  (cd "$root_src" && git ls-files -z -- setup.cfg pyproject.toml controller hooks libvirt_hooks xenapi_plugin \
     | xargs -0 sha256sum)
} | sha256sum | cut -c1-16)
out="$cache/$key"
box="$out/veil-lab.box"
mkdir -p "$cache"

if [ ! -f "$box" ]; then
  t0=$(date +%s)
  work=$(mktemp -d "$cache/build.XXXXXX")
  trap 'rm -rf "$work"' EXIT  # VEIL_BOX_KEEP_WORK=1 keeps it for a post-mortem
  [ "${VEIL_BOX_KEEP_WORK:-0}" = 1 ] && trap - EXIT
  rootfs="$work/root"
  say "debootstrap bookworm from $mirror, then apt-get install ${packages[*]}"
  # The base system is cached apart: a change to veil does not fetch Debian again.
  base_key=$(printf '%s\n' "${base_packages[@]}" "${packages[@]}" "$mirror" | sha256sum | cut -c1-16)
  base="$cache/base-$base_key.tar"
  if [ ! -f "$base" ]; then
    debootstrap --variant=minbase --include="$(IFS=,; echo "${base_packages[*]}")" bookworm "$rootfs" "$mirror" \
      >"$work/debootstrap.log" 2>&1 || { tail -n 30 "$work/debootstrap.log" "$rootfs/debootstrap/debootstrap.log" >&2; exit 1; }
    # no daemon starts while packages are installed; /proc only in a private mount namespace
    printf '#!/bin/sh\nexit 101\n' > "$rootfs/usr/sbin/policy-rc.d"; chmod +x "$rootfs/usr/sbin/policy-rc.d"
    cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
    unshare -m --propagation private sh -c "mount -t proc proc '$rootfs/proc' && \
      chroot '$rootfs' env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
      chroot '$rootfs' env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends ${packages[*]}" \
      >"$work/apt.log" 2>&1 || { tail -n 30 "$work/apt.log" >&2; exit 1; }
    rm -f "$rootfs/usr/sbin/policy-rc.d"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*_Packages
    tar -C "$rootfs" -cf "$base.tmp" . && mv "$base.tmp" "$base"
  else
    mkdir -p "$rootfs" && tar -C "$rootfs" -xf "$base"
  fi

  say "configuring: vagrant user, network, veil"
  echo veil-lab > "$rootfs/etc/hostname"
  : > "$rootfs/etc/machine-id"
  printf '/dev/vda / ext4 rw,relatime 0 1\n' > "$rootfs/etc/fstab"
  mkdir -p "$rootfs/etc/systemd/network"
  # the client id is the MAC: the DUID derives from a machine id that VMs of one box may share
  printf '[Match]\nName=eth0\n\n[Network]\nDHCP=ipv4\n\n[DHCPv4]\nClientIdentifier=mac\n' > "$rootfs/etc/systemd/network/10-eth0.network"
  chroot "$rootfs" systemctl enable systemd-networkd ssh >/dev/null 2>&1
  # no daemon of the box starts at boot that the lab does not use everywhere: libvirtd and
  # OVS are started where the provisioning needs them
  chroot "$rootfs" useradd -m -s /bin/bash vagrant
  echo 'vagrant:vagrant' | chroot "$rootfs" chpasswd
  echo 'vagrant ALL=(ALL) NOPASSWD: ALL' > "$rootfs/etc/sudoers.d/vagrant"
  chmod 0440 "$rootfs/etc/sudoers.d/vagrant"
  insecure=$(dpkg -L vagrant | grep 'keys/vagrant.pub$' | head -n 1)
  install -d -m 0700 -o 1000 -g 1000 "$rootfs/home/vagrant/.ssh"
  install -m 0600 -o 1000 -g 1000 "$insecure" "$rootfs/home/vagrant/.ssh/authorized_keys"
  echo 'UseDNS no' > "$rootfs/etc/ssh/sshd_config.d/vagrant.conf"

  say "wheelhouse: veil and its Python dependencies"
  # from a copy of the tracked files (the inputs of the key; no build/ left in the worktree)
  mkdir -p "$work/src"
  (cd "$root_src" && git ls-files -z | xargs -0 cp --parents -t "$work/src")
  "$py" -m pip wheel -q --disable-pip-version-check --wheel-dir "$work/wheels" "$work/src[libvirt]" \
    >"$work/wheel.log" 2>&1 || { tail -n 30 "$work/wheel.log" >&2; exit 1; }
  cp -r "$work/wheels" "$rootfs/tmp/wheels"
  chroot "$rootfs" python3 -m venv /opt/veil/venv
  chroot "$rootfs" /opt/veil/venv/bin/pip install -q --disable-pip-version-check --no-index \
    --find-links /tmp/wheels 'veil[libvirt]' >"$work/install.log" 2>&1 || { tail -n 30 "$work/install.log" >&2; exit 1; }
  rm -rf "$rootfs/tmp/wheels"
  chroot "$rootfs" /opt/veil/venv/bin/python -c 'import controller, hooks, libvirt_hooks, libvirt, ovsdbapp'
  mkdir -p "$rootfs/var/lib/veil-lab/guest"
  cp "$guest_dir"/* "$rootfs/var/lib/veil-lab/guest/"

  say "image: mkfs.ext4 -d, qcow2"
  kernel=$(ls "$rootfs"/boot/vmlinuz-* | head -n 1)
  initrd=$(ls "$rootfs"/boot/initrd.img-* | head -n 1)
  cp "$kernel" "$work/vmlinuz"; cp "$initrd" "$work/initrd.img"
  mkfs.ext4 -q -F -L veil-root -d "$rootfs" "$work/root.raw" 3G
  qemu-img convert -O qcow2 "$work/root.raw" "$work/box.img"
  rm -f "$work/root.raw"
  printf '{"provider":"libvirt","format":"qcow2","virtual_size":3}\n' > "$work/metadata.json"
  cat > "$work/Vagrantfile" <<'EOF'
# veil lab box: direct kernel boot (the kernel and initrd ship beside the disk image)
Vagrant.configure("2") do |config|
  config.vm.guest = :debian
  config.vm.provider :libvirt do |lv|
    lv.kernel = File.join(File.dirname(__FILE__), "vmlinuz")
    lv.initrd = File.join(File.dirname(__FILE__), "initrd.img")
    lv.cmd_line = "root=/dev/vda rw console=ttyS0 net.ifnames=0"
  end
end
EOF
  mkdir -p "$out"
  tar -C "$work" -cf "$box.tmp" metadata.json Vagrantfile box.img vmlinuz initrd.img
  mv "$box.tmp" "$box"
  say "built $box in $(( $(date +%s) - t0 )) s"
else
  say "cached box $box"
fi

# (Re)add it when Vagrant holds another build under this name.
home="${VAGRANT_HOME:-$HOME/.vagrant.d}"
stamp="$out/added-$(printf '%s %s' "$home" "$name" | sha256sum | cut -c1-12)"
if [ ! -e "$stamp" ] || ! vagrant box list 2>/dev/null | grep -q "^$name "; then
  vagrant box add --force --name "$name" --provider libvirt "$box" >/dev/null
  touch "$stamp" 2>/dev/null || true
  say "added box $name ($key)"
else
  say "box $name is current ($key)"
fi
