"""Shared test helpers: the flow simulator, strategies, the poll helper, simulators and fixtures."""
