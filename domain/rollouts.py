"""A rollout: what it was asked to do, where it stands, and the write of its read model."""

from datetime import datetime

from pydantic import BaseModel, Field

from contract.downgrade import RestoreMode
from contract.wire import RolloutStatus
from domain.gates import Gate
from domain.plans import BatchPlan
from domain.windows import MaintenanceWindow


class RolloutSpec(BaseModel):
    """What a rollout was asked to do; fixed when it is created. Travels in Temporal history
    (the workflow's input): field names are fixed."""

    id: str
    manifest_id: str
    version: str
    channel: str
    batch_size: int = Field(ge=1)
    auto_advance: bool = False
    bake_seconds: int = Field(default=0, ge=0)
    max_failures: int = Field(default=0, ge=0)
    max_unreachable: int = Field(default=0, ge=0)
    job_timeout_seconds: int = Field(default=3600, ge=1)
    created_by: str
    # How the targets are cut into batches (domain.plans); None: `batch_size` hosts a batch.
    plan: BatchPlan | None = None
    # Hosts joining the channel below the version while it runs are added to a later batch.
    include_late_joiners: bool = False
    # Batches are released and jobs handed out only inside it (domain.windows); None: any time.
    window: MaintenanceWindow | None = None
    # Checked after each batch settles and through its bake (domain.gates); a failing one pauses.
    gates: list[Gate] = Field(default_factory=list)
    gate_interval_seconds: int = Field(default=30, ge=1)
    # A fleet revert (services/reverts.py): the rollout whose hosts it takes back.
    revert_of: str | None = None
    # Revert the hosts it updated when it is aborted or a health gate fails (docs/reverts.md),
    # their data coming back as `auto_revert_restore` says (required with migrations).
    auto_revert: bool = False
    auto_revert_restore: RestoreMode | None = None


def rollout_workflow_id(rollout_id: str) -> str:
    """Each rollout is the Temporal workflow `rollout-<id>`."""
    return f"rollout-{rollout_id}"


class RolloutSnapshot(BaseModel):
    """Where a rollout stands: declared once for the workflow's view, its writes of the read
    model, the stored row and the API's answer."""

    status: RolloutStatus
    paused_reason: str | None
    current_batch: int
    total_batches: int
    target_count: int
    details: str  # one line, e.g. "batch 2/5 · 7 succeeded · 1 in progress · running"
    finished_at: datetime | None


class RolloutProgress(RolloutSnapshot):
    """The snapshot as the workflow writes it. Travels in Temporal history (an activity's
    input): field names are fixed."""

    id: str
    revision: int
    workflow_closed: bool = False
