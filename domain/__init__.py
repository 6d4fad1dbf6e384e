"""The control plane's own records, shared across its layers: what a rollout was asked to do,
where it stands, and what its workflow writes of it and of its jobs.

Plain pydantic with no I/O, below both the workflow code and the store: the deterministic
workflow (and its pure state machine) and the SQL modules import these, never each other.
Several travel in Temporal history, where their field names are fixed.
"""
