"""Held polls (long-poll): an agent's poll with nothing to hand out waits, and is answered as
soon as a job for its instance may exist, whichever API process the job was released through.

Whatever changes what a rollout hands out is written to the read model by the worker
(activities/rollouts.py), which sends a PostgreSQL notice in the same transaction
(store.polls.announce). Each API process LISTENs on ONE connection of its own, outside the pool,
and on a notice for a rollout finds in one query which held polls have an open job in it, and
wakes those to look again: the read model they look in is what the notice announced. A held
poll holds no pool connection while it waits.

Holds are bounded per process (`LONG_POLL_MAX_HELD`): past the bound a poll is answered at
once, as a plain poll. When the listening connection is lost (a PostgreSQL restart) it is
opened again with backoff, and every held poll with an open job checks again: notices sent
meanwhile are lost, the rows they announced are not.
"""

import asyncio
import contextlib
import heapq
import itertools
import logging
import re
import weakref
from dataclasses import dataclass

import asyncpg
from fastapi import Request
from prometheus_client import Counter, Gauge

from api.agents.auth import Verified
from api.agents.replies import AgentError
from api.connections import CONNECTION_LOST
from contract.long_poll import LONG_POLL_HEADER, POLL_WAIT_HEADER
from contract.wire import PollRequest
from store import polls

log = logging.getLogger(__name__)

HELD_POLLS = Gauge(
    "rollout_held_polls",
    "Agent polls held right now (summed over the living API processes)",
    multiprocess_mode="livesum",
)
HOLDS_REFUSED = Counter(
    "rollout_poll_holds_refused_total",
    "Polls that asked to be held but were answered at once: LONG_POLL_MAX_HELD polls were held",
)
LISTENER_CONNECTS = Counter(
    "rollout_dispatch_listener_connects_total",
    "Times the dispatch listener (re)connected to PostgreSQL; each one re-checks held polls",
)

_WAIT_VALUE = re.compile(r"^[0-9]{1,6}$")
# How often an otherwise silent listening connection is probed: a peer that vanished without
# closing the socket is noticed within this (plus the probe's own timeout).
PROBE_INTERVAL_SECONDS = 10.0
PROBE_TIMEOUT_SECONDS = 5.0
RECONNECT_BACKOFF = (0.1, 5.0)  # first delay, longest delay; doubled per failed attempt
# How the listening connection shows in pg_stat_activity.
LISTENER_APPLICATION_NAME = "rollout-dispatch-listener"
_CONNECTION_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


class Deadlines:
    """When each held poll's time runs out, on one timer for all of them: a timer each was 700
    bytes of every held poll. A poll answered sooner is forgotten (a weak reference), not
    searched for."""

    def __init__(self) -> None:
        self._due: list[tuple[float, int, weakref.ref[Hold]]] = []
        self._order = itertools.count()  # ties never compare the references
        self._timer: asyncio.TimerHandle | None = None

    def add(self, hold: "Hold", when: float) -> None:
        heapq.heappush(self._due, (when, next(self._order), weakref.ref(hold)))
        if self._due[0][0] == when:  # the soonest now: the timer moves up to it
            self._arm()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        if self._due:
            self._timer = asyncio.get_running_loop().call_at(self._due[0][0], self._expire)

    def _expire(self) -> None:
        # uvloop's timers count whole milliseconds: this one may fire a little early.
        now = asyncio.get_running_loop().time() + 0.001
        while self._due and self._due[0][0] <= now:
            hold = heapq.heappop(self._due)[2]()
            if hold is not None:
                hold.expire()
        self._arm()


