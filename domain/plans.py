"""How a rollout's targets, fixed when it starts, are cut into batches: the one place that decides
(the rollout machine, the preview and the API's checks all ask it).

Three kinds of plan, each with an optional canary (a first batch of one host, before the rest):
- fixed: `batchSize` hosts a batch (PROTOCOL §4; the last one takes what is left);
- steps: a list of cumulative marks, each in hosts or a percentage of the targets (`[1, "10%",
  "50%", "100%"]`: batch 1 is one host, batch 2 brings the rollout to a tenth of its targets, ...),
  like Argo Rollouts' canary weights; a percentage is rounded up, so "1%" of 10 hosts is one;
- exponential: batches of `first` hosts, then `first × factor`, `first × factor²`, ... (rounded
  up), like AWS IoT Jobs' rate increase, until every target is in one.
Every target is in exactly one batch, in the snapshot's order, and no batch is empty: a mark that
does not move past the one before it (two percentages of a small fleet) is skipped.
"""

import math
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

PERCENT = re.compile(r"^([1-9][0-9]?|100)%$")
# The most batches a plan may make: each batch is a handful of history events and an advance.
MAX_BATCHES = 10_000
# The largest batch a rollout may have (the API refuses more). A workflow task's work grows with
# the reports it takes in, not with the batch (rollout_machine keeps its counts as jobs move), and
# the batch is carried by column (CarriedJobs): 10,000 jobs with 128-character instance ids are
# 1.7 MB of a continue-as-new input, under Temporal's 2 MiB payload limit.
MAX_BATCH_SIZE = 10_000

Mark = int | str
# As a request gives them: an integer stays a number of hosts, a string a percentage.
Marks = list[Annotated[Mark, Field(union_mode="left_to_right")]]


class Exponential(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    first: int = Field(ge=1, le=100_000)
    factor: float = Field(ge=1.0, le=100.0)


class BatchPlan(BaseModel):
    """Travels in Temporal history (in the rollout's spec): field names are fixed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["fixed", "steps", "exponential"] = "fixed"
    steps: Marks | None = None
    exponential: Exponential | None = None
    canary: bool = False

    @property
    def cuts_by_percent(self) -> bool:
        """Its batches depend on how many targets there are (not only on their order)."""
        return any(isinstance(mark, str) for mark in self.steps or ())

    @model_validator(mode="after")
    def _kind_has_its_part(self) -> "BatchPlan":
        if self.kind == "steps" and not self.steps:
            raise ValueError("a steps plan needs its marks")
        if self.kind == "exponential" and self.exponential is None:
            raise ValueError("an exponential plan needs its first size and factor")
        if self.kind == "fixed" and (self.steps or self.exponential):
            raise ValueError("a fixed plan cuts by batchSize: give no marks or growth")
        return self

    @field_validator("steps")
    @classmethod
    def _marks_grow(cls, steps: list[Mark] | None) -> list[Mark] | None:
        if steps is None:
            return None
        if not 1 <= len(steps) <= 100:
            raise ValueError("1 to 100 marks")
        hosts: list[int] = []
        percents: list[int] = []
        for n, mark in enumerate(steps, start=1):
            if isinstance(mark, bool):
                raise ValueError(f'mark {n}: a number of hosts or a percentage like "10%"')
            if isinstance(mark, int):
                if mark < 1:
                    raise ValueError(f"mark {n}: at least one host")
                if hosts and mark <= hosts[-1]:
                    raise ValueError(f"mark {n}: {mark} hosts do not grow past {hosts[-1]}")
                hosts.append(mark)
            else:
                match = PERCENT.fullmatch(mark)
                if match is None:
                    raise ValueError(f'mark {n}: a number of hosts or a percentage like "10%"')
                percent = int(match.group(1))
                if percents and percent <= percents[-1]:
                    raise ValueError(f"mark {n}: {mark} does not grow past {percents[-1]}%")
                percents.append(percent)
        return steps


def describe(plan: BatchPlan) -> str:
    """The plan in a few words: 'canary, then 1, 25%, 100%' or 'exponential from 1, ×2'."""
    if plan.kind == "steps":
        cut = ", ".join(str(mark) for mark in plan.steps or ())
    elif plan.kind == "exponential" and plan.exponential is not None:
        cut = f"exponential from {plan.exponential.first}, ×{plan.exponential.factor:g}"
    else:
        cut = "batchSize"
    return f"canary, then {cut}" if plan.canary else cut


def cumulative(mark: Mark, target_count: int) -> int:
    """How many targets have been released once the batch of `mark` is."""
    if isinstance(mark, int):
        return min(mark, target_count)
    return min(target_count, math.ceil(int(mark[:-1]) * target_count / 100))


def batch_sizes(batch_size: int, plan: BatchPlan | None, target_count: int) -> list[int]:
    """The size of each batch, in order; they add up to `target_count`."""
    if target_count <= 0:
        return []
    sizes: list[int] = []
    if plan is not None and plan.canary:
        sizes.append(1)
    released = sum(sizes)
    if plan is None or plan.kind == "fixed":
        while released < target_count:
            sizes.append(min(batch_size, target_count - released))
            released += sizes[-1]
    elif plan.kind == "steps":
        for mark in plan.steps or ():
            reached = cumulative(mark, target_count)
            if reached > released:
                sizes.append(reached - released)
                released = reached
        if released < target_count:  # the marks stop short: the rest is one last batch
            sizes.append(target_count - released)
    else:
        assert plan.exponential is not None
        size = float(plan.exponential.first)
        while released < target_count:
            sizes.append(min(math.ceil(size), target_count - released))
            released += sizes[-1]
            size *= plan.exponential.factor
    return sizes


def batch_starts(sizes: list[int]) -> list[int]:
    """Each batch's offset in the targets, in order."""
    starts, at = [], 0
    for size in sizes:
        starts.append(at)
        at += size
    return starts


def plan_problem(plan: BatchPlan | None, sizes: list[int]) -> str | None:
    """Why this plan, which cut the targets into `sizes`, cannot be used, or None."""
    target_count = sum(sizes)
    if plan is not None and plan.kind == "steps" and plan.steps:
        last = plan.steps[-1]
        if last != "100%" and cumulative(last, target_count) < target_count:
            return (
                f"plan.steps: the last mark ({last}) leaves"
                f" {target_count - cumulative(last, target_count)} of {target_count} targets"
                ' out; end the plan with "100%"'
            )
    if len(sizes) > MAX_BATCHES:
        return f"the plan makes more than {MAX_BATCHES} batches of {target_count} targets"
    too_large = next((n for n, size in enumerate(sizes, 1) if size > MAX_BATCH_SIZE), None)
    if too_large is not None:
        return (
            f"batchPlan: batch {too_large} would have {sizes[too_large - 1]} hosts, more than"
            f" the {MAX_BATCH_SIZE} one batch may have"
        )
    return None
