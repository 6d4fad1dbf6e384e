"""Status lists and guards in SQL, rendered from contract.wire's declarations, never spelled by
hand: a job's moves are declared once (JOB_GRAPH) for the state machine and the read model.

Rendered once, at import, into constant SQL text (statuses are fixed identifiers, not input):
PostgreSQL sees the same statements as if they were written out, so a partial index whose
predicate lists the same statuses (migration 0003) still serves them. Lists come in the order
the statuses are declared in, which is the order the migrations spell them in;
tests/test_status_sql.py checks both.
"""

from collections.abc import Iterable

from contract.wire import (
    FINISHED_ROLLOUT_STATUSES,
    JOB_GRAPH,
    JOB_STATUSES,
    OPEN_JOB_STATUSES,
    ROLLOUT_STATUSES,
)


def sql_list(statuses: Iterable[str], order: Iterable[str]) -> str:
    """`('a', 'b')`: `statuses` as an SQL list, in `order`."""
    chosen = set(statuses)
    unknown = chosen - set(order)
    if unknown:
        raise ValueError(f"not a declared status: {sorted(unknown)}")
    return "(" + ", ".join(f"'{status}'" for status in order if status in chosen) + ")"


def job_statuses_before(status: str) -> frozenset[str]:
    """Every status a job passes through before it can be at `status`."""
    before: set[str] = set()
    frontier = {s for s, moves in JOB_GRAPH.items() if status in moves}
    while frontier:
        before |= frontier
        frontier = {s for s, moves in JOB_GRAPH.items() if moves & frontier} - before
    return frozenset(before)


def job_moves_forward(current: str, written: str) -> str:
    """SQL, true when a job's row at `current` may take the status `written`: the job is still
    open and `written` is not behind it (the same status again is taken: a later step, a new
    deadline).

    The read model takes the workflow's word even past JOB_GRAPH's moves: a job the workflow
    settled `unreachable` while its start was reported (the report moved the row to
    `in_progress` before the workflow's write arrived) is written `unreachable`, as the workflow
    decided. What it never takes is a move back, nor anything over a settled job."""
    clauses = []
    for status in JOB_STATUSES:
        if status not in OPEN_JOB_STATUSES:
            continue
        clause = f"{current} = '{status}'"
        behind = job_statuses_before(status)
        if behind:
            clause = f"({clause} AND {written} NOT IN {sql_list(behind, JOB_STATUSES)})"
        clauses.append(clause)
    return "(" + " OR ".join(clauses) + ")"


OPEN_JOBS = sql_list(OPEN_JOB_STATUSES, JOB_STATUSES)
FINISHED_ROLLOUTS = sql_list(FINISHED_ROLLOUT_STATUSES, ROLLOUT_STATUSES)
# A rollout in one of these hands out no job (PROTOCOL §5: neither paused nor finished).
WITHHOLDING_ROLLOUT_STATUSES = frozenset({"paused", "waiting", *FINISHED_ROLLOUT_STATUSES})
WITHHOLDING_ROLLOUTS = sql_list(WITHHOLDING_ROLLOUT_STATUSES, ROLLOUT_STATUSES)
