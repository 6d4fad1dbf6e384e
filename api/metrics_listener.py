"""/metrics on an address of its own (API_METRICS_ADDRESS), away from the agents and admins.

Prometheus usually scrapes over a network that agents and the public do not reach; with the
address set, the API's own port has no /metrics at all. This is a deliberately small HTTP/1.1
server: one `GET /metrics` per connection, its head read within HEAD_TIMEOUT_SECONDS and at
most HEAD_MAX_BYTES (a connection that sends nothing, or headers without end, is closed), and the
answer closes the connection. Each API process binds the address with SO_REUSEPORT, so
`rollout api --workers N` shares it as it shares the API's port, and any process answers for
all of them (api/metrics.py).
"""

import asyncio
import contextlib
import json
import logging

from prometheus_client import CONTENT_TYPE_LATEST

from api.metrics import Scraper, bearer_token_problem

log = logging.getLogger(__name__)

HEAD_TIMEOUT_SECONDS = 5.0
HEAD_MAX_BYTES = 8 * 1024
METRICS_PATH = "/metrics"


def _answer(status: str, body: bytes, content_type: str, extra: str = "") -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n{extra}\r\n"
    )
    return head.encode() + body


def _problem(status: str, detail: str, extra: str = "") -> bytes:
    body = json.dumps({"detail": detail}).encode()
    return _answer(status, body, "application/json", extra)


def _authorization(lines: list[bytes]) -> bytes | None:
    for line in lines:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"authorization":
            return value.strip()
    return None


class MetricsListener:
    def __init__(
        self,
        address: str,
        scraper: Scraper,
        token: str | None,
        *,
        head_timeout: float = HEAD_TIMEOUT_SECONDS,
    ) -> None:
        host, _, port = address.rpartition(":")
        self.host, self.port = host.strip("[]"), int(port)
        self.scraper = scraper
        self.token = token
        self.head_timeout = head_timeout
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        try:
            self.server = await asyncio.start_server(
                self._serve, self.host, self.port, limit=HEAD_MAX_BYTES, reuse_port=True
            )
        except OSError as exc:
            raise RuntimeError(
                f"API_METRICS_ADDRESS {self.host}:{self.port}: cannot listen ({exc.strerror})"
            ) from None
        log.info("metrics served on http://%s:%d%s", self.host, self.port, METRICS_PATH)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.head_timeout)
            writer.write(await self._respond(head.split(b"\r\n")))
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # nothing, too slow or too much: closed without an answer
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _respond(self, lines: list[bytes]) -> bytes:
        method, _, rest = lines[0].partition(b" ")
        target = rest.partition(b" ")[0].partition(b"?")[0]
        if target != METRICS_PATH.encode():
            return _problem("404 Not Found", "only /metrics is served here")
        if method not in (b"GET", b"HEAD"):
            return _problem("405 Method Not Allowed", "use GET", "allow: GET, HEAD\r\n")
        problem = bearer_token_problem(self.token, _authorization(lines[1:]))
        if problem is not None:
            return _problem("401 Unauthorized", problem, "www-authenticate: Bearer\r\n")
        body = await self.scraper.text()
        answer = _answer("200 OK", body, CONTENT_TYPE_LATEST)
        return answer[: len(answer) - len(body)] if method == b"HEAD" else answer
