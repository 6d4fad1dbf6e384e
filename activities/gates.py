"""The health-gate probes (domain/gates.py): one activity watches a batch's gates through its bake,
heartbeating its latest results, and returns at the first failing gate or when the bake ends. One
activity per batch, however long the bake: the rollout's history does not grow with each probe.
"""

import asyncio
from datetime import UTC, datetime
from typing import Any

import httpx
from temporalio import activity

from domain.gates import UNREACHABLE_TRIES, Gate, GateResult, judge_http, judge_value, unreachable
from server.settings import Settings
from workflows.rollout_models import WatchGatesInput, WatchGatesResult


class _Unreachable(Exception):
    pass


class GateActivities:
    def __init__(self, settings: Settings) -> None:
        self.prometheus_url = settings.prometheus_url
        token = settings.prometheus_token
        self.headers = {"authorization": f"Bearer {token.get_secret_value()}"} if token else {}
        self.timeout = settings.gate_timeout_seconds

    @activity.defn(name="watch_gates")
    async def watch_gates(self, input: WatchGatesInput) -> WatchGatesResult:
        """Every gate now, then every `interval_seconds` until `until`; the results as soon as
        one fails, or the last ones when the bake is over."""
        failures: dict[str, int] = {}
        async with httpx.AsyncClient(timeout=self.timeout) as http:
            while True:
                results = [await self._probe(http, gate, failures) for gate in input.gates]
                activity.heartbeat([r.model_dump() for r in results])
                failed = [r for r in results if not r.ok]
                now = datetime.now(UTC)
                if failed or now >= input.until:
                    return WatchGatesResult(results=results)
                await asyncio.sleep(
                    min(input.interval_seconds, (input.until - now).total_seconds())
                )

    async def _probe(
        self, http: httpx.AsyncClient, gate: Gate, failures: dict[str, int]
    ) -> GateResult:
        """A source that cannot be reached is tried again at once, failing the gate only after
        UNREACHABLE_TRIES tries in a row."""
        while True:
            try:
                result = await self._measure(http, gate)
            except _Unreachable as exc:
                failures[gate.name] = failures.get(gate.name, 0) + 1
                if failures[gate.name] >= UNREACHABLE_TRIES:
                    return unreachable(gate, str(exc))
                await asyncio.sleep(1.0)
                continue
            failures.pop(gate.name, None)
            return result

    async def _measure(self, http: httpx.AsyncClient, gate: Gate) -> GateResult:
        try:
            if gate.kind == "http":
                answer = await http.get(str(gate.url))
                if gate.json_field is None or not answer.is_success:
                    return judge_http(gate, answer.status_code)
                found, field = _field(answer.json(), gate.json_field)
                return judge_http(gate, answer.status_code, field, found)
            if self.prometheus_url is None:
                raise _Unreachable("PROMETHEUS_URL is not set on the worker")
            answer = await http.get(
                f"{self.prometheus_url.rstrip('/')}/api/v1/query",
                params={"query": gate.query},
                headers=self.headers,
            )
            if not answer.is_success:
                raise _Unreachable(f"Prometheus answered HTTP {answer.status_code}")
            return judge_value(gate, _single_value(answer.json()))
        except (httpx.HTTPError, ValueError) as exc:
            raise _Unreachable(f"{type(exc).__name__}: {exc}") from exc


def _field(document: Any, path: str) -> tuple[bool, Any]:
    for key in path.split("."):
        if not isinstance(document, dict) or key not in document:
            return False, None
        document = document[key]
    return True, document


def _single_value(answer: Any) -> float:
    """The value of an instant query's one sample (vector or scalar); ValueError otherwise."""
    data = answer.get("data", {}) if isinstance(answer, dict) else {}
    result = data.get("result")
    if data.get("resultType") == "scalar" and isinstance(result, list):
        return float(result[1])
    if not isinstance(result, list) or len(result) != 1:
        count = len(result) if isinstance(result, list) else "no"
        raise ValueError(f"the query gave {count} samples, not one")
    return float(result[0]["value"][1])
