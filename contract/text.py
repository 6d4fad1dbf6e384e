"""Free text that PostgreSQL can store and JSON can carry.

Step output, report messages and operators' reasons are free text: a NUL byte (which real step
output can contain) or an unpaired surrogate must never be a reason to lose an outcome, so they
are replaced where text enters. Identifiers are not free text: callers refuse them instead.
"""

import re

REPLACEMENT = "\ufffd"
# NUL, which PostgreSQL's text type refuses, and the surrogate range, which UTF-8 cannot encode.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(text: str) -> str:
    """`text` with every unstorable character replaced by U+FFFD."""
    return _UNSTORABLE.sub(REPLACEMENT, text)


def storable_or_none(text: str | None) -> str | None:
    return None if text is None else storable(text)


def unstorable(text: str) -> bool:
    """True when `text` holds a character that `storable` would replace."""
    return _UNSTORABLE.search(text) is not None
