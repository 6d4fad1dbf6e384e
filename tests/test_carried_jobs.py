"""The current batch crosses continue-as-new by column: the largest batch allowed, with the
longest instance ids allowed, must fit one Temporal payload, and come back as it left."""

import uuid
from datetime import UTC, datetime, timedelta
from typing import get_args

from temporalio.contrib.pydantic import pydantic_data_converter

from contract.wire import JobStatus, Step
from domain.plans import MAX_BATCH_SIZE
from tests.test_rollout_machine import make_spec
from workflows.rollout_machine import RolloutMachine
from workflows.rollout_models import (
    CarriedJobs,
    JobState,
    RolloutInput,
    RolloutState,
)

PAYLOAD_LIMIT = 2 * 1024 * 1024  # Temporal refuses a larger payload
T0 = datetime(2026, 12, 7, tzinfo=UTC)


def batch(size: int, id_length: int) -> list[JobState]:
    statuses, steps = get_args(JobStatus), (None, *get_args(Step))
    return [
        JobState(
            id=uuid.uuid4().hex,
            instance_id=f"h{n:0{id_length - 1}d}",
            batch=7,
            attempt=1 + n % 3,
            status=statuses[n % len(statuses)],
            step=steps[n % len(steps)],
            deadline=T0 + timedelta(seconds=n % 4),
            superseded=n % 5 == 0,
        )
        for n in range(size)
    ]


def test_every_field_of_every_job_comes_back() -> None:
    jobs = batch(500, 12)
    back = CarriedJobs.pack(jobs).unpack()
    assert [job.model_dump() for job in back] == [job.model_dump() for job in jobs]


def test_the_largest_batch_fits_a_continue_as_new_input() -> None:
    spec = make_spec(batch_size=MAX_BATCH_SIZE)
    jobs = CarriedJobs.pack(batch(MAX_BATCH_SIZE, 128))  # the longest ids allowed
    state = RolloutState(current_batch=7, target_count=MAX_BATCH_SIZE * 7, carried_jobs=jobs)
    machine = RolloutMachine(spec, state, state.target_count)
    carried = RolloutInput(spec=spec, state=machine.carry())
    (payload,) = pydantic_data_converter.payload_converter.to_payloads([carried])
    assert len(payload.data) < PAYLOAD_LIMIT
    (received,) = pydantic_data_converter.payload_converter.from_payloads([payload], [RolloutInput])
    next_run = RolloutMachine(spec, received.state, received.state.target_count)
    assert next_run.jobs.keys() == machine.jobs.keys()
    assert next_run.counts() == machine.counts()
