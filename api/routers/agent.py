"""Agent endpoints (PROTOCOL §5): polls answered from the read model, reports signalled to the
workflow.

Reports are accepted by services.reports; its refusals and a Temporal outage are answered,
signed, by api.errors.

A poll is answered from PostgreSQL alone, in one round trip (store.polls) shared with the polls
that arrive with it (api.agents.batchers), which brings the release's manifest too when a job
is handed out: fleets poll far faster than Temporal answers queries, and the read model already
says what the workflow hands out (store.polls explains why that holds). The routes take the
bare request and read the process's pool and clients from app state: no dependency solving on
the hottest path (see api.agents.auth).
"""

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute
from starlette.datastructures import State

from api.agents.auth import Reply, Verified, authenticated
from api.agents.replies import AgentError
from api.metrics import POLLS, REPORTS
from api.openapi import SignedErrorOut, agent_errors, signed_body
from contract.downgrade import DowngradePermission
from contract.wire import PollRequest, PollResponse, ReportRequest, ReportResponse, wire_deadline
from services import instances, reports
from services.errors import Conflict, Forbidden, NotFound, Replayed, ServiceError
from store import polls
from store.pool import AGENT_STATEMENT_SECONDS
from temporal_client.rollouts import RolloutUnavailable

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/updates", tags=["agents"], responses=agent_errors())

# What each refusal of a report is counted as in /metrics.
_REFUSAL_OUTCOMES: dict[type[Exception], str] = {
    NotFound: "unknown_job",
    Forbidden: "forbidden",
    Conflict: "conflict",
    RolloutUnavailable: "unavailable",
}
# Labels looked up once, not per poll.
_IDLE_POLLS = POLLS.labels(outcome="idle")
_WITHHELD = POLLS.labels(outcome="withheld")
_HANDED_OUT = POLLS.labels(outcome="job")
_NOT_ADMITTED = POLLS.labels(outcome="not_admitted")
_ACCEPTED_REPORTS = REPORTS.labels(outcome="accepted")
_DUPLICATE_REPORTS = REPORTS.labels(outcome="duplicate")


@router.post(
    "/next",
    responses={
        200: {"model": PollResponse, "description": "Signed; `job` is null when idle"},
        403: {
            "model": SignedErrorOut,
            "description": "the instance is decommissioned, or awaits an admin's approval",
        },
    },
    openapi_extra=signed_body(PollRequest),
)
async def next_job(request: Request) -> Response:
    call = await authenticated(request, PollRequest)
    state = request.app.state
    with state.dispatch.hold(request, call) as hold:
        found = await _recorded(state, call, patient=hold.seconds > 0)
        poller = _Poller(call.body.instanceId, call.body.accepts_downgrade, call.reply)
        del call  # a held poll keeps what it answers with: its parsed request was a KiB an agent
        while found.handout is None and await hold.woken():  # a held poll (api.agents.held_polls)
            async with asyncio.timeout(AGENT_STATEMENT_SECONDS):
                found = await state.rechecks.submit(poller.instance_id)
        job = None
        withheld = found.withheld
        if found.handout is not None and not _can_run(found.handout, poller):
            withheld = True  # a revert job, for an agent that would refuse it
        elif found.handout is not None:
            job = _job_document(poller, found.handout)
    if job is not None:
        _HANDED_OUT.inc()
    else:
        (_WITHHELD if withheld else _IDLE_POLLS).inc()
    return poller.reply.answer({"job": job}, headers=state.dispatch.advertisement)


@dataclass(frozen=True, slots=True)
class _Poller:
    instance_id: str
    accepts_downgrade: bool
    reply: Reply


async def _recorded(state: State, call: Verified[PollRequest], *, patient: bool) -> polls.Found:
    """The poll recorded (its nonce claimed), and what it finds; refused when replayed or when
    its instance may not poll. `patient`: it will be held if it finds nothing, so it may wait
    for other polls to share its statement (api.agents.batchers)."""
    poll = call.body
    async with asyncio.timeout(AGENT_STATEMENT_SECONDS):  # answered 503 when it runs out
        outcome = await state.polls.submit(
            polls.Poll(
                instance_id=poll.instanceId,
                nonce=poll.nonce,
                nonce_expires_at=call.nonce_expires_at,
                channel=poll.channel,
                current_version=poll.currentVersion,
                agent_version=poll.agentVersion,
                accepts_downgrade=poll.accepts_downgrade,
                admit_as=instances.admitted_as(state.settings, poll.instanceId),
            ),
            patient=patient,
        )
    if not outcome.fresh:
        raise call.replayed()
    refusal = instances.poll_refusal(poll.instanceId, outcome.state)
    if refusal is not None:  # pending, decommissioned, or past the pending bound
        _NOT_ADMITTED.inc()
        raise AgentError(403, refusal, secret=call.secret, nonce=poll.nonce)
    return outcome.found


def _can_run(handout: polls.Handout, poller: _Poller) -> bool:
    """A revert's job goes only to an agent that declares it checks downgrade permissions: one
    that does not would refuse it at preflight, or worse, not check. A revert leaves such hosts
    out when it is made; this holds for one whose agent was replaced since."""
    return not handout.revert or poller.accepts_downgrade


def _job_document(poller: _Poller, handout: polls.Handout) -> dict[str, Any]:
    log.info(
        "job handed out",
        extra={
            "instance_id": poller.instance_id,
            "job_id": handout.job_id,
            "rollout_id": handout.rollout_id,
        },
    )
    manifest = handout.release.manifest()
    deadline = wire_deadline(handout.deadline)
    job: dict[str, Any] = {
        "id": handout.job_id,
        "rolloutId": handout.rollout_id,
        "manifest": manifest.as_document(),
        "deadline": deadline,
    }
    if handout.revert and handout.previous_version is not None:
        job["downgrade"] = DowngradePermission.issue(
            poller.reply.secret,
            job_id=handout.job_id,
            instance_id=poller.instance_id,
            from_version=handout.previous_version,
            manifest=manifest,
            restore=handout.restore,
            expires_at=deadline,
        ).model_dump()
    return job


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
    call = await authenticated(request, ReportRequest)
    r = call.body
    try:
        state = request.app.state
        accepted = await reports.accept(
            state.pool,
            state.report_signals,
            state.report_claims.submit,
            r,
            nonce_expires_at=call.nonce_expires_at,
        )
    except Replayed:
        raise call.replayed() from None
    except (ServiceError, RolloutUnavailable) as exc:
        REPORTS.labels(outcome=_REFUSAL_OUTCOMES.get(type(exc), "refused")).inc()
        raise  # answered, signed, by api.errors
    if accepted.duplicate:
        _DUPLICATE_REPORTS.inc()
    else:
        _ACCEPTED_REPORTS.inc()
        # Every report is in job_reports (the job's timeline); the log tells of a job starting
        # and ending, not of each step in between: eight lines a job cost 5 % of the API's CPU.
        moved = accepted.job.status != r.status
        log.log(
            logging.INFO if moved else logging.DEBUG,
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


# Served by api.fast_lane, handed them by the API's connections: the fleet's requests.
FAST_ROUTES = [r for r in router.routes if isinstance(r, APIRoute)]
