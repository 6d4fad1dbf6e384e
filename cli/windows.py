"""`rollout windows show|set|clear --channel C`: a channel's default maintenance window; and the
`--window "mon-fri 22:00-04:00"` option of `rollouts create|preview` (docs/planning.md)."""

import argparse
import re

from cli.admin_http import AdminApi, print_json
from cli.errors import fail
from domain.windows import DAYS

_RANGE = re.compile(r"^(?P<days>[a-z,\-]+)\s+(?P<start>\d\d:\d\d)-(?P<end>\d\d:\d\d)$")


def _days(text: str) -> list[str]:
    if text == "daily":
        return list(DAYS)
    days: list[str] = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        if first not in DAYS or (last and last not in DAYS):
            raise ValueError(part)
        a, b = DAYS.index(first), DAYS.index(last or first)
        days += [DAYS[n % 7] for n in range(a, (b if b >= a else b + 7) + 1)]
    return list(dict.fromkeys(days))


def parse_window(command: str, ranges: list[str], timezone: str | None) -> dict:
    """`["mon-fri 22:00-04:00", "sat,sun 01:00-06:00"]` as the API takes it."""
    parsed = []
    for text in ranges:
        match = _RANGE.fullmatch(text.strip().lower())
        try:
            if match is None:
                raise ValueError(text)
            days = _days(match["days"])
        except ValueError:
            fail(
                f"{command}: error: --window {text!r}: days and hours like"
                ' "mon-fri 22:00-04:00", "sat,sun 01:00-06:00" or "daily 02:00-04:00"'
            )
        parsed.append({"days": days, "start": match["start"], "end": match["end"]})
    return {"timezone": timezone or "UTC", "ranges": parsed}


def add_window_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--window",
        action="append",
        metavar='"DAYS HH:MM-HH:MM"',
        help='when batches may be released and jobs handed out: "mon-fri 22:00-04:00" (repeat'
        " for more ranges; default: the channel's window, or any time)",
    )
    p.add_argument("--timezone", help="IANA zone of --window, like Europe/Berlin (default UTC)")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("windows", help="a channel's default maintenance window")
    actions = p.add_subparsers(dest="action", required=True)
    show = actions.add_parser("show", help="the channel's window")
    put = actions.add_parser("set", help="set the channel's window (audited)")
    add_window_options(put)
    clear = actions.add_parser("clear", help="remove the channel's window (audited)")
    for action in (show, put, clear):
        action.add_argument("--channel", required=True)
        action.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def describe(window: dict) -> str:
    ranges = "; ".join(
        f"{','.join(r['days'])} {r['start']}-{r['end']}" for r in window.get("ranges", [])
    )
    return f"{ranges} ({window.get('timezone', 'UTC')})"


def run(args: argparse.Namespace) -> int:
    command = f"rollout windows {args.action}"
    api = AdminApi(command)
    path = f"/api/channels/{args.channel}/window"
    if args.action == "clear":
        api.answer("DELETE", path)
        print(f"channel {args.channel}: no default window")
        return 0
    if args.action == "set":
        if not args.window:
            fail(f"{command}: error: give at least one --window")
        window = api.call("PUT", path, json=parse_window(command, args.window, args.timezone))
    else:
        window = api.call("GET", path)
    print_json(window) if args.json else print(f"channel {args.channel}: {describe(window)}")
    return 0
