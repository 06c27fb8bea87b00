"""The two-DC lab: simulated hosts in network namespaces, each with its own real Open vSwitch."""
