"""veil's fabric controller: L2 over a redundant OpenFlow mesh, every link used (docs/fabric.md)."""
