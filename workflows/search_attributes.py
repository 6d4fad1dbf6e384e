"""Custom search attributes of rollout workflows, defined once for the workflow, the dev server,
tests and production setup (they must be registered before a workflow upserts them)."""

from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes

from domain.rollouts import RolloutSpec

ROLLOUT_CHANNEL = SearchAttributeKey.for_keyword("RolloutChannel")
RELEASE_VERSION = SearchAttributeKey.for_keyword("ReleaseVersion")
ROLLOUT_STATUS = SearchAttributeKey.for_keyword("RolloutStatus")

ALL_KEYS: tuple[SearchAttributeKey[str], ...] = (ROLLOUT_CHANNEL, RELEASE_VERSION, ROLLOUT_STATUS)


def dev_server_flags() -> list[str]:
    """`temporal server start-dev` arguments registering every key (all Keyword)."""
    flags: list[str] = []
    for key in ALL_KEYS:
        flags += ["--search-attribute", f"{key.name}=Keyword"]
    return flags


def start_attributes(spec: RolloutSpec) -> TypedSearchAttributes:
    """A rollout's search attributes when its workflow starts (the Web UI updates them)."""
    return TypedSearchAttributes(
        [
            SearchAttributePair(ROLLOUT_CHANNEL, spec.channel),
            SearchAttributePair(RELEASE_VERSION, spec.version),
            SearchAttributePair(ROLLOUT_STATUS, "running"),
        ]
    )


def start_summary(spec: RolloutSpec) -> str:
    """The one line the Web UI shows of a rollout's workflow."""
    if spec.revert_of:
        return (
            f"Revert of rollout {spec.revert_of} on channel {spec.channel}"
            f" (mostly to {spec.version})"
        )
    return f"Rollout of {spec.version} to channel {spec.channel}"
