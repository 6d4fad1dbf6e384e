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

    def reporting(self, instance_id: str, report: dict[str, Any]) -> None:
        """A report is on its way: a final one ends its agent's job."""
        state = self.state(instance_id)
        job_id, status = report.get("jobId"), report.get("status")
        self.last_job_activity = time.time()
        if status in FINAL_STATUSES and isinstance(job_id, str):
            state.finished_jobs.add(job_id)
            if state.job_id == job_id:
                self._set_job(instance_id, None)

    def reported(self, instance_id: str, report: dict[str, Any], status_code: int) -> None:
        """A report was answered: an acknowledged final one counts its job's outcome."""
        if status_code == 200 and report.get("status") in FINAL_STATUSES:
            job_id = str(report.get("jobId"))
            if job_id not in self.outcomes:
                self.outcomes[job_id] = str(report["status"])
                self.state(instance_id).last_outcome = str(report["status"])

    def polled(self, instance_id: str, status_code: int, answer: dict[str, Any]) -> None:
        """A poll was answered; a job it hands out that the agent has not finished runs now."""
        state = self.state(instance_id)
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
    request to its last answer byte. It reads only what the observer needs: a report's body
    and a poll's answer."""

    def __init__(self, inner: ControlPlaneHttp, observer: FleetObserver, instance_id: str) -> None:
        self.inner = inner
        self.observer = observer
        self.instance_id = instance_id

    async def post(
        self, path: str, content: bytes, headers: Mapping[str, str], timeout: float | None = None
    ) -> Answer:
        kind = _kind(path)
        if kind is None:
            return await self.inner.post(path, content, headers, timeout)
        report = _json(content) if kind == "report" else None
        if report is not None:
            self.observer.reporting(self.instance_id, report)
        started = time.perf_counter()
        try:
            answer = await self.inner.post(path, content, headers, timeout)
        except httpx.HTTPError as exc:
            self.observer.errors[f"{kind} {type(exc).__name__}"] += 1
            raise
        self.observer.latencies[kind].append(time.perf_counter() - started)
        if not answer.is_success:
            self.observer.errors[f"{kind} HTTP {answer.status}"] += 1
        if report is not None:
            self.observer.reported(self.instance_id, report, answer.status)
        else:
            document = _json(answer.content) if answer.status == 200 else {}
            self.observer.polled(self.instance_id, answer.status, document)
        return answer

    async def aclose(self) -> None:
        await self.inner.aclose()
