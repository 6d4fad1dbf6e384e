"""How long the rollout workflow lets each of its activities run, and how it retries them.

Sized to the work, measured on the 2-core test machine (PostgreSQL embedded, niced, with
100,000 instances): a `record_progress` call writes at most JOBS_PER_WRITE (500) job rows and
took at most 46 ms, so a release of the largest batch (10,000 jobs, 20 calls) takes 0.4 s; the
closing write that drops 100,000 targets 77 ms; `snapshot_targets` of 100,000 hosts 1.6 s (it
grows with the fleet). A start-to-close far above the work is what a worker killed mid-activity
costs the rollout before the retry starts (60 s measured with the old timeout), so every
regular activity also heartbeats (activities/heartbeat.py): a dead worker is noticed within
HEARTBEAT_TIMEOUT, and the start-to-close only bounds an attempt stuck on a live worker.
"""

from datetime import timedelta

from temporalio.common import RetryPolicy

# One call on at most JOBS_PER_WRITE jobs (a write, or the steps overdue jobs reached): over
# 300 times the measured 46 ms, room for a saturated machine.
CHUNK_TIMEOUT = timedelta(seconds=15)
# The targets' snapshot is one statement over the channel's hosts: 1.6 s for 100,000.
SNAPSHOT_TIMEOUT = timedelta(seconds=60)
# A worker gone mid-activity is noticed this long after its last heartbeat (or the start).
HEARTBEAT_TIMEOUT = timedelta(seconds=5)
# The read model must eventually be written: retry without limit, backing off to 30 s.
ACTIVITY_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=0,
)
