"""The first thing every HTTP request meets: admin token and body size, before the body is read.

A pure ASGI middleware, so an unauthenticated or oversized request costs neither memory nor a
parse: admin routes answer 401 from the headers alone, and every route answers 413 past its
limit (by `Content-Length`, or while reading a body sent without one). The body is then handed
to the app from memory, already bounded.
"""

import json
from collections.abc import Callable, Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.deps import ADMIN_TOKEN_HEADER, admin_token_problem
from contract.wire import MAX_BODY_BYTES
from server.settings import ApiSettings

AGENT_PATHS = frozenset({"/api/updates/next", "/api/updates/report"})
ADMIN_PREFIX = "/api/"
# A manifest or a rollout request is under 20 KiB; a megabyte leaves room and bounds memory.
ADMIN_MAX_BODY_BYTES = 1024 * 1024
_MAX_LENGTH_DIGITS = 12  # int() of a longer header would be slow or refused outright


class BodyTooLarge(Exception):
    pass


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


async def _answer(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def declares_too_much(headers: Iterable[tuple[bytes, bytes]], limit: int) -> bool:
    """Whether the request's `Content-Length` says its body passes `limit`."""
    for name, declared in headers:
        if name == b"content-length":
            return declared.isdigit() and (
                len(declared) > _MAX_LENGTH_DIGITS or int(declared) > limit
            )
    return False


def too_large_detail(limit: int) -> str:
    return f"body is larger than {limit} bytes"


async def bounded_body(scope: Scope, receive: Receive, limit: int) -> bytes | None:
    """The whole body, or raises BodyTooLarge as soon as it passes `limit` (by its declared
    `Content-Length` before a byte is read); None when the client left before sending it all."""
    if declares_too_much(scope["headers"], limit):
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def answer_too_large(send: Send, limit: int) -> None:
    await _answer(send, 413, too_large_detail(limit))


def _replaying(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()  # a disconnect, when the client goes away
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


class EdgeGate:
    def __init__(
        self, app: ASGIApp, settings: ApiSettings, on_success: Callable[[], None] | None = None
    ) -> None:
        self.app = app
        self.settings = settings
        self.on_success = on_success

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        agent = path in AGENT_PATHS
        if not agent and path.startswith(ADMIN_PREFIX):
            presented = _header(scope, ADMIN_TOKEN_HEADER.encode())
            problem = admin_token_problem(self.settings, presented)
            if problem is not None:
                await _answer(send, 401, problem)
                return
        limit = MAX_BODY_BYTES if agent else ADMIN_MAX_BODY_BYTES
        try:
            body = await bounded_body(scope, receive, limit)
        except BodyTooLarge:
            await answer_too_large(send, limit)
            return
        if body is None:
            return  # the client left before sending its request: nobody to answer
        await self.app(scope, _replaying(body, receive), self._noting_success(path, send))

    def _noting_success(self, path: str, send: Send) -> Send:
        if self.on_success is None or not path.startswith(ADMIN_PREFIX):
            return send
        on_success = self.on_success

        async def send_and_note(message: Message) -> None:
            if message["type"] == "http.response.start" and 200 <= message["status"] < 300:
                on_success()
            await send(message)

        return send_and_note
