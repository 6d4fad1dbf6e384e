"""ASGI middleware: what every request passes before (and after) its route, outermost first:
request_timer (latency by route template, and the access line of access_log), edge (admin token
and body size before the body is read). The agent routes (polls, reports) are handed to
api.fast_lane by the connections themselves, timed and bounded as these do."""
