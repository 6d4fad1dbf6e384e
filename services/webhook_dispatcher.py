"""Sends the webhook outbox (store.webhooks): each API process runs one dispatcher, woken by the
database when deliveries are added (and every few seconds for retries). A delivery is leased
before it is sent, so with several API processes each is sent once; one whose sender died is
taken again when its lease ends.

An attempt is a POST of the event's JSON, signed (contract/webhooks.py), answered 2xx within the
timeout; otherwise it is tried again after a doubling delay, and after the last attempt it is
`failed` (an admin can redeliver it).
"""

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable

import asyncpg
import httpx

from contract.webhooks import signature
from store import webhooks
from store.webhooks import Due

log = logging.getLogger(__name__)

BATCH = 20
IDLE_SECONDS = 2.0  # a retry falls due without a notice: look this often
_CONNECTION_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


def _warn_unavailable(exc: Exception) -> None:
    log.warning("webhooks: the database is unavailable (%s); retrying", exc)


class WebhookDispatcher:
    def __init__(
        self,
        pool: asyncpg.Pool,
        dsn: str,
        *,
        timeout_seconds: float,
        retry_base_seconds: float,
        max_attempts: int,
        on_unavailable: Callable[[Exception], None] | None = None,
    ) -> None:
        self.pool = pool
        # The process's note of a database outage (one line for the whole outage, as the API
        # logs it), else a warning per round while the database is unavailable.
        self.on_unavailable = on_unavailable or _warn_unavailable
        self.dsn = dsn
        self.timeout = timeout_seconds
        self.retry_base = retry_base_seconds
        self.max_attempts = max_attempts
        self._notified = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        listener: asyncpg.Connection | None = None
        async with httpx.AsyncClient(timeout=self.timeout) as http:
            while True:
                try:
                    if listener is None or listener.is_closed():
                        listener = await asyncpg.connect(self.dsn)
                        await listener.add_listener(webhooks.OUTBOX_CHANNEL, self._wake)
                    while due := await webhooks.take_due(
                        self.pool, limit=BATCH, lease_seconds=self.timeout * 2 + 5
                    ):
                        await asyncio.gather(*(self._send(http, d) for d in due))
                except _CONNECTION_ERRORS as exc:
                    self.on_unavailable(exc)
                    listener = None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._notified.wait(), IDLE_SECONDS)
                self._notified.clear()

    def _wake(self, *_: object) -> None:
        self._notified.set()

    async def _send(self, http: httpx.AsyncClient, due: Due) -> None:
        body = json.dumps(due.payload, separators=(",", ":"), sort_keys=True).encode()
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": due.id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature(due.secret, due.id, timestamp, body),
        }
        try:
            answer = await http.post(due.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            await self._failed(due, None, f"{type(exc).__name__}: {exc}")
            return
        if answer.is_success:
            await webhooks.delivered(self.pool, due.id, answer.status_code)
        else:
            await self._failed(due, answer.status_code, f"answered {answer.status_code}")

    async def _failed(self, due: Due, status: int | None, error: str) -> None:
        last = due.attempts >= self.max_attempts
        retry = None if last else self.retry_base * 2 ** (due.attempts - 1)
        await webhooks.failed_attempt(
            self.pool, due.id, status=status, error=error, retry_in_seconds=retry
        )
        if last:
            log.warning("webhook %s to %s failed for good: %s", due.id, due.url, error)
