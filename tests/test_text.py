"""Free text is made storable where it enters; identifiers with such characters are refused."""

import pytest

from contract.text import REPLACEMENT, storable, storable_or_none, unstorable


@pytest.mark.parametrize(
    ("raw", "stored"),
    [
        ("boom\x00", f"boom{REPLACEMENT}"),
        ("\ud800 half", f"{REPLACEMENT} half"),
        ("\udfff\x00", REPLACEMENT * 2),
        ("ünïcode ✓ 😀", "ünïcode ✓ 😀"),
        ("", ""),
    ],
)
def test_storable_replaces_only_what_postgresql_and_utf8_refuse(raw: str, stored: str) -> None:
    assert storable(raw) == stored
    assert unstorable(raw) == (raw != stored)
    assert storable(stored).encode("utf-8").decode("utf-8") == stored
    assert "\x00" not in stored


def test_none_stays_none() -> None:
    assert storable_or_none(None) is None
    assert storable_or_none("a\x00") == f"a{REPLACEMENT}"
