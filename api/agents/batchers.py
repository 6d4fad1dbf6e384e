"""What an API process gathers into one statement and one commit (runtime.batches.Batcher):
agents' polls, the second looks of held polls woken together (a batch released to a thousand
held polls wakes a thousand), and agents' reports: each report's nonce claimed and its job read,
and the steps of started jobs (six of a job's eight reports) stored by that statement too.

A fleet's requests are each one small statement, and at thousands a second their round trips
and commits, not the work in them, are what PostgreSQL and the API spend. A poll that will be
held when it finds nothing is patient: its agent waits for the hold anyway, so it waits up to
`GATHER_SECONDS` for others to share its statement, and a fleet whose holds run out at different
moments (a steady trickle of polls, not waves) does not cost a statement each. A report is not:
its agent's next report waits for its answer. Each request still claims its nonce in the shared
table and is answered only after its statement committed, so replay protection across API
processes, and the durability of what was answered 2xx, are what they were.
"""

from collections.abc import Awaitable, Callable, Sequence

import asyncpg
from prometheus_client import Histogram

from runtime.batches import Batcher, Item, Outcome
from store import jobs, polls

# Statements of each kind in flight at once; what arrives meanwhile waits for the next one.
# Leaves most of the pool (api settings: db_pool_max_size) to other requests.
MAX_IN_FLIGHT = 2
# The most requests in one statement.
MAX_BATCH = 256
# The longest a patient poll waits for others before its statement goes out: a handout found
# by it is this much later, which a host about to be held does not notice.
GATHER_SECONDS = 0.05

_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
POLL_BATCH_SIZE = Histogram(
    "rollout_poll_batch_size", "Polls recorded by one statement", buckets=_SIZES
)
RECHECK_BATCH_SIZE = Histogram(
    "rollout_held_poll_recheck_batch_size",
    "Woken held polls that looked again in one statement",
    buckets=_SIZES,
)
REPORT_BATCH_SIZE = Histogram(
    "rollout_report_batch_size",
    "Agent reports claimed by one statement (which stores started jobs' steps)",
    buckets=_SIZES,
)

PollBatcher = Batcher[polls.Poll, polls.PollOutcome]
RecheckBatcher = Batcher[str, polls.Found]
ReportBatcher = Batcher[jobs.SentReport, jobs.NonceAndJob]


def poll_batcher(pool: asyncpg.Pool) -> PollBatcher:
    return _batcher(polls.record_many, pool, POLL_BATCH_SIZE, gather_seconds=GATHER_SECONDS)


def recheck_batcher(pool: asyncpg.Pool) -> RecheckBatcher:
    return _batcher(polls.find_many, pool, RECHECK_BATCH_SIZE, gather_seconds=0)


def report_batcher(pool: asyncpg.Pool) -> ReportBatcher:
    return _batcher(jobs.claim_reports, pool, REPORT_BATCH_SIZE, gather_seconds=0)


def _batcher(
    statement: Callable[[asyncpg.Pool, Sequence[Item]], Awaitable[list[Outcome]]],
    pool: asyncpg.Pool,
    sizes: Histogram,
    *,
    gather_seconds: float,
) -> Batcher[Item, Outcome]:
    return Batcher(
        lambda many: statement(pool, many),
        max_in_flight=MAX_IN_FLIGHT,
        max_batch=MAX_BATCH,
        gather_seconds=gather_seconds,
        observe_size=sizes.observe,
    )
