"""Agent endpoints (PROTOCOL §5): polls and reports, translated into workflow queries/signals.

Reports are accepted by services.reports; its refusals and a Temporal outage are answered,
signed, by api.refusals.

An idle poll (no open job for the instance) is answered from PostgreSQL alone, in one round
trip (store.polls) shared with the polls that arrive with it (api.poll_batcher): fleets poll
far faster than Temporal answers queries. Only an instance with an open job costs a query. The
routes take the bare request and read the process's pool and clients from app state: no
dependency solving on the hottest path (see api.agent_auth).
"""

import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute
from prometheus_client import Counter
from starlette.datastructures import State
from temporalio.client import Client

from api.agent_auth import Verified, authenticated, verified
from api.handouts import HandoutCache
from api.metrics import POLLS, REPORTS
from api.responses import SignedErrorOut, agent_errors, signed_body
from contract.wire import PollRequest, PollResponse, ReportRequest, ReportResponse
from services import reports
from services.errors import Conflict, Forbidden, NotFound, ServiceError
from store import polls, releases
from workflows.client import RolloutGone, RolloutUnavailable
from workflows.rollout_models import HandedOutJob

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/updates", tags=["agents"], responses=agent_errors())

# What each refusal of a report is counted as in /metrics.
_REFUSAL_OUTCOMES: dict[type[Exception], str] = {
    NotFound: "unknown_job",
    Forbidden: "forbidden",
    Conflict: "conflict",
    RolloutUnavailable: "unavailable",
}
_IDLE_POLLS = POLLS.labels(outcome="idle")  # the label looked up once, not per poll


@router.post(
    "/next",
    responses={200: {"model": PollResponse, "description": "Signed; `job` is null when idle"}},
    openapi_extra=signed_body(PollRequest),
)
async def next_job(request: Request) -> Response:
    call = await authenticated(request, PollRequest)
    poll = call.body
    state = request.app.state
    with state.dispatch.hold(request, call) as hold:
        outcome = await state.polls.record(
            polls.Poll(
                instance_id=poll.instanceId,
                nonce=poll.nonce,
                nonce_expires_at=call.nonce_expires_at,
                channel=poll.channel,
                current_version=poll.currentVersion,
                agent_version=poll.agentVersion,
            )
        )
        if not outcome.fresh:
            raise call.replayed()
        counted, job = await _job_for(state, call, outcome.open_rollout_id)
        asked_after = None
        while job is None and await hold.woken():  # a held poll (api.dispatch) looks again
            rollout_id = await polls.open_rollout(state.pool, poll.instanceId)
            counted, job = await _job_for(state, call, rollout_id, asked_after)
            if rollout_id is not None and job is None:
                asked_after = hold.recheck_soon()
    counted.inc()
    return state.dispatch.advertised(call.answer({"job": job}))


async def _job_for(
    state: State,
    call: Verified[PollRequest],
    open_rollout_id: str | None,
    asked_after: float | None = None,
) -> tuple[Counter, dict[str, Any] | None]:
    """The job document the poll's instance gets now, or None; and the outcome to count."""
    if open_rollout_id is None:
        return _IDLE_POLLS, None
    handed = await _job_the_workflow_hands_out(
        state.handouts, state.temporal, call, open_rollout_id, asked_after
    )
    release = await releases.get(state.pool, handed.release_id) if handed else None
    if handed is None or release is None:
        return POLLS.labels(outcome="withheld"), None
    log.info(
        "job handed out",
        extra={
            "instance_id": call.body.instanceId,
            "job_id": handed.id,
            "rollout_id": handed.rollout_id,
        },
    )
    job = {
        "id": handed.id,
        "rolloutId": handed.rollout_id,
        "manifest": release.manifest().as_document(),
        "deadline": handed.deadline,
    }
    return POLLS.labels(outcome="job"), job


async def _job_the_workflow_hands_out(
    handouts: HandoutCache,
    temporal: Client,
    call: Verified[PollRequest],
    rollout_id: str,
    asked_after: float | None,
) -> HandedOutJob | None:
    try:
        answer = await handouts.handouts(temporal, rollout_id, asked_after=asked_after)
    except RolloutGone:
        return None  # the rollout's history is gone: nothing to hand out
    except RolloutUnavailable:
        POLLS.labels(outcome="unavailable").inc()
        raise  # answered, signed, by api.refusals
    return answer.jobs.get(call.body.instanceId)


@router.post(
    "/report",
    responses={
        200: {"model": ReportResponse, "description": "Signed; the report is stored"},
        403: {"model": SignedErrorOut, "description": "the job belongs to another instance"},
        404: {"model": SignedErrorOut, "description": "no such job"},
        409: {"model": SignedErrorOut, "description": "contradicts the job's final status"},
    },
    openapi_extra=signed_body(ReportRequest),
)
async def report(request: Request) -> Response:
    call = await verified(request, ReportRequest)
    r = call.body
    try:
        accepted = await reports.accept(request.app.state.pool, request.app.state.temporal, r)
    except (ServiceError, RolloutUnavailable) as exc:
        REPORTS.labels(outcome=_REFUSAL_OUTCOMES.get(type(exc), "refused")).inc()
        raise  # answered, signed, by api.refusals
    if accepted.duplicate:
        REPORTS.labels(outcome="duplicate").inc()
    else:
        REPORTS.labels(outcome="accepted").inc()
        log.info(
            "report accepted",
            extra={
                "instance_id": r.instanceId,
                "job_id": r.jobId,
                "rollout_id": accepted.job.rollout_id,
                "status": r.status,
                "step": r.step,
            },
        )
    return call.answer({"jobId": r.jobId, "status": accepted.status, "accepted": True})


# Served by api.fast_lane, in front of FastAPI's routing: the fleet's requests.
FAST_ROUTES = [r for r in router.routes if isinstance(r, APIRoute)]
