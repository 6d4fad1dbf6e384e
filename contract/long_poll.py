"""The long-poll extension of `POST /api/updates/next` (docs/protocol.md, "Held polls").

Headers only: the poll body schema refuses extra fields, so an agent asking an older API to hold
its poll in the body would be refused. Shared by the API and the agent, which imports nothing
server-side.
"""

# Request: how many seconds the agent lets the API hold its poll when it has nothing to hand out.
POLL_WAIT_HEADER = "x-agent-poll-wait"
# Answer: the longest hold this API grants; agents ask for a hold only after seeing it.
LONG_POLL_HEADER = "x-cp-long-poll"
