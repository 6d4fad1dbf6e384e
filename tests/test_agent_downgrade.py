"""Real agent processes go down a version only with their own downgrade permission: signed by the
control plane for this host, this job and this change (docs/reverts.md). A forged permission, or
one lifted from another job's answer, is refused before anything runs."""

import secrets
from collections.abc import Callable
from typing import Any

from contract.downgrade import DowngradePermission, RestoreMode
from contract.manifest import ReleaseManifest
from tests.fake_control_plane import FakeControlPlane
from tests.fixtures_agents import AgentFactory

Plane = tuple[FakeControlPlane, str]
Permit = Callable[[dict[str, Any]], dict[str, Any]]


def permit(
    secret: str,
    instance_id: str,
    *,
    from_version: str = "2.0.0",
    restore: RestoreMode | None = None,
) -> Permit:
    """A permission for the job it is made for, as the control plane signs one."""

    def make(document: dict[str, Any]) -> dict[str, Any]:
        return DowngradePermission.issue(
            secret,
            job_id=document["id"],
            instance_id=instance_id,
            from_version=from_version,
            manifest=ReleaseManifest.model_validate(document["manifest"]),
            restore=restore,
            expires_at=document["deadline"],
        ).model_dump()

    return make


async def test_hosts_go_down_only_with_their_own_signed_permission(
    fake_control_plane: Plane, agent_host: AgentFactory
) -> None:
    plane, url = fake_control_plane
    permitted = plane.add_job(
        "permitted", "1.0.0", migrations_required=False, downgrade=permit(plane.secret, "permitted")
    )
    lifted_permission = plane.jobs[permitted].document["downgrade"]
    cases: dict[str, tuple[Permit | None, str]] = {
        # host: (its job's permission, how its preflight refuses)
        "unpermitted": (None, "target 1.0.0 is not newer than current 2.0.0"),
        "forged": (
            permit(secrets.token_hex(16), "forged"),
            "untrusted release: downgrade permission refused: its signature does not match",
        ),
        "lifted": (
            lambda _: lifted_permission,
            f"untrusted release: downgrade permission refused: it is for job {permitted}",
        ),
        "stale": (
            permit(plane.secret, "stale", from_version="1.9.0"),
            "downgrade permission refused: it is for current version 1.9.0, not 2.0.0",
        ),
        "no-restore-command": (
            permit(plane.secret, "no-restore-command", restore="agent"),
            "the revert restores data on this host, but UPDATE_RESTORE_CMD is not set",
        ),
    }
    jobs = {
        name: plane.add_job(name, "1.0.0", migrations_required=False, downgrade=downgrade)
        for name, (downgrade, _) in cases.items()
    }
    hosts = {
        name: await agent_host(url, plane.secret, instance_id=name, current_version="2.0.0")
        for name in ["permitted", *cases]
    }
    jobs["permitted"] = permitted
    await plane.wait_until(lambda: all(plane.final_report(j) for j in jobs.values()))

    went_down = plane.final_report(permitted)
    assert went_down is not None and went_down["status"] == "succeeded", went_down
    assert went_down["message"] == "reverted from 2.0.0 to 1.0.0"
    assert hosts["permitted"].current() == "1.0.0"
    assert hosts["permitted"].state()["current_version"] == "1.0.0"
    for name, (_, refusal) in cases.items():
        final = plane.final_report(jobs[name])
        assert final is not None and (final["status"], final["step"]) == ("failed", "preflight")
        assert refusal in final["message"], (name, final["message"])
        assert hosts[name].steps() == [], name  # nothing ran on the host
        assert hosts[name].current() == "2.0.0"
