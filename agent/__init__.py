"""The host agent: polls the control plane, runs update steps, rolls back, reports (PROTOCOL §5–6).

Imports nothing of Temporal, FastAPI, asyncpg or uvicorn, so it installs with the base package.
"""
