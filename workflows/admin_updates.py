"""Admin actions (advance, pause, resume, retry, abort) as workflow Updates: each refused at once
by its validator when the state machine says it does not apply now, and answered once the read
model shows what it did (polls are answered from the read model, so an answered pause or abort
is in effect on every API process). Workflow code, kept apart from the run loop."""

import functools
from collections.abc import Awaitable, Callable, Coroutine
from datetime import timedelta
from typing import Any, Protocol, TypeVar

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from workflows.rollout_machine import Action, RolloutMachine
    from workflows.rollout_models import ActionInput, ActionResult

# Unless PostgreSQL does not take the write (a lock, an outage): an abort must still be
# answered then; it is in effect for polls once written.
ANSWER_WRITE_WAIT = timedelta(seconds=5)


class ActsOnRollout(Protocol):
    @property
    def machine(self) -> RolloutMachine: ...

    async def written(self, purpose: str, wait: timedelta) -> None:
        """Returns once the read model shows every change so far, or after `wait`."""


W = TypeVar("W", bound=ActsOnRollout)
In = TypeVar("In", bound=ActionInput)
Handler = Callable[[W, In], Awaitable[ActionResult]]
AdminUpdate = workflow.UpdateMethodMultiParam[[W, In], Coroutine[Any, Any, ActionResult]]


def ensure_allowed(machine: RolloutMachine, action: Action, input: ActionInput) -> None:
    """Raises the refusal an admin sees (HTTP 409 through the API) when `action` does not apply."""
    force = getattr(input, "force", False)
    reason = machine.refusal(action, force=force, now=workflow.now())
    if reason is not None:
        raise ApplicationError(reason, type="RolloutActionRefused", non_retryable=True)


def admin_action(action: Action) -> Callable[[Handler[W, In]], AdminUpdate[W, In]]:
    """The Update named `action`. Its handler asks the machine again first: a replay runs
    handlers without their validators."""

    def decorate(handler: Handler[W, In]) -> AdminUpdate[W, In]:
        @functools.wraps(handler)
        async def checked(self: W, input: In) -> ActionResult:
            ensure_allowed(self.machine, action, input)
            result = await handler(self, input)
            await self.written(f"answer {action}", ANSWER_WRITE_WAIT)
            return result

        @functools.wraps(handler)  # Temporal wants the handler's parameters
        def validate(self: W, input: In) -> None:
            ensure_allowed(self.machine, action, input)

        update = workflow.update(name=action)(checked)
        update.validator(validate)
        return update

    return decorate
