"""veil's own database (tenants, networks, hosts, claims, first-seen) and its server."""
