"""Figures of another process read from /proc (Linux): CPU time, resident and peak memory."""

import os
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_ticks(pid: int, *, with_reaped_children: bool) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rpartition(")")[2].split()
    # After the command: state is field 3, utime 14, stime 15, cutime 16, cstime 17 (1-based in
    # proc(5)).
    return sum(int(f) for f in fields[11 : 15 if with_reaped_children else 13])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    return _cpu_ticks(pid, with_reaped_children=False) / _TICKS


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise ValueError(f"/proc/{pid}/status has no {key}")


def rss_mb(pid: int) -> float:
    return round(_status_kib(pid, "VmRSS") / 1024, 1)


def peak_rss_mb(pid: int) -> float:
    """The kernel's high-water mark of the resident set since the process started."""
    return round(_status_kib(pid, "VmHWM") / 1024, 1)


def child_pids(parent: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        if int(stat.rpartition(")")[2].split()[1]) == parent:
            pids.append(int(entry.name))
    return pids


def command_line(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of the process, of its children it has reaped, and of its living descendants:
    a PostgreSQL server with its backends, a supervisor with what it runs."""
    try:
        own = _cpu_ticks(pid, with_reaped_children=True) / _TICKS
    except OSError:
        return 0.0  # gone meanwhile
    return own + sum(tree_cpu_seconds(child) for child in child_pids(pid))
