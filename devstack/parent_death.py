"""Children that die with their supervisor, even one killed with SIGKILL.

`rollout dev` starts each child in its own session (Ctrl-C reaches the supervisor only, which
stops them in order), so nothing of the terminal's or the process group's signals reaches them.
A supervisor killed without its cleanup (`kill -9`, out of memory) left all four running and
holding their ports. Linux's parent-death signal (prctl PR_SET_PDEATHSIG) makes the kernel send
a child its own stop signal the moment the supervisor dies: the same orderly stop as Ctrl-C
(PostgreSQL's fast shutdown stops its backends itself).

Set in the child between fork and exec (`preexec_fn`): after the switch to PostgreSQL's user
under root (a change of user clears it), and checked against the supervisor having died in
between. Elsewhere than Linux there is no such signal: the next start finds what was left over
(devstack/leftovers.py).
"""

import ctypes
import os
import signal
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None


def die_with_this_process(sig: signal.Signals) -> Callable[[], None] | None:
    """A `preexec_fn` that makes the child get `sig` when this process (the thread that starts
    it: the event loop's) dies; None where the platform has no parent-death signal."""
    if _prctl is None:
        return None
    prctl = _prctl
    parent = os.getpid()

    def in_child() -> None:
        if prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:  # the supervisor died before the signal was set
            os._exit(128 + int(sig))

    return in_child
