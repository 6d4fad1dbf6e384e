"""A failed step's output reaches the report's `message` (its head and its tail) within 4 KiB,
however the step prints it: a job's timeline shows what is in the message, nothing more."""

from agent.job import excerpt, fit_message
from agent.steps import OUTPUT_HEAD_BYTES, OUTPUT_TAIL_BYTES, OutputCapture
from contract.wire import MAX_MESSAGE_BYTES
from tests.fake_control_plane import FakeControlPlane
from tests.fixtures_agents import AgentFactory

Plane = tuple[FakeControlPlane, str]


def test_the_agent_keeps_the_start_and_the_end_of_what_a_step_prints() -> None:
    capture = OutputCapture()
    printed = b"".join(f"{n:07d}\n".encode() for n in range(100_000))
    for at in range(0, len(printed), 65_536):
        capture.add(printed[at : at + 65_536])
    left_out = len(printed) - OUTPUT_HEAD_BYTES - OUTPUT_TAIL_BYTES
    head, tail = capture.text().split(f"\n… {left_out:,} bytes of output left out …\n")
    assert head == printed[:OUTPUT_HEAD_BYTES].decode()
    assert tail == printed[-OUTPUT_TAIL_BYTES:].decode()
    short = OutputCapture()
    short.add(b"all of it\n")
    assert short.text() == "all of it\n"


def test_output_that_fits_is_kept_whole() -> None:
    assert excerpt("one\ntwo\n", 100) == ["one", "two"]


def test_long_output_keeps_its_head_and_its_tail_and_says_lines_were_left_out() -> None:
    output = "\n".join(f"line {n}" for n in range(1, 1001))
    kept = excerpt(output, 400)
    gap = kept.index("… (lines left out) …")
    head, tail = kept[:gap], kept[gap + 1 :]
    assert head == [f"line {n}" for n in range(1, len(head) + 1)]
    assert tail == [f"line {n}" for n in range(1001 - len(tail), 1001)]
    assert len(head) >= 5 and len(tail) >= 20  # a quarter of the bytes for the head
    assert sum(len(line.encode()) + 3 for line in kept) <= 400


def test_a_line_longer_than_the_budget_is_cut_not_dropped() -> None:
    (kept,) = excerpt("x" * 10_000 + "END", 300)
    assert kept.startswith("xxx") and kept.endswith("…")
    assert len(kept.encode()) + 3 <= 300
    head, gap, tail = excerpt("start\n" + "y" * 10_000 + "\nEND", 300)
    assert (head, gap, tail) == ("start", "… (lines left out) …", "END")
    head, tail = excerpt("start\n" + "y" * 10_000 + "END", 300)
    assert head == "start" and tail.startswith("…yyy") and tail.endswith("END")


def test_the_message_stays_within_the_limit_with_the_rollback_after_the_failure() -> None:
    noisy = "\n".join(f"migration {n}: " + "z" * 60 for n in range(5_000))
    message = fit_message(
        [
            ("backup ok: exit status 0", ""),
            ("migrate failed: exit status 1", noisy),
            ("rollback ok: exit status 0", ""),
        ]
    )
    assert len(message.encode()) <= MAX_MESSAGE_BYTES
    lines = message.splitlines()
    assert lines[1] == "migrate failed: exit status 1"
    assert lines[2].startswith("  migration 0: ")
    assert lines[-2].startswith("  migration 4999: ")
    assert lines[-1] == "rollback ok: exit status 0"


async def test_a_real_agent_reports_the_head_and_tail_of_a_noisy_failed_step(
    fake_control_plane: Plane, agent_host: AgentFactory
) -> None:
    plane, url = fake_control_plane
    job_id = plane.add_job("host-1", "1.1.0")
    smoke = {"UPDATE_SMOKE_CMD": "echo 'smoke: starting'; seq 1 20000; echo 'smoke: boom'; exit 5"}
    await agent_host(url, plane.secret, extra_env=smoke)

    await plane.wait_until(lambda: plane.final_report(job_id) is not None)
    final = plane.final_report(job_id)
    assert final is not None
    assert (final["status"], final["step"]) == ("rolled_back", "smoke")
    message = final["message"]
    assert len(message.encode()) <= MAX_MESSAGE_BYTES
    lines = message.splitlines()
    failed = lines.index("smoke failed: exit status 5")
    assert lines[failed + 1 : failed + 3] == ["  smoke: starting", "  1"]
    assert "  (lines left out)" not in lines and "  … (lines left out) …" in lines
    assert lines[-3:-1] == ["  20000", "  smoke: boom"]
    assert message.splitlines()[-1] == "rollback ok: exit status 0"
