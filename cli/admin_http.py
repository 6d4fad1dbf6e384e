"""The admin CLI's one HTTP function: token from env, the API's `detail` on refusal, exit 1."""

import json
import os
import sys
from typing import Any, NoReturn

import httpx

from cli.errors import fail
from cli.terminal import terminal_safe

DEFAULT_URL = "http://127.0.0.1:8000"


class AdminApi:
    def __init__(self, command: str) -> None:
        self.command = command
        token = os.environ.get("CONTROL_PLANE_ADMIN_TOKEN", "")
        if not token:
            fail(f"{command}: error: CONTROL_PLANE_ADMIN_TOKEN is not set")
        self.base_url = os.environ.get("CONTROL_PLANE_URL", DEFAULT_URL).rstrip("/")
        self.client = httpx.Client(
            base_url=self.base_url, headers={"x-cp-admin-token": token}, timeout=30
        )

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.answer(method, path, **kwargs).json()

    def answer(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The API's successful answer, headers and all; a refusal exits as `call` says."""
        try:
            response = self.client.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            self._refused(f"cannot reach the control plane at {self.base_url} ({exc})")
        if response.is_success:
            return response
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        self._refused(f"{response.status_code} {response.reason_phrase}: {detail}")

    def _refused(self, reason: str) -> NoReturn:
        # The API's `detail` may quote what a host or a request sent (a reason, an id).
        print(f"{self.command}: {terminal_safe(reason)}", file=sys.stderr)
        raise SystemExit(1)


def print_json(document: Any) -> None:
    """Safe for a terminal as it is: ASCII JSON escapes every control and non-ASCII character
    (cli.terminal)."""
    print(json.dumps(document, indent=2, sort_keys=True, ensure_ascii=True))


CELL_WIDTH = 80


def _cell(value: Any) -> str:
    """One line per row: multi-line messages are folded and long ones cut (see --json); what a
    terminal would act on is shown escaped (cli.terminal)."""
    if value is None:
        return "-"
    text = " ".join(terminal_safe(str(value), multiline=True).split())
    return text if len(text) <= CELL_WIDTH else text[: CELL_WIDTH - 1] + "…"


def print_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> None:
    """columns: (header, key) pairs; a missing key prints as '-'."""
    cells = [[h for h, _ in columns]] + [[_cell(row.get(k)) for _, k in columns] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    for line in cells:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
