"""Custom search attributes of rollout workflows, defined once for the workflow, the dev server,
tests and production setup (they must be registered before a workflow upserts them)."""

from temporalio.common import SearchAttributeKey

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
