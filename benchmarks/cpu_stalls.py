"""Benchmark: how long this machine's CPUs go missing, with nothing else running.

    .venv/bin/python -m benchmarks.cpu_stalls --seconds 10

One busy-spinning process per CPU reads the clock in a tight loop; a gap between two reads is
time the process was not running. On a dedicated machine the gaps stay below a millisecond
or two; on a virtual machine whose host descheduled its virtual CPUs they reach hundreds of
milliseconds. Every latency figure taken here carries that noise, so benchmarks of single
events (advance → handout) are read against it. Not a test: numbers depend on the machine.
"""

import argparse
import multiprocessing
import os
import time

GAP_SECONDS = 0.02  # a gap this long is not the interpreter's own jitter


def spin(seconds: float) -> list[float]:
    """The gaps over GAP_SECONDS seen while spinning for `seconds`."""
    gaps: list[float] = []
    end = time.monotonic() + seconds
    last = time.monotonic()
    while (now := time.monotonic()) < end:
        if now - last > GAP_SECONDS:
            gaps.append(now - last)
        last = now
    return gaps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    with multiprocessing.Pool(args.processes) as pool:
        per_process = pool.map(spin, [args.seconds] * args.processes)
    print(f"{args.processes} spinning processes for {args.seconds:.0f} s each:")
    for number, gaps in enumerate(per_process, start=1):
        missing = sum(gaps)
        worst = max(gaps, default=0.0)
        print(
            f"  process {number}: {len(gaps)} gaps over {GAP_SECONDS * 1000:.0f} ms,"
            f" {missing * 1000:.0f} ms missing ({missing / args.seconds:.1%}),"
            f" longest {worst * 1000:.0f} ms"
        )


if __name__ == "__main__":
    main()
