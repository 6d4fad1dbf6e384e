"""ASGI middleware: what every request passes before (and after) its route, outermost first:
request_timer (latency by route template, and the access line of access_log), edge (admin token
and body size before the body is read); fast_lane takes the agent routes (polls, reports) before
FastAPI's own middlewares and routing, timed and bounded as they are, in one coroutine."""
