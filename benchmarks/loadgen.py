"""A closed-loop HTTP/1.1 load generator for signed agent polls (wrk-like, but it signs).

Every request carries a fresh nonce, the current `sentAt` and a valid `x-agent-signature`, so the
real endpoint does all its work (PROTOCOL §5). It runs in several processes, each with its own
uvloop event loop and keep-alive connections with one request in flight each; a request is
built and signed with a few byte operations and one C-level HMAC, and an answer is parsed just
enough to check it. Only `200` answers count, and with `verify` only those whose
`x-cp-signature` matches the body and whose body echoes the nonce.

Each process reports its own CPU time and event-loop lag over the measured window, so a run
can show that the generator was not the bottleneck.
"""

import asyncio
import hmac
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing import get_context
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import cast

import uvloop

LAG_PROBE_SECONDS = 0.01


@dataclass(frozen=True)
class LoadPlan:
    host: str
    port: int
    path: str
    secret: str = field(repr=False)
    processes: int
    connections_per_process: int
    verify_signature: bool
    # Polls cycle over this many instance ids, as a fleet would.
    instances: int


@dataclass(frozen=True)
class Window:
    """Wall-clock (time.time()): load runs from the start (the warm-up); answers completed
    between `measure_from` and `measure_until` count; sending stops at the end."""

    measure_from: float
    measure_until: float

    @property
    def seconds(self) -> float:
        return self.measure_until - self.measure_from


@dataclass
class ProcessResult:
    ok: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    loop_lag: list[float] = field(default_factory=list)
    cpu_seconds: float = 0.0
    window_seconds: float = 0.0


def _now_text() -> bytes:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ").encode()


class _Clock:
    """`sentAt` changes once a second: formatting it per request would cost more than signing."""

    def __init__(self) -> None:
        self.text = _now_text()
        self.second = int(time.time())

    def sent_at(self) -> bytes:
        second = int(time.time())
        if second != self.second:
            self.second, self.text = second, _now_text()
        return self.text


class _Connection(asyncio.Protocol):
    def __init__(
        self,
        plan: LoadPlan,
        window: Window,
        tag: str,
        first_instance: int,
        result: ProcessResult,
        clock: _Clock,
    ) -> None:
        self.plan = plan
        self.window = window
        self.first_instance = first_instance
        self.key = plan.secret.encode()
        self.tag = tag.encode()
        self.result = result
        self.clock = clock
        self.head = (
            f"POST {plan.path} HTTP/1.1\r\nhost: {plan.host}:{plan.port}\r\n"
            "content-type: application/json\r\n"
        ).encode()
        self.sequence = 0
        self.buffer = bytearray()
        self.nonce = b""
        self.sent = 0.0
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self._send()

    def _send(self) -> None:
        assert self.transport is not None
        if time.time() >= self.window.measure_until:
            self.transport.close()
            return
        self.sequence += 1
        instance = b"bench-%06d" % ((self.first_instance + self.sequence) % self.plan.instances)
        self.nonce = b"%s%012d" % (self.tag, self.sequence)
        body = (
            b'{"channel":"stable","currentVersion":"1.0.0","instanceId":"%s",'
            b'"nonce":"%s","sentAt":"%s"}' % (instance, self.nonce, self.clock.sent_at())
        )
        signature = hmac.digest(self.key, body, "sha256").hex().encode()
        self.sent = time.perf_counter()
        self.transport.write(
            b"%sx-agent-signature: %s\r\ncontent-length: %d\r\n\r\n%s"
            % (self.head, signature, len(body), body)
        )

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).lower()
        length = _header(head, b"content-length")
        if length is None or len(self.buffer) < end + 4 + int(length):
            return
        body = bytes(self.buffer[end + 4 : end + 4 + int(length)])
        del self.buffer[: end + 4 + int(length)]
        self._count(head, body)
        self._send()

    def _count(self, head: bytes, body: bytes) -> None:
        finished = time.time()
        if not self.window.measure_from <= finished < self.window.measure_until:
            return
        status = head[9:12]
        if status != b"200":
            self.result.refused[f"HTTP {status.decode()}"] += 1
            return
        if self.plan.verify_signature:
            signature = _header(head, b"x-cp-signature") or b""
            expected = hmac.digest(self.key, body, "sha256").hex().encode()
            if not hmac.compare_digest(signature, expected):
                self.result.refused["bad response signature"] += 1
                return
            if b'"nonce":"%s"' % self.nonce not in body:
                self.result.refused["nonce not echoed"] += 1
                return
        self.result.ok += 1
        self.result.latencies.append(time.perf_counter() - self.sent)

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None or time.time() < self.window.measure_until:
            self.result.refused["connection lost"] += 1
        if not self.closed.done():
            self.closed.set_result(None)


