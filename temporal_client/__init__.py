"""The client side of Temporal: how every process connects (`connect`), the calls made on
rollout workflows (`rollouts`: start, view, act, signal, query, each with a deadline), and the
API's batching of agents' reports into signals (`report_signals`).

A package of its own because it is I/O: workflows/ holds only deterministic workflow code, which
must never import a client, and these calls are shared by the API, services, the worker, the
CLI, benchmarks and tests, so they belong to none of them.
"""
