"""Maintenance windows read in their own time zone, across daylight-saving changes
(domain/windows.py)."""

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from domain.windows import MaintenanceWindow, describe_opening, is_open, next_change, next_opening

BERLIN_NIGHTS = MaintenanceWindow.model_validate(
    {
        "timezone": "Europe/Berlin",
        "ranges": [{"days": ["sat", "sun"], "start": "01:00", "end": "04:00"}],
    }
)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_a_range_keeps_its_local_hours_across_the_spring_change() -> None:
    # 2026-03-29 (Sunday): Berlin goes from UTC+1 to UTC+2 at 02:00 local.
    assert not is_open(BERLIN_NIGHTS, utc(2026, 3, 28, 23, 59))  # Sun 00:59 local
    assert is_open(BERLIN_NIGHTS, utc(2026, 3, 29, 0, 0))  # Sun 01:00 CET
    assert next_change(BERLIN_NIGHTS, utc(2026, 3, 29, 0, 0)) == utc(
        2026, 3, 29, 2, 0
    )  # 04:00 CEST
    assert not is_open(BERLIN_NIGHTS, utc(2026, 3, 29, 2, 0))
    # The Saturday before, still winter time: 01:00-04:00 CET is 00:00-03:00 UTC.
    assert is_open(BERLIN_NIGHTS, utc(2026, 3, 28, 2, 59))
    assert not is_open(BERLIN_NIGHTS, utc(2026, 3, 28, 3, 0))


def test_a_range_keeps_its_local_hours_across_the_autumn_change() -> None:
    # 2026-10-25 (Sunday): back from UTC+2 to UTC+1 at 03:00 local; 01:00-04:00 is 4 h long.
    assert is_open(BERLIN_NIGHTS, utc(2026, 10, 24, 23, 0))  # Sun 01:00 CEST
    assert next_change(BERLIN_NIGHTS, utc(2026, 10, 24, 23, 0)) == utc(2026, 10, 25, 3, 0)
    assert is_open(BERLIN_NIGHTS, utc(2026, 10, 25, 2, 59))


def test_a_range_over_midnight_ends_the_next_day_and_says_when_it_opens() -> None:
    nightly = MaintenanceWindow.model_validate(
        {
            "ranges": [
                {"days": ["mon", "tue", "wed", "thu", "fri"], "start": "22:00", "end": "04:00"}
            ]
        }
    )
    friday_night = utc(2026, 12, 11, 23, 0)
    assert is_open(nightly, friday_night)
    assert is_open(nightly, utc(2026, 12, 12, 3, 59))  # Saturday morning: Friday's range
    assert not is_open(nightly, utc(2026, 12, 12, 22, 0))  # Saturday night: none
    assert next_opening(nightly, utc(2026, 12, 12, 12, 0)) == utc(2026, 12, 14, 22, 0)
    assert describe_opening(nightly, utc(2026, 12, 12, 12, 0)) == "opens Mon 2026-12-14 22:00 UTC"
    assert describe_opening(BERLIN_NIGHTS, utc(2026, 12, 7, 12, 0)) == (
        "opens Sat 2026-12-12 01:00 Europe/Berlin (2026-12-12 00:00 UTC)"
    )


@pytest.mark.parametrize(
    ("window", "problem"),
    [
        (
            {
                "timezone": "Mars/Olympus",
                "ranges": [{"days": ["mon"], "start": "01:00", "end": "02:00"}],
            },
            "not an IANA time zone",
        ),
        (
            {
                "timezone": "../etc/passwd",
                "ranges": [{"days": ["mon"], "start": "01:00", "end": "02:00"}],
            },
            "not an IANA time zone",
        ),
        ({"ranges": [{"days": ["mon"], "start": "25:00", "end": "02:00"}]}, "HH:MM"),
        ({"ranges": [{"days": ["funday"], "start": "01:00", "end": "02:00"}]}, "days"),
        ({"ranges": []}, "ranges"),
    ],
)
def test_a_malformed_window_is_refused_with_its_reason(window: dict, problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        MaintenanceWindow.model_validate(window)
