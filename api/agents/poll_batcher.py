"""Polls that arrive together are recorded together (runtime.batches.Batcher): one statement
and one commit for many. A poll that will be held when it finds nothing is patient: its agent
waits for the hold anyway, so it waits up to `GATHER_SECONDS` for others to share its
statement, and a fleet whose holds run out at different moments (a steady trickle of polls, not
waves) does not cost a statement each. Each poll still claims its nonce in the shared table and
is answered only after that commit, so replay protection across API processes is what it was.
"""

import asyncpg
from prometheus_client import Histogram

from runtime.batches import Batcher
from store import polls

# Statements in flight at once; polls arriving meanwhile wait for the next one. Leaves most
# of the pool (api settings: db_pool_max_size) to reports, manifests and admin requests.
MAX_IN_FLIGHT = 2
# The most polls in one statement.
MAX_BATCH = 256
# The longest a patient poll waits for others before its statement goes out: a handout found
# by it is this much later, which a host about to be held does not notice.
GATHER_SECONDS = 0.05

BATCH_SIZE = Histogram(
    "rollout_poll_batch_size",
    "Polls recorded by one statement",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)

PollBatcher = Batcher[polls.Poll, polls.PollOutcome]


def poll_batcher(pool: asyncpg.Pool) -> PollBatcher:
    return Batcher(
        lambda many: polls.record_many(pool, many),
        max_in_flight=MAX_IN_FLIGHT,
        max_batch=MAX_BATCH,
        gather_seconds=GATHER_SECONDS,
        observe_size=BATCH_SIZE.observe,
    )
