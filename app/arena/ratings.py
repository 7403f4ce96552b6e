"""Ratings from pairwise battles: online Elo, Bradley–Terry by maximum likelihood, bootstrap intervals, win rates.

Pure functions over a list of `Battle(model_a, model_b, outcome)`; names are configuration labels (app.arena makes
them). Outcomes are "a", "b", "tie" and "both_bad". A tie counts as half a win for each side. "both_bad" counts as a
tie by default (both answers lost to the user's expectations equally, as in LMSYS Chatbot Arena); pass
`both_bad="drop"` to leave those battles out of ratings and win rates. Vote counts always include every battle.

Bradley–Terry is a logistic regression without intercept on a ±1 design matrix (+1 for the left model, -1 for the
right one), fitted by scikit-learn with a very weak L2 penalty so that a configuration that never lost still gets a
finite (if very large) rating. Coefficients are scaled to Elo points, 400/ln 10 · β + 1000, and centred so that the
average rating is 1000. Nothing here reads files; see docs/arena.md. Example:

    .venv/bin/python -c "from app.arena.ratings import Battle, bradley_terry as bt; print(bt([Battle('x', 'y', 'a')]))"
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

Outcome = Literal["a", "b", "tie", "both_bad"]
OUTCOMES: tuple[str, ...] = get_args(Outcome)
BothBad = Literal["tie", "drop"]
BASE_RATING = 1000.0
SCALE = 400.0
BT_C = 1e6  # inverse L2 strength: negligible next to a single vote, keeps never-beaten ratings finite

Ratings = dict[str, float]


@dataclass(frozen=True)
class Battle:
    """One vote between two labelled configurations: `outcome` says which side won ("a" = model_a)."""

    model_a: str
    model_b: str
    outcome: Outcome

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}; got {self.outcome!r}")
        if self.model_a == self.model_b:
            raise ValueError(f"a battle needs two different configurations; both sides are {self.model_a!r}")


def score_a(outcome: Outcome, both_bad: BothBad = "tie") -> float | None:
    """model_a's score in a battle: 1 win, 0 loss, 0.5 tie; None when the battle is dropped."""
    if outcome == "both_bad":
        return 0.5 if both_bad == "tie" else None
    return {"a": 1.0, "b": 0.0, "tie": 0.5}[outcome]


def _scored(battles: Sequence[Battle], both_bad: BothBad) -> list[tuple[str, str, float]]:
    scored = [(b.model_a, b.model_b, score_a(b.outcome, both_bad)) for b in battles]
    return [(a, b, s) for a, b, s in scored if s is not None]


def compute_elo(
    battles: Sequence[Battle],
    k: float = 4.0,
    base: float = BASE_RATING,
    scale: float = SCALE,
    both_bad: BothBad = "tie",
) -> Ratings:
    """Online Elo in the order given: each battle moves both sides by k·(score − expected score)."""
    ratings = {name: base for b in battles for name in (b.model_a, b.model_b)}
    for a, b, score in _scored(battles, both_bad):
        expected = 1.0 / (1.0 + 10.0 ** ((ratings[b] - ratings[a]) / scale))
        ratings[a] += k * (score - expected)
        ratings[b] -= k * (score - expected)
    return dict(ratings)


def _tally(battles: Sequence[Battle], both_bad: BothBad) -> Counter[tuple[str, str, float]]:
    """How many times each (model_a, model_b, score of model_a) happened, dropped battles left out."""
    return Counter(_scored(battles, both_bad))


def _fit(tally: Mapping[tuple[str, str, float], float]) -> Ratings:
    """Bradley–Terry on tallied battles; see `bradley_terry`."""
    names = sorted({name for a, b, _ in tally for name in (a, b)})
    column = {name: i for i, name in enumerate(names)}
    weights: Counter[tuple[int, int, int]] = Counter()
    for (a, b, score), count in tally.items():
        for label, weight in ((1, score * count), (0, (1.0 - score) * count)):
            if weight:
                weights[column[a], column[b], label] += weight
                weights[column[b], column[a], 1 - label] += weight
    if not weights:
        return {}
    rows = list(weights)
    x = np.zeros((len(rows), len(names)))
    x[np.arange(len(rows)), [r[0] for r in rows]] = 1.0
    x[np.arange(len(rows)), [r[1] for r in rows]] = -1.0
    y = np.array([r[2] for r in rows])
    model = LogisticRegression(fit_intercept=False, C=BT_C, tol=1e-8, max_iter=10_000)
    with threadpool_limits(limits=1):  # a tiny problem: BLAS/OpenMP threads only add contention (10x slower)
        model.fit(x, y, sample_weight=np.array([weights[r] for r in rows]))
    beta = model.coef_[0] - model.coef_[0].mean()
    return {name: SCALE / math.log(10) * float(beta[column[name]]) + BASE_RATING for name in names}


