"""The HTTP face of the control plane (FastAPI), for operators and agents.

- app.py: `create_app`, which wires everything below into one app per process;
- routers/: the routes, one module per resource (and /docs, /redoc);
- middleware/: the ASGI layers every request passes, outermost first: request timer and access
  log, edge gate (admin token, body size), fast lane (agent routes past FastAPI's routing);
- agents/: what serving agents takes besides their routes: request authentication, signed
  answers, held polls, batched poll statements, the cleanup of spent nonces;
- errors.py: every error mapped once to its answer; openapi.py: those answers as /openapi.json
  declares them;
- deps.py: route dependencies (admin token, pool, settings, Temporal client); schemas.py: the
  admin API's JSON; metrics.py: Prometheus metrics and the /metrics text.

Flows live in services/, SQL in store/, Temporal calls in temporal_client/.
"""
