"""bench/chart.py: the serving benchmark's runs side by side, each case's ratio per run (a gap where a run did not
measure the case), drawn as a PNG."""

from __future__ import annotations

import json
from pathlib import Path

from bench.chart import main, ratios


def run(*cases: tuple[str, float]) -> list[dict[str, object]]:
    return [{"case": case, "label": f"the {case} case", "vs_base_nolora": ratio} for case, ratio in cases]


def test_ratios_line_up_the_cases_of_every_run() -> None:
    runs = {"before": run(("base_nolora", 1.0), ("adapter1_ours", 2.0)),
            "after": run(("base_nolora", 1.0), ("adapter1_compiled", 1.28), ("adapter1_ours", 1.56))}  # fmt: skip
    labels, values = ratios(runs)
    assert list(labels) == ["base_nolora", "adapter1_ours", "adapter1_compiled"]
    assert labels["adapter1_ours"] == "the adapter1_ours case"
    assert values == {"before": [1.0, 2.0, None], "after": [1.0, 1.56, 1.28]}


def test_the_chart_is_written(tmp_path: Path) -> None:
    paths = []
    for name, rows in {
        "before": run(("base_nolora", 1.0), ("base_ours", 1.42)),
        "after": run(("base_ours", 1.3)),
    }.items():
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps({"rows": rows}))
    out = tmp_path / "chart.png"
    assert main([*map(str, paths), "--out", str(out)]) == 0
    assert out.read_bytes().startswith(b"\x89PNG") and out.stat().st_size > 10_000
