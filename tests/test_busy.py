"""The machine report added to failed tests names the process that keeps a CPU busy."""

from __future__ import annotations

import subprocess
import sys

from tests.busy import machine_report


def test_a_busy_process_tops_the_report() -> None:
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        lines = machine_report(interval_s=1.0, top=3).splitlines()
    finally:
        spinner.kill()
        spinner.wait()
    assert lines[0].startswith("load average")
    assert any(f"pid {spinner.pid} " in line and "while True" in line for line in lines[1:3]), lines
