"""A probe of the cyclic garbage collector in every Python process started with this folder on
`PYTHONPATH` (the stack's API and worker, the simulator's processes): each appends a line to
`$GC_PROBE_LOG` every 15 s with the time its collections took, per generation, as wall time and
as the thread's CPU time, their counts and the longest pause. Python imports `sitecustomize` at
startup by itself, so nothing of ours is changed to be measured.

    GC_PROBE_LOG=/tmp/gc.log PYTHONPATH=benchmarks/gc_probe \
        .venv/bin/python -m benchmarks.fleet --agents 1000 --batch-size 100 --poll-interval 1

The last line of each pid is its total; a collection's wall time includes the moments the
machine took the core away while it held the interpreter.
"""

import gc
import os
import sys
import threading
import time
from typing import Any

REPORT_SECONDS = 15.0


class _Collections:
    def __init__(self) -> None:
        self.wall = [0.0, 0.0, 0.0]
        self.cpu = [0.0, 0.0, 0.0]
        self.counts = [0, 0, 0]
        self.longest = 0.0
        self._started = (0.0, 0.0)

    def observe(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = (time.perf_counter(), time.thread_time())
            return
        generation = info["generation"]
        wall = time.perf_counter() - self._started[0]
        self.wall[generation] += wall
        self.cpu[generation] += time.thread_time() - self._started[1]
        self.counts[generation] += 1
        self.longest = max(self.longest, wall)

    def line(self) -> str:
        def seconds(values: list[float]) -> str:
            return " / ".join(f"{v:.2f}" for v in values)

        return (
            f"{time.strftime('%H:%M:%S')} pid {os.getpid()} {' '.join(sys.argv)[-60:]}: "
            f"gc wall s by generation {seconds(self.wall)}, cpu s {seconds(self.cpu)}, "
            f"counts {' / '.join(map(str, self.counts))}, longest {self.longest * 1000:.0f} ms"
        )


def _report_forever(collections: _Collections, path: str) -> None:
    while True:
        time.sleep(REPORT_SECONDS)
        with open(path, "a") as log:
            log.write(collections.line() + "\n")


if log_path := os.environ.get("GC_PROBE_LOG"):
    _collections = _Collections()
    gc.callbacks.append(_collections.observe)
    threading.Thread(target=_report_forever, args=(_collections, log_path), daemon=True).start()
