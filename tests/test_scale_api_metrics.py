"""`rollout api --workers 2`: a scrape of /metrics lands on one process and shows what both
counted (api/metrics.py): held polls summed over the living processes, counters over all of
them, also after a process died; the directory that gathers them is removed at exit."""

import asyncio
import json
import os
import re
import signal
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from contract.long_poll import POLL_WAIT_HEADER
from devstack.ports import free_port
from server.settings import ApiSettings
from tests.agent_requests import assert_signed_by, hmac_hex, poll_body
from tests.control_plane_processes import READY_API, ControlPlaneProcess, api_process, process_env
from tests.fixtures_temporal import eventually

TOKEN = "metrics-fleet-token-0123456789abcdef"
SERVER_PROCESS = re.compile(r"Started server process \[(\d+)\]")
HOLD_SECONDS = 300  # no hold runs out during the test: each ends as the test decides
GATHERED_IN = re.compile(r"metrics of 2 API processes gathered in (\S+)")


async def scrape(api: httpx.AsyncClient) -> dict[str, float]:
    """Unlabelled samples, and the idle-poll count, of one scrape (one process answers it)."""
    response = await api.get("/metrics")
    assert response.status_code == 200, response.text
    return {
        sample.name + ("{idle}" if sample.labels.get("outcome") == "idle" else ""): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if not sample.labels or sample.labels == {"outcome": "idle"}
    }


class Polls:
    """Held polls, each on a connection of its own: which process gets it is the kernel's pick."""

    def __init__(self, url: str, scraper: httpx.AsyncClient, stack: AsyncExitStack) -> None:
        self.url, self.scraper, self.stack = url, scraper, stack
        self.sent = 0
        self.answered_at_once = 0

    async def one_held(self, held_now: int) -> asyncio.Task[httpx.Response]:
        """Sends polls until one is held (the scrape counts `held_now` + 1); with
        LONG_POLL_MAX_HELD=1 a poll that lands on a process already holding one is answered
        at once, idle."""
        async with asyncio.timeout(90):
            while True:
                task = await self._send()

                async def settled(task: asyncio.Task[httpx.Response] = task) -> bool:
                    if task.done():
                        return True
                    return (await scrape(self.scraper)).get("rollout_held_polls") == held_now + 1

                await eventually(settled)
                if not task.done():
                    return task
                body = json.loads(task.result().request.content)
                assert assert_signed_by(task.result(), TOKEN, body["nonce"])["job"] is None
                self.answered_at_once += 1

    async def _send(self) -> asyncio.Task[httpx.Response]:
        client = await self.stack.enter_async_context(
            httpx.AsyncClient(base_url=self.url, timeout=HOLD_SECONDS * 2)
        )
        self.sent += 1
        raw = json.dumps(poll_body(f"web-{self.sent}")).encode()
        headers = {
            "content-type": "application/json",
            "x-agent-signature": hmac_hex(TOKEN, raw),
            POLL_WAIT_HEADER: str(HOLD_SECONDS),
        }
        return asyncio.create_task(client.post("/api/updates/next", content=raw, headers=headers))


async def hang_up(poll: asyncio.Task[httpx.Response]) -> None:
    poll.cancel()
    with pytest.raises((asyncio.CancelledError, httpx.TransportError)):
        await poll


def server_pids(api: ControlPlaneProcess) -> set[int]:
    return {int(m.group(1)) for line in api.lines if (m := SERVER_PROCESS.search(line))}


@pytest.fixture
async def two_api_processes(
    settings: ApiSettings,
) -> AsyncIterator[tuple[ControlPlaneProcess, str]]:
    configured = settings.model_copy(update={"control_plane_agent_token": SecretStr(TOKEN)})
    env = process_env(configured, LONG_POLL_MAX_HELD="1", LONG_POLL_MAX_SECONDS=str(HOLD_SECONDS))
    port = free_port()
    async with api_process(env, port, workers=2) as api:
        yield api, f"http://127.0.0.1:{port}"
    gathered = GATHERED_IN.search(api.log())
    assert gathered, api.log()
    assert not Path(gathered.group(1)).exists(), "the metrics directory outlived the API"


async def test_one_scrape_shows_what_both_api_processes_counted(
    two_api_processes: tuple[ControlPlaneProcess, str],
) -> None:
    api, url = two_api_processes
    async with AsyncExitStack() as stack:
        scraper = await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=30))
        polls = Polls(url, scraper, stack)
        first = await polls.one_held(held_now=0)
        second = await polls.one_held(held_now=1)
        # Each process holds at most one: one scrape sees the two processes' holds.
        at_once = polls.answered_at_once
        print(f"{at_once} polls answered at once before each process held one")

        await hang_up(first)
        await hang_up(second)  # each process answers (and counts) its held poll, idle

        async def both_answered() -> dict[str, float] | None:
            """Each process lowers its held count just before it counts the answer: a scrape
            by the other process may fall in between."""
            samples = await scrape(scraper)
            counted = samples.get("rollout_agent_polls_total{idle}") == at_once + 2
            return samples if counted and samples.get("rollout_held_polls") == 0 else None

        samples = await eventually(both_answered)
        assert samples.get("rollout_poll_holds_refused_total", 0) == at_once

        # A process killed while holding a poll: its hold is no longer counted, its counts are.
        third = await polls.one_held(held_now=0)
        for pid in server_pids(api):
            os.kill(pid, signal.SIGKILL)
        with pytest.raises(httpx.TransportError):
            await third
        await api.wait_for_line(READY_API, count=4)  # both replaced by uvicorn's supervisor
        after_kill = await scrape(scraper)
        assert after_kill["rollout_held_polls"] == 0
        assert after_kill["rollout_agent_polls_total{idle}"] == polls.answered_at_once + 2