@dataclass(eq=False, slots=True, weakref_slot=True)
class Hold:
    """One poll's permission to wait; `seconds` is 0 for a poll answered at once.

    Ten thousand may be held at once, so a hold is small: one future per wait, and its place in
    its process's `Deadlines`. The agent hanging up is learnt from the connection itself
    (api.connections sets a future in the request's scope); under another server, a task
    watches the ASGI `receive`."""

    request: Request
    seconds: int
    instance_id: str
    dispatcher: "Dispatcher"
    _wakeup: asyncio.Future[bool] | None = None  # while waiting
    _woken: bool = False  # woken while not waiting (between its look and its wait)
    _watching: asyncio.Future[None] | None = None  # done when the agent hangs up
    _hung_up: bool = False
    _started: bool = False
    _expired: bool = False
    _over: bool = False

    def __enter__(self) -> "Hold":
        """Registered before the poll's first look at the database, so a notice sent after that
        look wakes it: none falls between the look and the wait."""
        if self.seconds:
            self.dispatcher.register(self)
        return self

    def __exit__(self, *_: object) -> None:
        if self.seconds:
            self.close()
            self.dispatcher.unregister(self)

    def wake(self) -> None:
        self._settle(True)

    def expire(self) -> None:
        """The time asked for has passed."""
        self._expired = True
        self._settle(False)

    def end(self) -> None:
        """The process stops: answer now, with what the poll has."""
        self._over = True
        self._settle(False)

    def close(self) -> None:
        # The connection outlives the hold (kept alive), and a task would refer to the hold in a
        # cycle that waits for the garbage collector's rare oldest pass: let go of both.
        watching, self._watching = self._watching, None
        if watching is not None:
            watching.remove_done_callback(self._hang_up)
            if isinstance(watching, asyncio.Task):
                watching.cancel()

    def _settle(self, woken: bool) -> None:
        if self._wakeup is None:
            self._woken = self._woken or woken
        elif not self._wakeup.done():
            self._wakeup.set_result(woken)

    def _hang_up(self, _: object) -> None:
        self._hung_up = True
        self._settle(False)

    def _watch_hang_up(self) -> None:
        extension = self.request.scope.get("extensions", {}).get(CONNECTION_LOST, {})
        lost: asyncio.Future[None] | None = extension.get("future")
        if lost is None:
            lost = asyncio.ensure_future(self._disconnect())
        lost.add_done_callback(self._hang_up)
        self._watching = lost

    async def woken(self) -> bool:
        """Waits until this poll should check again (True) or its hold is over (False): the
        time asked for has passed, the agent hung up, or the process is stopping."""
        if self.seconds == 0 or self._over:
            return False
        if not self._started:
            self._started = True
            self.dispatcher.deadlines.add(self, asyncio.get_running_loop().time() + self.seconds)
            self._watch_hang_up()
        if self._expired or self._hung_up:
            return False
        if self._woken:
            self._woken = False
            return True
        self._wakeup = asyncio.get_running_loop().create_future()
        try:
            return await self._wakeup and not self._over
        finally:
            self._wakeup = None

    async def _disconnect(self) -> None:
        """Returns when the client goes away (its body was read in full before the hold)."""
        while (await self.request.receive())["type"] != "http.disconnect":
            pass