def bradley_terry(battles: Sequence[Battle], both_bad: BothBad = "tie") -> Ratings:
    """Maximum-likelihood Bradley–Terry ratings on the Elo scale, averaging 1000.

    Each battle becomes a row with +1 in model_a's column and -1 in model_b's, labelled 1 when model_a won;
    a tie is two rows (a win and a loss) of weight ½. Identical rows are merged with summed weights, and every row
    is mirrored (−x, 1−y), which leaves the likelihood's maximum unchanged and guarantees both classes exist.
    A name seen only in dropped battles gets 1000.
    """
    ratings = _fit(_tally(battles, both_bad))
    return {name: ratings.get(name, BASE_RATING) for name in sorted(vote_counts(battles))}


@dataclass(frozen=True)
class Interval:
    lower: float
    upper: float


def bootstrap_ci(
    battles: Sequence[Battle], rounds: int = 200, level: float = 0.95, seed: int = 0, both_bad: BothBad = "tie"
) -> dict[str, Interval]:
    """Percentile intervals of Bradley–Terry ratings refitted on `rounds` resamples of the battles.

    Resampling the n battles with replacement is a multinomial draw of n over the distinct (model_a, model_b,
    outcome) counts, which is what is drawn. The same seed gives the same intervals. A name absent from a
    resample is skipped in that round; a name only in dropped battles gets no interval.
    """
    tally = _tally(battles, both_bad)
    keys = list(tally)
    counts = np.array([tally[key] for key in keys], dtype=float)
    if not keys:
        return {}
    rng = np.random.default_rng(seed)
    samples: defaultdict[str, list[float]] = defaultdict(list)
    for _ in range(rounds):
        drawn = rng.multinomial(int(counts.sum()), counts / counts.sum())
        for name, value in _fit({key: n for key, n in zip(keys, drawn, strict=True) if n}).items():
            samples[name].append(value)
    tail = (1.0 - level) / 2 * 100
    return {
        name: Interval(float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail)))
        for name, values in samples.items()
    }


def win_rates(battles: Sequence[Battle], both_bad: BothBad = "tie") -> dict[str, dict[str, float]]:
    """`rates[x][y]`: the share of x's battles against y that x won, ties counting ½; only pairs that met."""
    points: defaultdict[tuple[str, str], float] = defaultdict(float)
    games: Counter[tuple[str, str]] = Counter()
    for a, b, score in _scored(battles, both_bad):
        points[a, b] += score
        points[b, a] += 1.0 - score
        games[a, b] += 1
        games[b, a] += 1
    rates: defaultdict[str, dict[str, float]] = defaultdict(dict)
    for (x, y), count in games.items():
        rates[x][y] = points[x, y] / count
    return dict(rates)


def vote_counts(battles: Sequence[Battle]) -> dict[str, int]:
    """How many battles (of any outcome) each name took part in."""
    return dict(Counter(name for b in battles for name in (b.model_a, b.model_b)))


@dataclass(frozen=True)
class Standing:
    """One leaderboard row: Bradley–Terry rating with its bootstrap interval, online Elo, and votes."""

    name: str
    rating: float
    interval: Interval | None  # None when the name is only in dropped battles, or in no resample (tiny `rounds`)
    elo: float
    votes: int


def leaderboard(
    battles: Sequence[Battle], rounds: int = 200, seed: int = 0, k: float = 4.0, both_bad: BothBad = "tie"
) -> list[Standing]:
    """Every name, best Bradley–Terry rating first."""
    ratings = bradley_terry(battles, both_bad)
    intervals = bootstrap_ci(battles, rounds, seed=seed, both_bad=both_bad)
    elo = compute_elo(battles, k=k, both_bad=both_bad)
    counts = vote_counts(battles)
    rows = [Standing(name, value, intervals.get(name), elo[name], counts[name]) for name, value in ratings.items()]
    return sorted(rows, key=lambda row: (-row.rating, row.name))
