"""bench/README.md is where a reader finds what each benchmark measures and how to run it: every script is there."""

from __future__ import annotations

from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_every_bench_script_has_a_row_in_the_readme() -> None:
    readme = (BENCH / "README.md").read_text(encoding="utf-8")
    rows = {line.split("|")[1].strip(" `") for line in readme.splitlines() if line.startswith("| `")}
    scripts = {path.name for path in BENCH.glob("*.py")}
    assert scripts - rows == set(), "bench scripts without a row in bench/README.md"
