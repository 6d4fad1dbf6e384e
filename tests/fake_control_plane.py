"""A tiny control plane for agent tests: speaks PROTOCOL §5 (verifies agent signatures, signs
its answers), serves scripted jobs, records every poll and report, and can misbehave on purpose
(forged signature, wrong echoed nonce, 503s) — what the real API must never do."""

import asyncio
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from contract.long_poll import LONG_POLL_HEADER, POLL_WAIT_HEADER
from contract.manifest import UnsignedManifest
from contract.signing import canonical, sign, verify
from contract.wire import (
    AGENT_SIGNATURE_HEADER,
    RESPONSE_SIGNATURE_HEADER,
    TERMINAL_JOB_STATUSES,
)

RELEASE_SECRET = "fake-release-signing-secret"


@dataclass
class FakeJob:
    id: str
    instance_id: str
    document: dict[str, Any]
    status: str = "pending"
    step: str | None = None


@dataclass
class FakeControlPlane:
    secret: str
    jobs: dict[str, FakeJob] = field(default_factory=dict)
    polls: list[dict[str, Any]] = field(default_factory=list)
    reports: list[dict[str, Any]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    # Misbehaviour switches for the tests.
    forge_signature: bool = False
    wrong_nonce: bool = False
    unavailable_reports: int = 0
    # Answer that many final reports with a signed 401, as for a skewed clock.
    stale_final_reports: int = 0
    # Held polls (docs/protocol.md): 0 answers like an API older than them, offering nothing.
    long_poll_seconds: int = 0
    # The `x-agent-poll-wait` header of every poll, None where absent.
    poll_waits: list[str | None] = field(default_factory=list)
    # Every signed request as it arrived, refused or not: "poll", or "report <status>".
    arrivals: list[str] = field(default_factory=list)
    _seen_nonces: set[str] = field(default_factory=set)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _job_added: asyncio.Event = field(default_factory=asyncio.Event)

    def add_job(
        self,
        instance_id: str,
        version: str,
        *,
        channel: str = "stable",
        migrations_required: bool = True,
        deadline_seconds: float = 3600,
        manifest_document: dict[str, Any] | None = None,
        downgrade: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> str:
        """`manifest_document`: handed out as it is (signed by release keys, expired, changed
        after signing), instead of one made here. `downgrade`: makes the job's downgrade
        permission from its document (a revert's job)."""
        manifest = UnsignedManifest(
            version=version,
            sha="0123abcd",
            channel=channel,
            migrations_required=migrations_required,
            breaking_changes=None,
            released_at="2026-01-01T00:00:00Z",
        ).signed(RELEASE_SECRET)
        job_id = f"job-{uuid.uuid4().hex[:8]}"
        deadline = datetime.now(UTC) + timedelta(seconds=deadline_seconds)
        document = {
            "id": job_id,
            "rolloutId": "rollout-fake",
            "manifest": manifest_document or manifest.as_document(),
            "deadline": deadline.isoformat().replace("+00:00", "Z"),
        }
        if downgrade is not None:
            document["downgrade"] = downgrade(document)
        self.jobs[job_id] = FakeJob(
            id=job_id,
            instance_id=instance_id,
            document=document,
        )
        added, self._job_added = self._job_added, asyncio.Event()
        added.set()  # wakes the held polls
        return job_id

    def reports_of(self, job_id: str) -> list[tuple[str, str | None]]:
        return [(r["status"], r["step"]) for r in self.reports if r["jobId"] == job_id]

    def final_report(self, job_id: str) -> dict[str, Any] | None:
        finals = [r for r in self.reports if r["jobId"] == job_id and r["status"] != "in_progress"]
        return finals[-1] if finals else None

    async def wait_until(self, condition: Callable[[], bool], timeout: float = 60) -> None:
        """Woken by every request the fake answers; fails the test with what was seen so far."""
        try:
            async with asyncio.timeout(timeout):
                async with self._changed:
                    await self._changed.wait_for(condition)
        except TimeoutError:
            raise AssertionError(
                f"condition not met in {timeout} s; polls={len(self.polls)}"
                f" reports={[(r['status'], r['step']) for r in self.reports]}"
                f" refused={self.refused}"
            ) from None

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _answer(self, payload: dict[str, Any], nonce: str | None, status: int = 200) -> Response:
        echoed = "N" * 32 if self.wrong_nonce else nonce
        body = canonical({**payload, "nonce": echoed})
        key = "not-the-agent-secret" if self.forge_signature else self.secret
        headers = {RESPONSE_SIGNATURE_HEADER: sign(key, body)}
        return Response(body, status, headers=headers, media_type="application/json")

    async def _authenticated(
        self, request: Request
    ) -> tuple[dict[str, Any] | None, Response | None]:
        raw = await request.body()
        document = json.loads(raw)
        nonce = document.get("nonce")
        self.arrivals.append(f"report {document['status']}" if "jobId" in document else "poll")
        if not verify(self.secret, raw, request.headers.get(AGENT_SIGNATURE_HEADER, "")):
            self.refused.append("bad signature")
            return None, self._answer({"detail": "bad signature"}, nonce, 401)
        if nonce in self._seen_nonces:
            self.refused.append("replayed nonce")
            return None, self._answer({"detail": "nonce already used"}, nonce, 401)
        self._seen_nonces.add(nonce)
        return document, None

    async def _next(self, request: Request) -> Response:
        try:
            document, refusal = await self._authenticated(request)
            if refusal is not None:
                return refusal
            assert document is not None
            self.polls.append(document)
            asked = request.headers.get(POLL_WAIT_HEADER)
            self.poll_waits.append(asked)
            await self._notify()  # a held poll is seen while it is held
            job = self._open_job(document["instanceId"])
            if job is None and asked and self.long_poll_seconds:
                seconds = min(int(asked), self.long_poll_seconds)
                job = await self._held(request, document["instanceId"], seconds)
            response = self._answer({"job": job.document if job else None}, document["nonce"])
            if self.long_poll_seconds:
                response.headers[LONG_POLL_HEADER] = str(self.long_poll_seconds)
            return response
        finally:
            await self._notify()

    def _open_job(self, instance_id: str) -> FakeJob | None:
        return next(
            (
                j
                for j in self.jobs.values()
                if j.instance_id == instance_id and j.status not in TERMINAL_JOB_STATUSES
            ),
            None,
        )

    async def _held(self, request: Request, instance_id: str, seconds: int) -> FakeJob | None:
        """A job added within `seconds`, or None once they passed or the agent hung up."""
        hung_up = asyncio.ensure_future(request.receive())  # its body was read: a disconnect
        try:
            async with asyncio.timeout(seconds):
                while (job := self._open_job(instance_id)) is None and not hung_up.done():
                    added = asyncio.ensure_future(self._job_added.wait())
                    await asyncio.wait({added, hung_up}, return_when=asyncio.FIRST_COMPLETED)
                    added.cancel()
                return job
        except TimeoutError:
            return None
        finally:
            hung_up.cancel()

    async def _report(self, request: Request) -> Response:
        try:
            if self.unavailable_reports > 0:
                self.unavailable_reports -= 1
                self.refused.append("503 report")
                return Response("unavailable", 503)
            document, refusal = await self._authenticated(request)
            if refusal is not None:
                return refusal
            assert document is not None
            nonce = document["nonce"]
            if self.stale_final_reports > 0 and document.get("status") != "in_progress":
                self.stale_final_reports -= 1
                self.refused.append("stale report")
                return self._answer({"detail": "sentAt is 400 s from the server clock"}, nonce, 401)
            job = self.jobs.get(document["jobId"])
            if job is None:
                return self._answer({"detail": "unknown job"}, nonce, 404)
            if job.instance_id != document["instanceId"]:
                return self._answer({"detail": "job of another instance"}, nonce, 403)
            if job.status in TERMINAL_JOB_STATUSES:
                if (job.status, job.step) != (document["status"], document["step"]):
                    return self._answer({"detail": f"job is already {job.status}"}, nonce, 409)
            else:
                job.status, job.step = document["status"], document["step"]
            self.reports.append(document)
            payload = {"jobId": job.id, "status": job.status, "accepted": True}
            return self._answer(payload, nonce)
        finally:
            await self._notify()

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/api/updates/next", self._next, methods=["POST"]),
                Route("/api/updates/report", self._report, methods=["POST"]),
            ]
        )
