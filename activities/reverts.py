"""The automatic revert of a rollout (autoRevert, docs/reverts.md): its rows stored once, for the
workflow to start it as a child. Decided as an operator's revert is (domain.reverts), with the
terms the rollout was created with; nothing overrides a freeze, and every outcome is audited."""

import uuid
from datetime import UTC, datetime

import asyncpg
from temporalio import activity

from activities.heartbeat import heartbeating
from domain.reverts import plan_revert
from domain.rollouts import RolloutSpec
from store import audit, freezes, releases, reverts, rollouts
from store.rollouts import ChannelBusy, RevertTerms, Rollout
from workflows.rollout_models import AutoRevertInput, AutoRevertResult

AUTO_REVERT_ACTOR = "auto-revert"


class RevertActivities:
    """Holds the worker's pool; `stale_after_seconds`: as for any rollout's targets."""

    def __init__(self, pool: asyncpg.Pool, *, stale_after_seconds: int = 0) -> None:
        self.pool = pool
        self.stale_after_seconds = stale_after_seconds

    @activity.defn(name="prepare_auto_revert")
    async def prepare_auto_revert(self, input: AutoRevertInput) -> AutoRevertResult:
        """The revert to start, stored; the one stored by an earlier attempt, if any; or none,
        with the reason audited on the rollout."""
        async with heartbeating(), self.pool.acquire() as conn, conn.transaction():
            # Locked: an attempt still running when its retry starts finishes first, and the
            # retry then finds what it stored.
            original = await rollouts.get(conn, input.rollout_id, for_update=True)
            assert original is not None  # its own workflow asks
            revert = None
            if original.reverted_by is not None:
                revert = await rollouts.get(conn, original.reverted_by)
            if revert is not None and revert.created_by == AUTO_REVERT_ACTOR:
                return AutoRevertResult(spec=RolloutSpec.model_validate(revert.model_dump()))
            stored: RolloutSpec | str
            if revert is not None:  # an operator reverted it while it was ending
                stored = f"already reverted by rollout {revert.id}"
            else:
                stored = await self._store(conn, original, input.reason)
            if isinstance(stored, RolloutSpec):
                return AutoRevertResult(spec=stored)
            await audit.record(
                conn,
                actor=AUTO_REVERT_ACTOR,
                action="rollout.auto_revert_skipped",
                subject=f"rollout:{original.id}",
                detail={"reason": input.reason, "skipped": stored},
            )
        return AutoRevertResult(spec=None)

    async def _store(
        self, conn: asyncpg.Connection, original: Rollout, reason: str
    ) -> RolloutSpec | str:
        """The revert stored, or why there is none. It runs at once and to the end: batches as
        the rollout's, advancing by itself, no window and no gates (the ones that failed would
        hold it)."""
        release = await releases.get(conn, original.manifest_id)
        assert release is not None
        hosts = await reverts.touched_hosts(conn, original.id)
        plan = plan_revert(
            hosts,
            channel=original.channel,
            now=datetime.now(UTC),
            stale_after_seconds=self.stale_after_seconds,
        )
        main = plan.main_release()
        if main is None:
            return f"no host runs {release.version} and can go back now"
        holding = await freezes.holding(conn, original.channel)
        if holding is not None:
            return f"a freeze holds channel {original.channel} ({holding.reason})"
        target = await releases.get(conn, main)
        assert target is not None
        spec = RolloutSpec(
            id=uuid.uuid4().hex,
            manifest_id=target.id,
            version=target.version,
            channel=original.channel,
            batch_size=original.batch_size,
            auto_advance=True,
            max_failures=original.max_failures,
            max_unreachable=original.max_unreachable,
            job_timeout_seconds=original.job_timeout_seconds,
            created_by=AUTO_REVERT_ACTOR,
            revert_of=original.id,
        )
        terms = RevertTerms(restore=original.auto_revert_restore)
        try:
            async with conn.transaction():  # a savepoint: the audit of why not still commits
                await reverts.create(
                    conn, spec, reverted=original, plan=plan, terms=terms, reason=reason
                )
        except ChannelBusy as exc:
            return f"channel {exc.channel} has another unfinished rollout ({exc.rollout_id})"
        return spec
