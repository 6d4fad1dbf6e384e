"""What the Temporal Web UI shows of a running rollout: its current details (the one-line summary
on the workflow's page, User Metadata) and the search attributes lists filter on. Workflow code."""

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from workflows.rollout_machine import RolloutMachine
    from workflows.search_attributes import RELEASE_VERSION, ROLLOUT_CHANNEL, ROLLOUT_STATUS


class WebUi:
    def __init__(self) -> None:
        self._published: tuple[str, str] | None = None

    def publish(self, machine: RolloutMachine) -> None:
        """Current details always; search attributes only when the status changed, as each
        upsert is an event in the history."""
        workflow.set_current_details(machine.details())
        spec = machine.spec
        published = (machine.status, spec.version)
        if published == self._published:
            return
        workflow.upsert_search_attributes(
            [
                ROLLOUT_CHANNEL.value_set(spec.channel),
                RELEASE_VERSION.value_set(spec.version),
                ROLLOUT_STATUS.value_set(machine.status),
            ]
        )
        self._published = published
