#!/bin/bash
# veil lab: the <emulator> of a TCG test guest (docs/kvm.md, "Known problem").
#
# QEMU before 9.0 loses guest stores during a live migration under TCG: the 64-page fast path
# of cpu_physical_memory_sync_dirty_bitmap() clears migration dirty bits without resetting the
# vCPUs' TLB write entries, so a page the guest keeps writing through such an entry is never
# sent again (upstream fix 03bfc2188f, "physmem: Fix migration dirty bitmap coherency with TCG
# memory access"; Debian 12's QEMU 7.2 does not have it). The fast path is taken only for a RAM
# block whose size is a multiple of 64 pages (256 KiB), and libvirt rounds guest memory up to a
# MiB. This wrapper gives the guest VEIL_TCG_RAM_PAD bytes (default 8 KiB) more RAM than
# libvirt asked for, in both "-m" and the pc.ram memory backend, so QEMU syncs that block page
# by page, and that path does reset the TLB. Source and destination run the same wrapper (the
# path is in the domain XML), so both sides agree on the RAM size.
set -euo pipefail
qemu=${VEIL_QEMU_BINARY:-/usr/bin/qemu-system-x86_64}
pad=${VEIL_TCG_RAM_PAD:-8192}
args=()
prev=
padded=
for a in "$@"; do
  if [[ $prev == -m && $a =~ ^([0-9]+)$ ]]; then              # -m 128 (MiB)
    a="$(( BASH_REMATCH[1] * 1024 + pad / 1024 ))K"
    padded=1
  elif [[ $prev == -m && $a =~ ^size=([0-9]+)[kK]$ ]]; then   # -m size=131072k
    a="size=$(( BASH_REMATCH[1] + pad / 1024 ))K"
    padded=1
  elif [[ $padded && $prev == -object && $a == *'"id":"pc.ram"'* && $a =~ \"size\":([0-9]+) ]]; then
    a=${a/\"size\":${BASH_REMATCH[1]}/\"size\":$(( BASH_REMATCH[1] + pad ))}
  fi
  args+=("$a")
  prev=$a
done
if [[ ! $padded && " $* " == *" -kernel "* ]]; then  # a guest (not libvirt probing QEMU) left as is
  echo "veil qemu-tcg: no '-m' argument of a known form, RAM not padded: $*" >&2
fi
exec "$qemu" "${args[@]}"
