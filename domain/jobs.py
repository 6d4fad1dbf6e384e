"""A job as its rollout's workflow writes it to the read model."""

from datetime import datetime

from pydantic import BaseModel

from contract.wire import JobStatus, Step


class JobWrite(BaseModel):
    """What the workflow knows of a job; the row it describes is created or moved forward.
    Travels in Temporal history (an activity's input): field names are fixed."""

    id: str
    rollout_id: str
    instance_id: str
    batch: int
    attempt: int
    status: JobStatus
    step: Step | None = None
    message: str | None = None
    deadline: datetime
