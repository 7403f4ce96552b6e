"""What else the machine was doing when a test failed: the load average and the processes that used the most CPU
over one second. tests/conftest.py adds it to every failed test's report, because the timing-sensitive tests
(panels streaming together, the load test) once failed on CI at a tenth of their local speed, with nothing in the
report to say whether the machine or a leftover process was busy."""

from __future__ import annotations

import os
import time
from pathlib import Path


def cpu_ticks() -> dict[int, tuple[int, str]]:
    """Per live process: user + system CPU ticks so far, and its command line."""
    ticks: dict[int, tuple[int, str]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            name, fields = stat.read_text().rsplit(")", 1)
            command = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, ValueError):
            continue  # the process ended meanwhile
        values = fields.split()  # after "(name)": state, ppid, ... utime (index 11), stime (12)
        ticks[int(stat.parent.name)] = (int(values[11]) + int(values[12]), command or name.split("(", 1)[-1])
    return ticks


def cpu_times() -> list[int]:
    """The machine's CPU ticks so far: user, nice, system, idle, iowait, irq, softirq, steal (/proc/stat)."""
    return [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]


def machine_report(interval_s: float = 1.0, top: int = 8) -> str:
    """The load average, the machine's busy, idle and stolen time and the `top` busiest processes over `interval_s`."""
    before, machine_before = cpu_ticks(), cpu_times()
    time.sleep(interval_s)
    after, machine = cpu_ticks(), [now - then for now, then in zip(cpu_times(), machine_before, strict=True)]
    user, nice, system, idle, iowait, irq, softirq, steal = machine
    total = max(1, sum(machine))
    shares = (f"{100 * (user + nice + system + irq + softirq) / total:.0f} % busy, "
              f"{100 * (idle + iowait) / total:.0f} % idle, {100 * steal / total:.0f} % stolen")  # fmt: skip
    per_second = os.sysconf("SC_CLK_TCK") * interval_s
    busiest = sorted(
        ((ticks - before[pid][0]) / per_second * 100, pid, command)
        for pid, (ticks, command) in after.items()
        if pid in before
    )[::-1][:top]
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    return "\n".join([f"load average {load} on {os.cpu_count()} CPUs; over {interval_s:g} s: {shares}; busiest:"]
                     + [f"{cpu:5.0f} %  pid {pid}  {command[:180]}" for cpu, pid, command in busiest])  # fmt: skip
