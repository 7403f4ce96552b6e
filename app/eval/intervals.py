"""How far a difference between two configurations would move with other questions of the same kind: 95 % paired
bootstrap intervals for what the verdict and the targets rest on (each role against base + persona).

Why: runs that differed only in the rounding of the LoRA arithmetic moved a domain's hallucination rate by up to
0.19 (docs/adapters.md). 256-token greedy answers of a 135M model pass many near ties, so a small perturbation
re-draws some answers, much as another sample of questions would; 44 questions a domain leave wide margins either
way. The questions are resampled with replacement, paired (both configurations keep the same draw), with a fixed
seed, so the same results give the same intervals.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95
SEED = 0
Interval = tuple[float, float]


def bracket(interval: Interval) -> str:
    """How an interval is shown beside the figure it brackets, e.g. "[+0.01, +0.13]"."""
    return f"[{interval[0]:+.2f}, {interval[1]:+.2f}]"


def _per_question(record: Mapping[str, Any]) -> list[float]:
    """[terminology, factuality, style] of one answer (NaN where not measured), the parts of `verdict.quality`."""
    scores = record["scores"]
    values = (scores["terminology"], 1.0 - float(scores["hallucination"]), scores["style_score"])
    return [np.nan if value is None else float(value) for value in values]


def _figures(parts: np.ndarray) -> dict[str, np.ndarray]:
    """Per resample (rows of `parts`: resamples x questions x 3): terminology, hallucination rate and quality, each
    as `verdict.summary_row` and `verdict.quality` compute them (means over the answers that measured them)."""
    with warnings.catch_warnings():  # a resample without any measured value of a part gives NaN, which is skipped
        warnings.simplefilter("ignore", RuntimeWarning)
        means = np.nanmean(parts, axis=1)
        quality = np.nanmean(means, axis=1)
    return {"quality": quality, "terminology": means[:, 0], "hallucination": 1.0 - means[:, 1]}


def paired_intervals(
    by_spec: Mapping[str, Sequence[Mapping[str, Any]]], baseline: str, *, resamples: int = RESAMPLES, seed: int = SEED
) -> dict[str, dict[str, Interval]]:
    """spec -> figure -> (low, high) of `spec` minus `baseline` on the questions both answered, for every spec but
    the baseline: quality, terminology and hallucination rate differences. Empty without a baseline."""
    answered = {
        spec: {record["id"]: _per_question(record) for record in records if record["error"] is None}
        for spec, records in by_spec.items()
    }
    base = answered.get(baseline, {})
    rng = np.random.default_rng(seed)
    tail = (1.0 - LEVEL) / 2 * 100
    intervals: dict[str, dict[str, Interval]] = {}
    for spec, mine in answered.items():
        ids = sorted(base.keys() & mine.keys())
        if spec == baseline or not ids:
            continue
        draw = rng.integers(0, len(ids), size=(resamples, len(ids)))
        theirs = _figures(np.array([base[i] for i in ids])[draw])
        ours = _figures(np.array([mine[i] for i in ids])[draw])
        intervals[spec] = {
            name: (round(float(np.nanpercentile(diff, tail)), 4), round(float(np.nanpercentile(diff, 100 - tail)), 4))
            for name in ours
            if np.isfinite(diff := ours[name] - theirs[name]).any()
        }
    return intervals
