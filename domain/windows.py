"""Maintenance windows: weekly ranges of local time in a named time zone (IANA), inside which a
rollout releases batches and hands out jobs. Pure: the workflow asks it with `workflow.now()`.

A range is days of the week and a start and end time; an end at or before its start ends the
next day (`22:00-04:00`). Local times are read in the zone as the clocks show them, so a range
keeps its local hours across a daylight-saving change (an `02:00-04:00` range is one hour long
the night the clocks go forward, three the night they go back); a start that falls in the hour
the clocks skip starts when they have moved on.
"""

import re
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator

Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
DAYS: tuple[Day, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_CLOCK = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$")


def _clock(value: str) -> time:
    match = _CLOCK.fullmatch(value)
    if match is None:
        raise ValueError(f"{value!r}: a time of day as HH:MM, 00:00 to 23:59")
    return time(int(match.group(1)), int(match.group(2)))


class WindowRange(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    days: list[Day] = Field(min_length=1, max_length=7)
    start: str
    end: str

    @field_validator("start", "end")
    @classmethod
    def _is_clock(cls, value: str) -> str:
        _clock(value)
        return value


class MaintenanceWindow(BaseModel):
    """Travels in Temporal history (in the rollout's spec): field names are fixed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timezone: str = "UTC"
    ranges: list[WindowRange] = Field(min_length=1, max_length=50)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"{value!r}: not an IANA time zone (like Europe/Berlin)") from exc
        return value


def _occurrences(window: MaintenanceWindow, around: datetime) -> list[tuple[datetime, datetime]]:
    """The ranges' intervals (UTC) from a day before `around` to eight days after, merged."""
    zone = ZoneInfo(window.timezone)
    local_day = around.astimezone(zone).date()
    spans = []
    for offset in range(-2, 9):
        day: date = local_day + timedelta(days=offset)
        name = DAYS[day.weekday()]
        for r in window.ranges:
            if name not in r.days:
                continue
            start, end = _clock(r.start), _clock(r.end)
            end_day = day + timedelta(days=1) if end <= start else day
            opens = datetime.combine(day, start, tzinfo=zone).astimezone(UTC)
            closes = datetime.combine(end_day, end, tzinfo=zone).astimezone(UTC)
            if closes > opens:
                spans.append((opens, closes))
    spans.sort()
    merged: list[tuple[datetime, datetime]] = []
    for opens, closes in spans:
        if merged and opens <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], closes))
        else:
            merged.append((opens, closes))
    return merged


def is_open(window: MaintenanceWindow, at: datetime) -> bool:
    return any(opens <= at < closes for opens, closes in _occurrences(window, at))


def next_change(window: MaintenanceWindow, at: datetime) -> datetime:
    """The next instant after `at` when the window opens or closes (a week ahead at most)."""
    edges = [edge for span in _occurrences(window, at) for edge in span if edge > at]
    return min(edges, default=at + timedelta(days=7))


def next_opening(window: MaintenanceWindow, at: datetime) -> datetime:
    """When the window is next open at or after `at` (`at` itself when open)."""
    for opens, closes in _occurrences(window, at):
        if closes > at:
            return max(opens, at)
    return at + timedelta(days=7)


def describe_opening(window: MaintenanceWindow, at: datetime) -> str:
    """'opens Tue 22:00 Europe/Berlin (21:00 UTC)'."""
    opening = next_opening(window, at)
    local = opening.astimezone(ZoneInfo(window.timezone))
    zone = window.timezone
    utc = "" if zone == "UTC" else f" ({opening:%Y-%m-%d %H:%M} UTC)"
    return f"opens {DAYS[local.weekday()].capitalize()} {local:%Y-%m-%d %H:%M} {zone}{utc}"
