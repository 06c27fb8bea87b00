"""KVM integration: the libvirt qemu hook and the long-running libvirt host daemon."""
