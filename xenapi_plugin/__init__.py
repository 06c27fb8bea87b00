"""XenServer / XCP-ng integration: dom0 plugin, vif-hotplug hook and xapi event sync."""
