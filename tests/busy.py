"""What the machine and its processes are doing, read from /proc: CPU and memory use for the load test, and for a
failed test's report the load average and the processes that used the most CPU over one second. tests/conftest.py
adds that report to every failed test, because the timing-sensitive tests (panels streaming together, the load
test) once failed on CI at a tenth of their local speed, with nothing to say whether the machine or a leftover
process was busy."""

from __future__ import annotations

import os
import time
from pathlib import Path

TICKS_PER_S = os.sysconf("SC_CLK_TCK")  # the unit of every CPU time in /proc


def ticks_of(stat: str) -> int:
    """User + system CPU ticks from a /proc/PID/stat line (the fields after "(name)": state, ppid, ... utime at
    index 11, stime at 12)."""
    values = stat.rsplit(")", 1)[1].split()
    return int(values[11]) + int(values[12])


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) process `pid` has used so far, or None if it is gone."""
    try:
        return ticks_of(Path(f"/proc/{pid}/stat").read_text()) / TICKS_PER_S
    except OSError:
        return None


def peak_rss_mib(pid: int) -> float | None:
    """The process's high-water resident memory (VmHWM), in MiB (Linux)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_ticks() -> dict[int, tuple[int, str]]:
    """Per live process: user + system CPU ticks so far, and its command line."""
    ticks: dict[int, tuple[int, str]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            line = stat.read_text()
            command = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue  # the process ended meanwhile
        ticks[int(stat.parent.name)] = (ticks_of(line), command or line.split("(", 1)[-1].rsplit(")", 1)[0])
    return ticks


def cpu_times() -> list[int]:
    """The machine's CPU ticks so far: user, nice, system, idle, iowait, irq, softirq, steal (/proc/stat)."""
    return [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]


def steal_seconds() -> float:
    """CPU time the host has taken from this (virtual) machine so far, summed over its CPUs."""
    return cpu_times()[7] / TICKS_PER_S


def machine_report(interval_s: float = 1.0, top: int = 8) -> str:
    """The load average, the machine's busy, idle and stolen time and the `top` busiest processes over `interval_s`."""
    before, machine_before = cpu_ticks(), cpu_times()
    time.sleep(interval_s)
    after, machine = cpu_ticks(), [now - then for now, then in zip(cpu_times(), machine_before, strict=True)]
    user, nice, system, idle, iowait, irq, softirq, steal = machine
    total = max(1, sum(machine))
    shares = (f"{100 * (user + nice + system + irq + softirq) / total:.0f} % busy, "
              f"{100 * (idle + iowait) / total:.0f} % idle, {100 * steal / total:.0f} % stolen")  # fmt: skip
    per_second = TICKS_PER_S * interval_s
    busiest = sorted(
        ((ticks - before[pid][0]) / per_second * 100, pid, command)
        for pid, (ticks, command) in after.items()
        if pid in before
    )[::-1][:top]
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    return "\n".join([f"load average {load} on {os.cpu_count()} CPUs; over {interval_s:g} s: {shares}; busiest:"]
                     + [f"{cpu:5.0f} %  pid {pid}  {command[:180]}" for cpu, pid, command in busiest])  # fmt: skip
