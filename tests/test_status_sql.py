"""The read model's SQL guards and status lists agree with the one declaration of each status
(contract.wire), and the migrations' partial indexes spell the same lists. No server: the guards
are evaluated by SQLite, whose `=`, `IN`, `NOT IN`, `AND` and `OR` mean what PostgreSQL's do."""

import re
import sqlite3
from itertools import product
from pathlib import Path

import pytest

from contract.wire import (
    FINISHED_ROLLOUT_STATUSES,
    JOB_GRAPH,
    JOB_STATUSES,
    OPEN_JOB_STATUSES,
    TERMINAL_JOB_STATUSES,
)
from store import statuses
from store.statuses import job_moves_forward, job_statuses_before

MIGRATIONS = Path(statuses.__file__).parent / "migrations"
PAIRS = list(product(JOB_STATUSES, repeat=2))


def _sql_true(predicate: str, current: str, written: str) -> bool:
    with sqlite3.connect(":memory:") as db:
        (value,) = db.execute(
            f"SELECT {predicate}", {"current": current, "written": written}
        ).fetchone()
    return bool(value)


def _upsert_takes(current: str, written: str) -> bool:
    """The workflow's write (store.jobs.upsert_many) over a row at `current`."""
    return _sql_true(job_moves_forward(":current", ":written"), current, written)


def _report_takes(current: str, written: str) -> bool:
    """An agent's report (store.jobs.apply_report) over a row at `current`."""
    guard = f"(:current = :written OR {job_moves_forward(':current', ':written')})"
    return _sql_true(guard, current, written)


def test_the_statuses_before_a_job_status_are_those_the_graph_reaches_it_from() -> None:
    assert job_statuses_before("pending") == frozenset()
    assert job_statuses_before("in_progress") == {"pending"}
    assert job_statuses_before("succeeded") == {"pending", "in_progress"}
    assert job_statuses_before("unreachable") == {"pending"}


def test_every_move_of_the_graph_is_written() -> None:
    moves = [(current, written) for current, written in PAIRS if written in JOB_GRAPH[current]]
    refused = [p for p in moves if not (_upsert_takes(*p) and _report_takes(*p))]
    assert not refused, f"moves of JOB_GRAPH the read model refuses: {refused}"


def test_no_write_moves_a_job_back_or_changes_a_settled_one() -> None:
    wrong = [
        (current, written)
        for current, written in PAIRS
        if written in job_statuses_before(current)
        or (current in TERMINAL_JOB_STATUSES and written != current)
    ]
    taken = [p for p in wrong if _upsert_takes(*p) or _report_takes(*p)]
    assert not taken, f"writes back or over a settled job the read model takes: {taken}"


def test_the_guards_take_exactly_the_forward_writes() -> None:
    """Forward: the job is open and `written` is not behind it (the graph's moves, the same
    status again, and the workflow settling a job whose start it never heard of); a report may
    also repeat a settled status, to set the step it ended on."""
    for current, written in PAIRS:
        forward = current in OPEN_JOB_STATUSES and written not in job_statuses_before(current)
        assert _upsert_takes(current, written) == forward, (current, written)
        assert _report_takes(current, written) == (forward or current == written), (
            current,
            written,
        )


def _index_predicate(index: str) -> str:
    text = "\n".join(path.read_text() for path in sorted(MIGRATIONS.glob("*.sql")))
    match = re.search(rf"CREATE (?:UNIQUE )?INDEX {index} ON [^;]*?WHERE ([^;]+);", text)
    assert match, f"no partial index {index} in the migrations"
    return " ".join(match.group(1).split())


def test_the_partial_indexes_spell_the_lists_the_queries_use() -> None:
    """A query uses a partial index only when its WHERE implies the index's predicate: the
    migrations cannot import the declaration, so they are held to it here."""
    assert set(statuses.OPEN_JOBS.strip("()").replace("'", "").split(", ")) == OPEN_JOB_STATUSES
    assert _index_predicate("update_jobs_open_by_instance") == f"status IN {statuses.OPEN_JOBS}"
    finished = statuses.FINISHED_ROLLOUTS
    assert set(finished.strip("()").replace("'", "").split(", ")) == FINISHED_ROLLOUT_STATUSES
    assert _index_predicate("rollouts_one_unfinished_per_channel") == f"status NOT IN {finished}"


def test_an_undeclared_status_is_refused() -> None:
    with pytest.raises(ValueError, match="not a declared status"):
        statuses.sql_list({"pending", "paused"}, JOB_STATUSES)
