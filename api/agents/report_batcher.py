"""`in_progress` reports that arrive together are stored together (runtime.batches.Batcher):
six of a job's eight reports are steps of a started job, each a statement and a commit of its
own before, which at a batch of a thousand hosts is thousands of statements a second. Each
report still claims its nonce and is answered only once that statement committed: what was
answered 2xx is stored.
"""

import asyncpg
from prometheus_client import Histogram

from runtime.batches import Batcher
from store import jobs

# Statements in flight at once, beside the poll statements' (api.agents.poll_batcher).
MAX_IN_FLIGHT = 2
# The most reports in one statement.
MAX_BATCH = 256

BATCH_SIZE = Histogram(
    "rollout_progress_report_batch_size",
    "in_progress reports claimed and stored by one statement",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)

ProgressBatcher = Batcher[jobs.ProgressReport, jobs.NonceAndJob]


def progress_batcher(pool: asyncpg.Pool) -> ProgressBatcher:
    """Reports go out at the end of the loop turn they arrived in (none is patient): a host's
    next report waits for this one's answer."""
    return Batcher(
        lambda many: jobs.claim_nonces_and_progress(pool, many),
        max_in_flight=MAX_IN_FLIGHT,
        max_batch=MAX_BATCH,
        gather_seconds=0.0,
        observe_size=BATCH_SIZE.observe,
    )
