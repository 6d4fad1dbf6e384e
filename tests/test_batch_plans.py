"""Each plan cuts the targets into the batches it promises (domain.plans): every target in
exactly one batch, in order, none empty, sizes as planned; and a plan that cannot be is refused
with the reason."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from domain.plans import BatchPlan, Exponential, batch_sizes, batch_starts, cumulative, plan_problem
from tests.test_rollout_machine import make_spec
from workflows.rollout_machine import RolloutMachine
from workflows.rollout_models import RolloutState

targets = st.integers(min_value=0, max_value=20_000)


def _covers_every_target_once(sizes: list[int], count: int) -> None:
    assert all(size >= 1 for size in sizes)
    assert sum(sizes) == count
    starts = batch_starts(sizes)
    assert starts == sorted(starts)
    assert all(a + size == b for a, size, b in zip(starts, sizes, starts[1:], strict=False))


@given(count=targets, size=st.integers(min_value=1, max_value=10_000), canary=st.booleans())
def test_a_fixed_plan_cuts_batch_size_hosts_a_batch(count: int, size: int, canary: bool) -> None:
    plan = BatchPlan(canary=True) if canary else None
    sizes = batch_sizes(size, plan, count)
    _covers_every_target_once(sizes, count)
    rest = sizes[1:] if canary and count else sizes
    if canary and count:
        assert sizes[0] == 1
    assert all(s == size for s in rest[:-1])
    assert len(rest) == math.ceil((count - (1 if canary and count else 0)) / size)


@st.composite
def step_plans(draw: st.DrawFn) -> list[int | str]:
    percents = sorted(draw(st.sets(st.integers(min_value=1, max_value=100), max_size=6)))
    hosts = sorted(draw(st.sets(st.integers(min_value=1, max_value=5_000), max_size=3)))
    marks: list[int | str] = [*hosts, *(f"{p}%" for p in percents)]
    return marks or ["100%"]


@given(count=targets, marks=step_plans(), canary=st.booleans())
def test_a_steps_plan_releases_up_to_each_mark(
    count: int, marks: list[int | str], canary: bool
) -> None:
    plan = BatchPlan(kind="steps", steps=marks, canary=canary)
    sizes = batch_sizes(1, plan, count)
    _covers_every_target_once(sizes, count)
    reached = {sum(sizes[: n + 1]) for n in range(len(sizes))}
    before = 1 if canary and count else 0
    for mark in marks:  # each mark ends a batch, unless one before it reached as far already
        released = cumulative(mark, count)
        assert released in reached or released <= before
        before = max(before, released)


@given(
    count=targets,
    first=st.integers(min_value=1, max_value=50),
    factor=st.floats(min_value=1.0, max_value=4.0),
)
def test_an_exponential_plan_grows_each_batch_by_its_factor(
    count: int, first: int, factor: float
) -> None:
    plan = BatchPlan(kind="exponential", exponential=Exponential(first=first, factor=factor))
    sizes = batch_sizes(1, plan, count)
    _covers_every_target_once(sizes, count)
    expected = [math.ceil(first * factor**n) for n in range(len(sizes))]
    assert sizes[:-1] == expected[:-1]
    assert sizes[-1] <= expected[-1] if sizes else True


def test_the_documented_example() -> None:
    plan = BatchPlan(kind="steps", steps=[1, "10%", "50%", "100%"])
    assert batch_sizes(1, plan, 200) == [1, 19, 80, 100]
    assert batch_sizes(1, plan, 3) == [1, 1, 1]  # 10% of 3 rounds up to the one already out
    assert batch_sizes(1, BatchPlan(kind="steps", steps=["100%"]), 10_000) == [10_000]


@pytest.mark.parametrize(
    ("plan", "problem"),
    [
        ({"kind": "steps", "steps": [10, 5]}, "mark 2: 5 hosts do not grow past 10"),
        ({"kind": "steps", "steps": ["50%", "50%"]}, "mark 2: 50% does not grow past 50%"),
        ({"kind": "steps", "steps": ["0%"]}, "a number of hosts or a percentage"),
        ({"kind": "steps", "steps": ["101%"]}, "a number of hosts or a percentage"),
        ({"kind": "steps", "steps": [0]}, "mark 1: at least one host"),
        ({"kind": "steps", "steps": []}, "1 to 100 marks"),
        ({"kind": "exponential"}, "needs its first size and factor"),
        ({"kind": "exponential", "exponential": {"first": 1, "factor": 0.5}}, "factor"),
        ({"kind": "fixed", "steps": [1]}, "cuts by batchSize"),
    ],
)
def test_a_malformed_plan_is_refused_with_its_reason(plan: dict, problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        BatchPlan.model_validate(plan)


def test_a_plan_that_leaves_targets_out_says_how_many() -> None:
    plan = BatchPlan(kind="steps", steps=[1, 10])
    assert plan_problem(plan, batch_sizes(1, plan, 25)) == (
        'plan.steps: the last mark (10) leaves 15 of 25 targets out; end the plan with "100%"'
    )
    assert plan_problem(plan, batch_sizes(1, plan, 10)) is None
    whole = BatchPlan(kind="steps", steps=[1, "100%"])
    assert plan_problem(whole, batch_sizes(1, whole, 25)) is None
    assert plan_problem(whole, batch_sizes(1, whole, 20_001)) == (
        "batchPlan: batch 2 would have 20000 hosts, more than the 10000 one batch may have"
    )


@given(count=st.integers(min_value=0, max_value=5_000), marks=step_plans(), canary=st.booleans())
def test_the_rollout_machine_hands_out_the_plans_batches(
    count: int, marks: list[int | str], canary: bool
) -> None:
    plan = BatchPlan(kind="steps", steps=marks, canary=canary)
    machine = RolloutMachine(make_spec(plan=plan), RolloutState(), count)
    sizes = batch_sizes(1, plan, count)
    assert machine.total_batches == len(sizes)
    ranges = [machine.batch_range(n) for n in range(1, machine.total_batches + 1)]
    assert [size for _, size in ranges] == sizes
    assert [start for start, _ in ranges] == batch_starts(sizes)  # in order, none skipped
