"""Servers from PyPI wheels (embedded PostgreSQL, Temporal) for `rollout dev` and the tests."""
