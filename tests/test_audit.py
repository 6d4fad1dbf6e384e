"""The audit log keeps entries recorded together in the order they were given: readers (the
timeline, the batch-phase benchmark) rely on id order for what happened first."""

import asyncpg

from store import audit


async def test_entries_recorded_in_one_call_keep_their_order_and_details(
    db: asyncpg.Connection,
) -> None:
    entries = [
        {"actor": "workflow", "action": f"step.{n}", "detail": {"n": n, "to": str(n)}}
        for n in range(12)
    ]
    await audit.record_many(db, "rollout:r1", entries)
    await audit.record_many(db, "rollout:r1", [])
    stored = await audit.for_subject(db, "rollout:r1")
    assert [(e.actor, e.action, e.detail) for e in stored] == [
        (e["actor"], e["action"], e["detail"]) for e in entries
    ]
    assert await audit.for_subject(db, "rollout:r2") == []
