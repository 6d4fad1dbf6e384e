"""The CLI's rollout view: each host counted once by its newest attempt, and where the current
batch's failed jobs stopped."""

from cli.rollout_view import render


def test_a_retried_host_counts_once_by_its_newest_attempt() -> None:
    rollout = {
        "id": "r1",
        "version": "2.0.0",
        "channel": "stable",
        "status": "awaiting_advance",
        "currentBatch": 1,
        "totalBatches": 2,
        "batches": [
            {
                "number": 1,
                "jobs": [
                    {"instanceId": "web-1", "attempt": 1, "status": "rolled_back"},
                    {"instanceId": "web-1", "attempt": 2, "status": "succeeded"},
                    {"instanceId": "web-2", "attempt": 1, "status": "succeeded"},
                ],
            },
            {"number": 2, "size": 3, "jobs": []},
        ],
        "pausedReason": None,
    }
    lines = render(rollout).splitlines()
    assert "AWAITING_ADVANCE" in lines[0] and "batch 1/2" in lines[0]
    assert lines[1].endswith("2/2 succeeded")
    assert "[####################]" in lines[1]
    assert lines[2].endswith("not released (3 hosts)")


def test_unreachable_hosts_have_their_own_cell_apart_from_failures() -> None:
    jobs = [
        {"instanceId": f"web-{n}", "attempt": 1, "status": status}
        for n, status in enumerate(["succeeded"] * 2 + ["rolled_back", "unreachable"])
    ]
    rollout = {
        "id": "r1",
        "status": "paused",
        "currentBatch": 1,
        "totalBatches": 1,
        "batches": [{"number": 1, "jobs": jobs}],
        "pausedReason": "1 host unreachable (max 0): web-3",
    }
    line = render(rollout).splitlines()[1]
    assert "[" + "#" * 10 + "x" * 5 + "?" * 5 + "]" in line
    assert line.endswith("2/4 succeeded, 1 rolled_back, 1 unreachable")


def test_failed_jobs_say_where_they_stopped_and_how_to_see_their_output() -> None:
    rollout = {
        "id": "r1",
        "status": "paused",
        "currentBatch": 1,
        "batches": [{"number": 1, "jobs": []}],
        "pausedReason": "2 jobs failed (max 0): web-1 rolled_back at smoke, web-2 timed_out",
        "failures": [
            {"jobId": "j1", "instanceId": "web-1", "status": "rolled_back", "step": "smoke"},
            {"jobId": "j2", "instanceId": "web-2", "status": "timed_out", "step": None},
        ],
    }
    assert render(rollout).splitlines()[-2:] == [
        "  web-1 rolled_back at smoke: rollout jobs show j1",
        "  web-2 timed_out (never started): rollout jobs show j2",
    ]
