"""What every process of this project runs on below its own code: log setup, garbage-collector
tuning, and one round trip answering many waiters.

Not the wire contract (contract/ holds only what the control plane and agents must agree on),
but needed by the agent as much as by the API, the worker and the simulator: standard library
only, so importing it costs a host agent nothing.
"""
