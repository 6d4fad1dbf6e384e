"""The CLI's rollout view counts each host once, by its newest attempt."""

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
            {"number": 2, "jobs": []},
        ],
        "pausedReason": None,
    }
    lines = render(rollout).splitlines()
    assert "AWAITING_ADVANCE" in lines[0] and "batch 1/2" in lines[0]
    assert lines[1].endswith("2/2 succeeded")
    assert "[####################]" in lines[1]
    assert lines[2].endswith("not released")
