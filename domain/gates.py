"""Health gates: what a rollout checks after each batch settles and through its bake, before the
next batch goes out (docs/notifications.md). The decision is the state machine's (a failing gate
pauses the rollout, with the gate, its value and its threshold in the reason); the probing is an
activity's (activities/gates.py). Pure: these models travel in the rollout's spec.

- `http`: the URL answers 2xx within the timeout, and, with `json_field`, that field of its JSON
  answer equals `equals` (a dotted path: `checks.db`).
- `prometheus`: an instant query (against PROMETHEUS_URL) whose single value is `below` or
  `above` a threshold: `sum(rate(http_errors_total[5m]))` below 0.01.

A gate whose source cannot be reached (refused, timed out, an error answer, a query with no
value) fails after UNREACHABLE_TRIES tries in a row: fail safe, a blind rollout does not go on.
"""

from typing import Literal

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, model_validator

UNREACHABLE_TRIES = 3


class Gate(BaseModel):
    """Travels in Temporal history (in the rollout's spec): field names are fixed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    kind: Literal["http", "prometheus"]
    url: AnyHttpUrl | None = None  # http
    json_field: str | None = Field(default=None, max_length=200)  # http
    equals: str | int | float | bool | None = None  # http, with json_field
    query: str | None = Field(default=None, max_length=2000)  # prometheus
    below: float | None = None  # prometheus
    above: float | None = None  # prometheus

    @model_validator(mode="after")
    def _kind_has_its_parts(self) -> "Gate":
        if self.kind == "http" and self.url is None:
            raise ValueError(f"gate {self.name}: an http gate needs its url")
        if self.kind == "prometheus":
            if not self.query:
                raise ValueError(f"gate {self.name}: a prometheus gate needs its query")
            if (self.below is None) == (self.above is None):
                raise ValueError(f"gate {self.name}: a prometheus gate needs below or above")
        return self

    def threshold(self) -> str:
        return f"below {self.below:g}" if self.below is not None else f"above {self.above:g}"


class GateResult(BaseModel):
    name: str
    ok: bool
    observed: str  # what was seen: "0.042", "HTTP 503", "unreachable: ConnectError ..."
    detail: str  # the result in words, as a pause reason says it


def judge_value(gate: Gate, value: float) -> GateResult:
    ok = value < gate.below if gate.below is not None else value > (gate.above or 0.0)
    detail = f"gate {gate.name}: {value:g} is {'' if ok else 'not '}{gate.threshold()}"
    return GateResult(name=gate.name, ok=ok, observed=f"{value:g}", detail=detail)


def judge_http(gate: Gate, status: int, field: object = None, found: bool = True) -> GateResult:
    if not 200 <= status < 300:
        detail = f"gate {gate.name}: {gate.url} answered HTTP {status}"
        return GateResult(name=gate.name, ok=False, observed=f"HTTP {status}", detail=detail)
    if gate.json_field is None:
        detail = f"gate {gate.name}: {gate.url} answered HTTP {status}"
        return GateResult(name=gate.name, ok=True, observed=f"HTTP {status}", detail=detail)
    ok = found and field == gate.equals
    seen = repr(field) if found else "absent"
    detail = f"gate {gate.name}: {gate.json_field} is {seen}" + (
        "" if ok else f", not {gate.equals!r}"
    )
    return GateResult(name=gate.name, ok=ok, observed=seen, detail=detail)


def unreachable(gate: Gate, error: str) -> GateResult:
    detail = (
        f"gate {gate.name}: its source cannot be reached after {UNREACHABLE_TRIES} tries ({error})"
    )
    return GateResult(name=gate.name, ok=False, observed=f"unreachable: {error}", detail=detail)
