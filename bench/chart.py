"""The serving benchmark as a chart: each case's wall time against a base request on a server without LoRA, for
several runs side by side (the first "before" the LoRA work, the latest after), with the issue's targets marked.

    .venv/bin/python bench/chart.py bench/results/before.json bench/results/latest.json [--out docs/performance.png]

`make bench` draws it after each run (before.json against the new run). Each run's ratios were measured side by
side within that run; runs on different days ran on a differently loaded machine, so compare a case's bars by
their ratio, not their seconds.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import textwrap
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TARGETS = {  # case -> the most it may cost, as a multiple of a base request on a server without LoRA (issue #14)
    "base_ours": 1.1,
    "adapter1_ours": 1.3,
    "adapters4_ours": 1.6,
    "base_compiled": 1.1,
    "adapter1_compiled": 1.3,
    "adapters4_compiled": 1.6,
}


def ratios(runs: dict[str, list[dict[str, Any]]]) -> tuple[dict[str, str], dict[str, list[float | None]]]:
    """Each case's label (in the order the runs first name them) and, per run, each case's ratio (None: not run)."""
    labels: dict[str, str] = {}
    for rows in runs.values():
        for row in rows:
            labels.setdefault(row["case"], row["label"])
    values = {
        name: [next((r["vs_base_nolora"] for r in rows if r["case"] == case), None) for case in labels]
        for name, rows in runs.items()
    }
    return labels, values


def draw(runs: dict[str, list[dict[str, Any]]]) -> bytes:
    """A PNG: a group of horizontal bars per case (a bar per run), the targets as black ticks."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels, values = ratios(runs)
    cases = list(labels)
    height = 0.8 / len(runs)
    figure = Figure(figsize=(9, 0.55 * len(cases) + 1.5), layout="constrained")
    axes = figure.add_subplot()
    for index, (name, numbers) in enumerate(values.items()):
        places = [n + index * height for n in range(len(cases))]
        bars = axes.barh(places, [v or 0.0 for v in numbers], height=height, label=name)
        axes.bar_label(bars, labels=["" if v is None else f"{v:.2f}×" for v in numbers], fontsize=7, padding=2)
    for n, case in enumerate(cases):
        if case in TARGETS:
            axes.plot([TARGETS[case]] * 2, [n - height / 2, n + 0.8 - height / 2], color="black", linewidth=2)
    names = [textwrap.fill(labels[case], 44) for case in cases]
    axes.set_yticks([n + 0.4 - height / 2 for n in range(len(cases))], names, fontsize=8)
    axes.invert_yaxis()
    axes.axvline(1.0, color="grey", linewidth=0.8, linestyle=":")
    axes.set_xlabel("× a base request on a server without LoRA (black: the target, at most)", fontsize=8)
    figure.legend(fontsize=8, loc="outside upper center", ncols=len(runs))
    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer, metadata={"Software": None})
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="bench_serving JSON files, oldest first")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "performance.png", help="the PNG to write")
    args = parser.parse_args(argv)
    runs = {path.stem: json.loads(path.read_text())["rows"] for path in args.runs}
    args.out.write_bytes(draw(runs))
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