def _header(head: bytes, name: bytes) -> bytes | None:
    start = head.find(b"\r\n" + name + b":")
    if start < 0:
        return None
    start += len(name) + 3
    end = head.find(b"\r\n", start)
    return head[start : end if end >= 0 else len(head)].strip()


async def _probe_lag(window: Window, result: ProcessResult) -> None:
    while time.time() < window.measure_until:
        started = time.perf_counter()
        await asyncio.sleep(LAG_PROBE_SECONDS)
        if window.measure_from <= time.time() < window.measure_until:
            result.loop_lag.append(max(0.0, time.perf_counter() - started - LAG_PROBE_SECONDS))


async def _drive(plan: LoadPlan, window: Window, number: int) -> ProcessResult:
    loop = asyncio.get_running_loop()
    result = ProcessResult()
    clock = _Clock()
    run = secrets.token_hex(3)  # nonces of two runs against one database never collide
    connections = []
    for n in range(plan.connections_per_process):
        tag = f"{run}p{number:02d}c{n:03d}"
        first = (number * plan.connections_per_process + n) * 7919  # spread over the fleet

        def protocol(tag: str = tag, first: int = first) -> _Connection:
            return _Connection(plan, window, tag, first, result, clock)

        _, connection = await loop.create_connection(protocol, plan.host, plan.port)
        connections.append(connection)
    probe = asyncio.create_task(_probe_lag(window, result))
    await asyncio.sleep(max(0.0, window.measure_from - time.time()))
    cpu_from = time.process_time()
    await asyncio.sleep(max(0.0, window.measure_until - time.time()))
    result.cpu_seconds = time.process_time() - cpu_from
    result.window_seconds = window.seconds
    await asyncio.wait_for(asyncio.gather(*(c.closed for c in connections), probe), 30)
    return result


def _process_main(plan: LoadPlan, number: int, pipe: Connection) -> None:
    pipe.send("ready")  # imported: what makes a spawned process slow to start
    window = pipe.recv()
    pipe.send(uvloop.run(_drive(plan, window, number)))


class LoadGenerator:
    """`start` spawns the processes and waits until they are ready; `go` starts the load now
    and returns the measured window; `results` blocks until every process is done."""

    def __init__(self, plan: LoadPlan) -> None:
        self.plan = plan
        self.pipes: list[Connection] = []
        self.processes: list[BaseProcess] = []

    def start(self) -> None:
        context = get_context("spawn")
        for number in range(self.plan.processes):
            ours, theirs = context.Pipe()
            process = context.Process(
                target=_process_main, args=(self.plan, number, theirs), daemon=True
            )
            process.start()
            self.pipes.append(ours)
            self.processes.append(process)
        for pipe in self.pipes:
            if pipe.recv() != "ready":
                raise RuntimeError("a load generator process did not start")

    def go(self, warmup: float, seconds: float) -> Window:
        now = time.time()
        window = Window(measure_from=now + warmup, measure_until=now + warmup + seconds)
        for pipe in self.pipes:
            pipe.send(window)
        return window

    def results(self) -> list[ProcessResult]:
        results = [pipe.recv() for pipe in self.pipes]
        for process in self.processes:
            process.join()
        return results
