"""Hypervisor-neutral hook core: the VIF model and its registration in the host's OVSDB."""
