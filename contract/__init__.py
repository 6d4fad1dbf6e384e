"""The wire contract shared by release tooling, the control plane and host agents (PROTOCOL.md).

Kept free of Temporal, FastAPI and asyncpg so that the agent installs lightly.
"""
