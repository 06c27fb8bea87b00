"""The lab's real test guest (issue 11): a guest that boots in seconds under TCG or KVM.

- image.build(): Debian cloud kernel + busybox initramfs with veil's /init, cached by inputs.
- accel.probe(): "kvm" only if a KVM probe boot reaches the ready marker, else "tcg"; cached.
- domxml.domain_xml(): the libvirt domain (br-int openvswitch NIC, veil metadata, console
  log file, exec channel) for one guest; domxml.guest_cmdline() gives /init its addresses.
- console.wait_ready(): wait for "veil-guest ready name=..." in the console log.
- agent.GuestExec: run a command in the guest over its virtio-serial exec channel.

CLI: ``python -m controller.lab.guest build|probe``.
"""
