"""The cyclic garbage collector, tuned for a process with many requests in flight.

CPython collects its youngest generation whenever 700 more container objects exist than at the
last pass. A process holding hundreds of requests (the API with held polls, a simulator's
agents) crosses that many times a second, and each pass walks what is still alive, promoting
it to passes that walk more. In the 1,000-host fleet benchmark that was about a tenth of the
API's and of the simulator's CPU, with single pauses over a second on a loaded machine
(docs/performance.md). Nearly everything here is freed by reference counting the moment it is
done with, so a pass every 50,000 leaves little garbage waiting (the API's peak RSS did not
move); what startup made (modules, schemas, routes) lives as long as the process and is frozen
out of every later pass.
"""

import gc

YOUNGEST_GENERATION_THRESHOLD = 50_000


def collect_less() -> None:
    """Call once, when startup is done."""
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(YOUNGEST_GENERATION_THRESHOLD, middle, oldest)
