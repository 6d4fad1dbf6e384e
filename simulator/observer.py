"""What the fleet does, seen from the wire: every agent request passes an observing wrapper
of its HTTP that times it and reads its signed body and answer (the agent code is not touched).

An agent is `running` from the moment a poll hands it a job it has not finished until it sends
that job's final report; jobs count by outcome once their final report is acknowledged. Moments
are wall-clock (`time.time()`): they are compared across simulator processes and with the
control plane's stored timestamps.
"""

import asyncio
import json
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from agent.daemon import POLL_PATH, REPORT_PATH
from agent.http11 import Answer
from agent.network import ControlPlaneHttp

FINAL_STATUSES = frozenset({"succeeded", "failed", "rolled_back", "rollback_failed"})


@dataclass
class InstanceState:
    polled: bool = False
    job_id: str | None = None
    finished_jobs: set[str] = field(default_factory=set)
    last_outcome: str | None = None


class FleetObserver:
    def __init__(self) -> None:
        self.instances: dict[str, InstanceState] = {}
        self.latencies: dict[str, list[float]] = {"poll": [], "report": []}
        self.errors: Counter[str] = Counter()  # e.g. "poll HTTP 503", "report ConnectTimeout"
        self.outcomes: dict[str, str] = {}  # job id -> acknowledged final status
        self.rollouts_seen: list[str] = []
        # Job id -> when a poll first handed it out: not stored by the control plane.
        self.handouts: dict[str, float] = {}
        self.last_job_activity: float | None = None
        self._running: set[str] = set()
        self.no_job_running = asyncio.Event()
        self.no_job_running.set()

    def state(self, instance_id: str) -> InstanceState:
        return self.instances.setdefault(instance_id, InstanceState())

    def running(self) -> int:
        return len(self._running)

    def _set_job(self, instance_id: str, job_id: str | None) -> None:
        self.state(instance_id).job_id = job_id
        if job_id is None:
            self._running.discard(instance_id)
        else:
            self._running.add(instance_id)
        if self._running:
            self.no_job_running.clear()
        else:
            self.no_job_running.set()

    def agent_counts(self) -> Counter[str]:
        """polling / running / done / failed per agent (its latest job's outcome)."""
        counts: Counter[str] = Counter()
        for s in self.instances.values():
            if s.job_id is not None:
                counts["running"] += 1
            elif s.last_outcome is None:
                counts["polling" if s.polled else "starting"] += 1
            else:
                counts["done" if s.last_outcome == "succeeded" else "failed"] += 1
        return counts

    def job_counts(self) -> Counter[str]:
        counts = Counter(self.outcomes.values())
        counts["in_progress"] = self.running()
        return +counts

    def before_request(self, kind: str, body: dict[str, Any]) -> None:
        if kind != "report":
            return
        instance_id = str(body.get("instanceId"))
        state = self.state(instance_id)
        job_id, status = body.get("jobId"), body.get("status")
        self.last_job_activity = time.time()
        if status in FINAL_STATUSES and isinstance(job_id, str):
            state.finished_jobs.add(job_id)
            if state.job_id == job_id:
                self._set_job(instance_id, None)

    def after_answer(
        self, kind: str, body: dict[str, Any], status_code: int, answer: dict[str, Any]
    ) -> None:
        instance_id = str(body.get("instanceId"))
        state = self.state(instance_id)
        if kind == "poll":
            state.polled = state.polled or status_code == 200
            job = answer.get("job") if status_code == 200 else None
            if isinstance(job, dict) and job.get("id") not in state.finished_jobs:
                job_id = str(job.get("id"))
                self._set_job(instance_id, job_id)
                self.last_job_activity = time.time()
                self.handouts.setdefault(job_id, self.last_job_activity)
                rollout_id = str(job.get("rolloutId"))
                if rollout_id not in self.rollouts_seen:
                    self.rollouts_seen.append(rollout_id)
        elif status_code == 200 and body.get("status") in FINAL_STATUSES:
            job_id = str(body.get("jobId"))
            if job_id not in self.outcomes:
                self.outcomes[job_id] = str(body["status"])
                state.last_outcome = str(body["status"])


def _kind(path: str) -> str | None:
    return {POLL_PATH: "poll", REPORT_PATH: "report"}.get(path)


def _json(content: bytes) -> dict[str, Any]:
    try:
        document = json.loads(content)
    except ValueError:
        return {}
    return document if isinstance(document, dict) else {}


class ObservingHttp:
    """Wraps one agent's HTTP (agent/network.py), like a real host's own connections; times each
    request to its last answer byte."""

    def __init__(self, inner: ControlPlaneHttp, observer: FleetObserver) -> None:
        self.inner = inner
        self.observer = observer

    async def post(
        self, path: str, content: bytes, headers: Mapping[str, str], timeout: float | None = None
    ) -> Answer:
        kind = _kind(path)
        if kind is None:
            return await self.inner.post(path, content, headers, timeout)
        body = _json(content)
        self.observer.before_request(kind, body)
        started = time.perf_counter()
        try:
            answer = await self.inner.post(path, content, headers, timeout)
        except httpx.HTTPError as exc:
            self.observer.errors[f"{kind} {type(exc).__name__}"] += 1
            raise
        self.observer.latencies[kind].append(time.perf_counter() - started)
        if not answer.is_success:
            self.observer.errors[f"{kind} HTTP {answer.status}"] += 1
        self.observer.after_answer(kind, body, answer.status, _json(answer.content))
        return answer

    async def aclose(self) -> None:
        await self.inner.aclose()
