"""OVSDB clients: the one ovsdbapp connection factory, and a lean JSON-RPC client for the hook path."""
