"""Who a fleet revert takes back (domain.reverts), and what binds a downgrade permission
(contract.downgrade): the rules alone, no server."""

import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from contract.downgrade import DowngradePermission
from contract.manifest import ReleaseManifest, UnsignedManifest
from contract.wire import PollRequest
from domain.reverts import TouchedHost, plan_revert

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def host(name: str, **fields: Any) -> TouchedHost:
    base: dict[str, Any] = {
        "instance_id": name,
        "previous_version": "1.0.0",
        "previous_release_id": "rel-1.0.0",
        "job_open": False,
        "job_version": "1.4.0",
        "running_version": "1.4.0",
        "channel": "stable",
        "accepts_downgrade": True,
        "state": "active",
        "held": False,
        "last_seen_at": NOW,
    }
    return TouchedHost.model_validate({**base, **fields})


def test_each_host_on_the_version_goes_back_to_its_own_release_unless_a_reason_holds() -> None:
    hosts = [
        host("a"),
        host("b", previous_version="1.1.0", previous_release_id="rel-1.1.0"),
        host("c", previous_release_id="rel-1.1.0"),
        host("f"),
        host("rolled-back", running_version="1.0.0"),
        host("running", running_version="1.0.0", job_open=True),
        host("unknown", previous_version="0.9.0", previous_release_id=None),
        host("old", accepts_downgrade=False),
        host("moved", channel="beta"),
        # A revert's host: its job took it to its own release, and it goes back from there.
        host("e", job_version="1.1.0", running_version="1.1.0", previous_release_id="rel-1.4.0"),
        host("held", held=True),
        host("gone", state="decommissioned"),
        host("silent", last_seen_at=NOW - timedelta(days=8)),
    ]
    plan = plan_revert(hosts, channel="stable", now=NOW, stale_after_seconds=7 * 86_400)
    assert plan.targets == [
        ("a", "rel-1.0.0"),
        ("b", "rel-1.1.0"),
        ("c", "rel-1.1.0"),
        ("f", "rel-1.0.0"),
        ("e", "rel-1.4.0"),
    ]
    assert plan.main_release() == "rel-1.0.0"  # two each: the first by id, so it is stable
    assert plan.skipped == {
        "still_running": ["running"],
        "no_previous_release": ["unknown"],
        "agent_too_old": ["old"],
        "other_channel": ["moved"],
        "on_hold": ["held"],
        "decommissioned": ["gone"],
        "not_seen": ["silent"],
    }
    assert plan.not_on_version == 1


@pytest.mark.parametrize(
    ("capabilities", "accepts"),
    [(["downgrade"], True), (["x-later", "downgrade"], True), ([], False), (["x-later"], False)],
)
def test_only_agents_declaring_the_capability_take_revert_jobs(
    capabilities: list[str], accepts: bool
) -> None:
    poll = PollRequest.model_validate(
        {
            "instanceId": "web-1",
            "sentAt": "2026-12-07T12:00:00Z",
            "nonce": "n" * 16,
            "channel": "stable",
            "currentVersion": "1.0.0",
            "capabilities": capabilities,
        }
    )
    assert poll.accepts_downgrade is accepts


def _manifest(version: str, sha: str = "0123abcd") -> ReleaseManifest:
    return UnsignedManifest(
        version=version,
        sha=sha,
        channel="stable",
        migrations_required=False,
        breaking_changes=None,
        released_at="2026-01-01T00:00:00Z",
    ).signed("release-secret-" + "x" * 32)


SECRET = secrets.token_hex(16)
IN_AN_HOUR = (datetime.now(UTC) + timedelta(hours=1)).isoformat().replace("+00:00", "Z")


def _permission(**overrides: Any) -> DowngradePermission:
    fields: dict[str, Any] = {
        "job_id": "job-1",
        "instance_id": "web-1",
        "from_version": "2.0.0",
        "manifest": _manifest("1.0.0"),
        "restore": None,
        "expires_at": IN_AN_HOUR,
    }
    return DowngradePermission.issue(SECRET, **{**fields, **overrides})


def _refusal(permission: DowngradePermission, **checked: Any) -> str | None:
    actual: dict[str, Any] = {
        "job_id": "job-1",
        "instance_id": "web-1",
        "current_version": "2.0.0",
        "manifest": _manifest("1.0.0"),
    }
    return permission.refusal(SECRET, **{**actual, **checked})


def test_a_permission_holds_for_its_job_host_change_and_release_only() -> None:
    permission = _permission()
    assert _refusal(permission) is None
    assert _refusal(permission, job_id="job-2") == "it is for job job-1, not job-2"
    assert _refusal(permission, instance_id="web-2") == "it is for host web-1, not web-2"
    assert _refusal(permission, current_version="2.0.1") == (
        "it is for current version 2.0.0, not 2.0.1"
    )
    assert _refusal(permission, manifest=_manifest("0.9.0")) == (
        "it is for target version 1.0.0, not 0.9.0"
    )
    assert _refusal(permission, manifest=_manifest("1.0.0", sha="fedc4321")) == (
        "it is for release sha 0123abcd, not fedc4321"
    )


def test_a_changed_forged_or_expired_permission_is_refused() -> None:
    signature_refused = "its signature does not match"
    changed = _permission().model_copy(update={"restore": "not_needed"})
    assert signature_refused in (_refusal(changed) or "")
    forged = DowngradePermission.issue(
        secrets.token_hex(16),
        job_id="job-1",
        instance_id="web-1",
        from_version="2.0.0",
        manifest=_manifest("1.0.0"),
        restore=None,
        expires_at=IN_AN_HOUR,
    )
    assert signature_refused in (_refusal(forged) or "")
    expired = _permission(expires_at="2026-01-01T00:00:00Z")
    assert _refusal(expired) == "it expired at 2026-01-01T00:00:00Z"
