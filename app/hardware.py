"""This machine in one line (CPU, cores, memory, GPUs), for eval runs, training model cards and benchmarks."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path


def describe() -> str:
    """E.g. "AMD EPYC 7B13, 2 cores, 24 GiB RAM, no GPU"."""
    cpu = platform.processor() or platform.machine()
    memory = ""
    try:
        cpu = next(
            (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
             if line.startswith("model name")),
            cpu,
        )  # fmt: skip
        memory = f", {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM"
    except (OSError, ValueError):  # not Linux
        pass
    gpus = ""
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"]
        done = subprocess.run(query, capture_output=True, text=True, timeout=30, check=False)
        gpus = ", ".join(line.strip() for line in done.stdout.splitlines() if line.strip())
    return f"{cpu}, {os.cpu_count()} cores{memory}, {gpus or 'no GPU'}"
