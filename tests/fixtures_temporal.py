"""Temporal servers for tests: a time-skipping server and a dev server, one each per session."""
