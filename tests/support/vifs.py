"""Valid VIFs for the hook tests, any field overridden (``vif(port="tapb0", tenant="acme")``).

Building through ``Vif.from_record`` runs the model's validation, so a test cannot start from
a VIF the hooks would never produce.
"""

from __future__ import annotations

from hooks.vif import Vif


def vif(**fields: object) -> Vif:
    """A minimal VIF (short ids, a MAC in mixed case that the model lower-cases)."""
    base: dict[str, object] = dict(iface_id="i-1", vm_id="vm-1", mac="52:54:00:AB:cd:01", port="vnet0",
                                   network="blue")
    base.update(fields)
    return Vif.from_record(base)


def make_vif(port: str = "tapk1", **fields: object) -> Vif:
    """A VIF as a hypervisor registers it: UUID ids like libvirt's, on tenant acme's network blue."""
    base: dict[str, object] = dict(
        iface_id="5b0b9f7e-1111-4d4e-8b8c-000000000001", vm_id="0d1f0a52-2222-4c6e-9a1b-000000000002",
        mac="52:54:00:12:34:56", port=port, tenant="acme",
    )
    base.update(fields)
    return vif(**base)
