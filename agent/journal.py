"""The agent's durable memory in AGENT_STATE_DIR: current version, the job under way and the step
it reached, finished job ids, and final reports not yet acknowledged.

Written before each step with write-to-temp, fsync, atomic rename and a directory fsync, so a
`kill -9` or power loss leaves either the old or the new state, never a torn file.
"""

import os
from pathlib import Path

from pydantic import BaseModel, Field, field_validator

from agent.state_dir import (
    PRIVATE_FILE_MODE,
    StateDirUnusable,
    make_private_dir,
    open_private,
    writing,
)
from contract.text import storable_or_none
from contract.wire import JobAssignment, ReportStatus, Step

STATE_FILE = "state.json"
REMEMBERED_JOBS = 1000
# Backup references kept (one per version this host updated to, the newest): what a fleet revert
# that restores data passes to UPDATE_RESTORE_CMD.
REMEMBERED_BACKUPS = 20
MAX_BACKUP_REF_CHARS = 1024


class Report(BaseModel):
    """The fields of a report; the signing fields are added when it is sent."""

    jobId: str
    status: ReportStatus
    step: Step | None
    message: str | None = None

    @field_validator("message")
    @classmethod
    def _storable(cls, message: str | None) -> str | None:
        """Free text the control plane can store; also mends a journal written before this."""
        return storable_or_none(message)


class ActiveJob(BaseModel):
    job: JobAssignment
    previous_version: str
    step: Step
    rolling_back: bool = False
    failed_step: Step | None = None
    failure: str | None = None
    backup_ref: str | None = None  # what its backup step printed last


class JournalState(BaseModel):
    current_version: str
    active: ActiveJob | None = None
    finished_jobs: list[str] = Field(default_factory=list)
    unacknowledged: list[Report] = Field(default_factory=list)
    # Version → the backup reference printed by the backup step of the update to it: the data
    # as it was before that version ran, for a revert that restores it.
    backups: dict[str, str] = Field(default_factory=dict)


def backup_reference(output: str) -> str | None:
    """The backup step's reference: the last line it printed (a path, a snapshot id)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return lines[-1][:MAX_BACKUP_REF_CHARS] if lines else None


class Journal:
    """State in memory, mirrored to `path` when one is given (a fleet simulator may pass None)."""

    def __init__(self, state: JournalState, path: Path | None) -> None:
        self.state = state
        self.path = path
        # The first write the directory refused: the agent stops on it, wherever it happened
        # (an acknowledgement written by the report sender, too).
        self.unusable: StateDirUnusable | None = None

    @classmethod
    def open(cls, state_dir: Path | None, first_run_version: str) -> "Journal":
        if state_dir is None:
            return cls(JournalState(current_version=first_run_version), None)
        make_private_dir(state_dir)
        path = state_dir / STATE_FILE
        if path.exists():
            return cls(JournalState.model_validate_json(path.read_bytes()), path)
        journal = cls(JournalState(current_version=first_run_version), path)
        journal._save()
        return journal

    def check_writable(self) -> None:
        """Write the state as it is: raises StateDirUnusable when the directory does not take
        it, before anything is run that the journal must follow."""
        self._save()

    def _save(self) -> None:
        if self.path is None:
            return
        try:
            with writing(self.path.parent):
                self._write(self.path)
        except StateDirUnusable as exc:
            self.unusable = self.unusable or exc
            raise

    def _write(self, path: Path) -> None:
        temporary = path.with_suffix(".tmp")
        with open(open_private(temporary, os.O_WRONLY | os.O_TRUNC), "wb") as handle:
            os.fchmod(handle.fileno(), PRIVATE_FILE_MODE)  # a stale temporary may be older
            handle.write(self.state.model_dump_json(indent=1).encode())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def has_finished(self, job_id: str) -> bool:
        return job_id in self.state.finished_jobs

    def enter_step(self, job: JobAssignment, step: Step) -> None:
        active = self.state.active
        if active is None or active.job.id != job.id:
            active = ActiveJob(job=job, previous_version=self.state.current_version, step=step)
        self.state.active = active.model_copy(update={"step": step})
        self._save()

    def note_backup(self, output: str) -> None:
        """Keep the reference the backup step printed with the job under way."""
        assert self.state.active is not None
        self.state.active = self.state.active.model_copy(
            update={"backup_ref": backup_reference(output)}
        )
        self._save()

    def enter_rollback(self, failed_step: Step, failure: str) -> None:
        assert self.state.active is not None
        self.state.active = self.state.active.model_copy(
            update={
                "step": "rollback",
                "rolling_back": True,
                "failed_step": failed_step,
                "failure": failure,
            }
        )
        self._save()

    def finish(self, report: Report, new_version: str | None) -> None:
        """One write: the job leaves `active`, is remembered, and its report waits for an ack;
        an update to `new_version` keeps its backup reference for that version."""
        active = self.state.active
        if active is not None and active.job.id == report.jobId:
            self.state.active = None
            if new_version is not None and active.backup_ref is not None:
                kept = {v: ref for v, ref in self.state.backups.items() if v != new_version}
                kept[new_version] = active.backup_ref
                self.state.backups = dict(list(kept.items())[-REMEMBERED_BACKUPS:])
        self.state.finished_jobs = [*self.state.finished_jobs, report.jobId][-REMEMBERED_JOBS:]
        self.state.unacknowledged = [*self.state.unacknowledged, report]
        if new_version is not None:
            self.state.current_version = new_version
        self._save()

    def acknowledged(self, report: Report) -> None:
        self.state.unacknowledged = [r for r in self.state.unacknowledged if r != report]
        self._save()
