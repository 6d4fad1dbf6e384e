"""Output that outlives its reader: `rollout ... | head`, or `| tee` stopped by the same Ctrl-C."""

import contextlib
import os
from typing import TextIO


def write_safely(stream: TextIO, text: str) -> None:
    """Write and flush; a reader that went away or a closed terminal turns the stream into
    /dev/null instead of an exception, so neither log forwarding nor a shutdown path (nor the
    interpreter's last flush) dies on a write."""
    try:
        stream.write(text)
        stream.flush()
    except (OSError, ValueError):
        discard(stream)


def discard(stream: TextIO) -> None:
    """Point the stream's file descriptor at /dev/null; what is still buffered goes there."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
