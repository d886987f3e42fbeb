"""How many cores are idle now: ``bash run.sh test`` runs pytest on that many workers (pytest-xdist)
when it is more than one.

Idle time of all cores over half a second from ``/proc/stat`` (Linux), capped by the cores this
process may use; elsewhere the cores less the 1-minute load average. A training holding one of
two cores leaves 1: the suite then runs in one process, as two workers would only take turns.
"""

import os
import time


def busy_and_total() -> tuple[int, int]:
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def free_cores(interval: float = 0.5) -> int:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        busy0, total0 = busy_and_total()
        time.sleep(interval)
        busy1, total1 = busy_and_total()
        idle = (os.cpu_count() or 1) * (1 - (busy1 - busy0) / max(1, total1 - total0))
    except (OSError, ValueError, IndexError):
        idle = usable - os.getloadavg()[0]
    return max(1, min(usable, round(idle)))


if __name__ == "__main__":
    print(free_cores())
