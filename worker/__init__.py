"""The Temporal worker process and the client connection every process shares."""