class Dispatcher:
    """The waiters of one API process and its listening connection."""

    def __init__(
        self,
        dsn: str,
        pool: asyncpg.Pool,
        *,
        max_seconds: int,
        max_held: int,
    ) -> None:
        self.dsn = dsn
        self.pool = pool
        self.max_seconds = max_seconds
        self.max_held = max_held
        # On every poll answered 200: whether, and how long, this API holds polls.
        self.advertisement: dict[str, str] = (
            {LONG_POLL_HEADER: str(max_seconds)} if max_seconds and max_held else {}
        )
        # An instance rarely has two polls held (a restarted agent's old one): a list, not a set.
        self._held: dict[str, list[Hold]] = {}
        self._count = 0
        self.deadlines = Deadlines()
        self._stopping = False
        self._listener: asyncio.Task[None] | None = None
        # Set while the listening connection is up: notices reach this process.
        self.listening = asyncio.Event()
        # One re-check in flight per rollout (None: every rollout); notices meanwhile ask for
        # one more after it, so a burst of writes costs two queries, not one per write.
        self._rechecks: dict[str | None, asyncio.Task[None]] = {}
        self._again: set[str | None] = set()

    # --- the poll's side ------------------------------------------------------------------

    def hold(self, request: Request, call: Verified[PollRequest]) -> Hold:
        """A poll's hold, to enter (`with`) before its first look at the database; its seconds
        are 0 when this process holds no more polls or is stopping."""
        hold = Hold(request, self._seconds_asked(request, call), call.body.instanceId, self)
        if self._stopping:
            hold.seconds = 0
        elif hold.seconds and self._count >= self.max_held:
            HOLDS_REFUSED.inc()
            hold.seconds = 0
        return hold

    def register(self, hold: Hold) -> None:
        self._held.setdefault(hold.instance_id, []).append(hold)
        self._count += 1
        HELD_POLLS.inc()

    def unregister(self, hold: Hold) -> None:
        self._count -= 1
        HELD_POLLS.dec()
        waiting = self._held[hold.instance_id]
        waiting.remove(hold)
        if not waiting:
            del self._held[hold.instance_id]

    def _seconds_asked(self, request: Request, call: Verified[PollRequest]) -> int:
        value = request.headers.get(POLL_WAIT_HEADER)
        if value is None:
            return 0
        if not _WAIT_VALUE.fullmatch(value.strip()):
            raise AgentError(
                422,
                f"{POLL_WAIT_HEADER}: a whole number of seconds (this API holds a poll up to"
                f" {self.max_seconds} s)",
                secret=call.secret,
                nonce=call.body.nonce,
            )
        return min(int(value), self.max_seconds)  # more than offered: the most offered

    # --- the listener's side --------------------------------------------------------------

    async def start(self) -> None:
        if self.max_seconds and self.max_held:
            self._listener = asyncio.create_task(self._listen_forever())

    def stopping(self) -> None:
        """The process is going away: answer every held poll now and hold no more, so that
        stopping does not wait for holds to run out (cli/api.py calls this on SIGTERM)."""
        self._stopping = True
        for holds in self._held.values():
            for hold in holds:
                hold.end()

    async def stop(self) -> None:
        self.stopping()
        self.deadlines.stop()
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        for task in list(self._rechecks.values()):
            task.cancel()

    async def _listen_forever(self) -> None:
        """A PostgreSQL outage is logged once, as an ERROR, by api/errors.py; the listener's
        own losses and retries are INFO and DEBUG lines, not more of the same."""
        delay = RECONNECT_BACKOFF[0]
        while True:
            try:
                conn = await asyncpg.connect(
                    self.dsn, server_settings={"application_name": LISTENER_APPLICATION_NAME}
                )
            except _CONNECTION_ERRORS as exc:
                log.debug("dispatch listener: cannot connect (%s); retry in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_BACKOFF[1])
                continue
            delay = RECONNECT_BACKOFF[0]
            try:
                await self._listen(conn)
                log.info("dispatch listener: connection lost; reconnecting")
            except _CONNECTION_ERRORS as exc:
                log.info("dispatch listener: connection lost (%s); reconnecting", exc)
            finally:
                self.listening.clear()
                conn.terminate()

    async def _listen(self, conn: asyncpg.Connection) -> None:
        """Until the connection is lost; returns or raises then."""
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _: lost.set())
        await conn.add_listener(polls.DISPATCH_CHANNEL, self._noticed)
        LISTENER_CONNECTS.inc()
        self.listening.set()
        log.info("dispatch listener: listening on %s", polls.DISPATCH_CHANNEL)
        self._recheck(None)  # whatever was announced while no one listened
        while not lost.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lost.wait(), PROBE_INTERVAL_SECONDS)
                return
            await conn.fetchval("SELECT 1", timeout=PROBE_TIMEOUT_SECONDS)

    def _noticed(self, _conn: object, _pid: int, _channel: str, rollout_id: str) -> None:
        self._recheck(rollout_id)

    def _recheck(self, rollout_id: str | None) -> None:
        if not self._held:
            return
        if rollout_id in self._rechecks:
            self._again.add(rollout_id)
            return
        self._rechecks[rollout_id] = asyncio.create_task(self._rechecking(rollout_id))

    async def _rechecking(self, rollout_id: str | None) -> None:
        try:
            await self._wake_those_with_jobs(rollout_id)
            while rollout_id in self._again:
                self._again.discard(rollout_id)
                await self._wake_those_with_jobs(rollout_id)
        finally:
            del self._rechecks[rollout_id]

    async def _wake_those_with_jobs(self, rollout_id: str | None) -> None:
        if not self._held:
            return
        try:
            found = await polls.with_open_jobs(self.pool, list(self._held), rollout_id)
        except _CONNECTION_ERRORS as exc:
            # Without an answer, every held poll checks for itself.
            log.warning("dispatch: cannot find which held polls have jobs (%s)", exc)
            found = list(self._held)
        for instance_id in found:
            for hold in self._held.get(instance_id, ()):
                hold.wake()
