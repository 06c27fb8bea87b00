"""Whose Interface row a plug may write (hooks/plugspec.py ``claim``): pure, no OVSDB."""

from __future__ import annotations

import pytest

from hooks import contract
from hooks.plugspec import claim, device_gone
from tests.support.vifs import make_vif

OLD_VM = "0d1f0a52-2222-4c6e-9a1b-0000000000aa"
ROW = {contract.VM_ID: OLD_VM, contract.IFACE_ID: "old-ifc", contract.VEIL_NETWORK: "blue"}


@pytest.mark.parametrize(("ofport", "error", "link_state", "gone"), [
    (7, None, "up", False),  # a running VM's tap: open, with carrier
    (None, None, None, False),  # vswitchd never looked: unknown counts as live
    (-1, "could not open network device vnet3 (No such device)", None, True),
    (-1, None, None, True),
    (7, None, "down", True),  # a new tap of that name, no qemu on it yet
])
def test_another_vms_row_is_refused_only_while_its_device_is_plausibly_alive(
        ofport: object, error: object, link_state: object, gone: bool) -> None:
    why, took_over = claim(make_vif(port="vnet3"), ROW, device_gone(ofport, error, link_state))
    if gone:
        assert why is None and took_over is not None and f"from VM {OLD_VM}" in took_over
    else:
        assert took_over is None and why is not None and f"belongs to VM {OLD_VM}" in why


def test_own_rows_and_other_controllers_ports() -> None:
    vif = make_vif(port="vnet3")
    assert claim(vif, vif.external_ids(), device_gone(-1, "gone", None)) == (None, None)
    why, took_over = claim(vif, {contract.IFACE_ID: "lsp-1"}, device_gone(-1, "gone", None))
    assert took_over is None and why is not None and "iface-id lsp-1 of no known VM" in why
