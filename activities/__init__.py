"""Temporal activities: the I/O the workflows need, idempotent so retries are safe."""
