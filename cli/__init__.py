"""The `rollout` command: one entry point, subcommands imported only when used.

Lazy imports keep `rollout agent` working on hosts that installed only the agent extra.
"""
