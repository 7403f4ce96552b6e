"""Ratings from pairwise battles: online Elo, Bradley–Terry with a prior, bootstrap intervals, win rates, groups.

Pure functions over a list of `Battle(model_a, model_b, outcome)`; names are configuration labels (app.arena makes
them). Outcomes are "a", "b", "tie" and "both_bad". A tie counts as half a win for each side. "both_bad" counts as a
tie by default (both answers lost to the user's expectations equally, as in LMSYS Chatbot Arena); pass
`both_bad="drop"` to leave those battles out of ratings and win rates. Vote counts always include every battle.

Bradley–Terry is a logistic regression without intercept on a ±1 design matrix (+1 for the left model, -1 for the
right one), fitted by scikit-learn with a real L2 prior (`BT_C`) so that a few votes give modest ratings instead of
±1000-point swings. Coefficients are scaled to Elo points, 400/ln 10 · β, and anchored per connected group: the
mean of the group's well-measured configurations (at least `MIN_VOTES` rated battles, both won and lost) is 1000,
or a `reference` configuration is, so a newcomer cannot move everyone else. Configurations that never met (directly
or through others) are in different groups: their ratings are not comparable. app.arena.leaderboard turns all this
into standings (which rows are not rated yet, which intervals are open-ended). Nothing here reads files; see
docs/arena.md. Example:

    .venv/bin/python -c "from app.arena.ratings import Battle, bradley_terry as bt; print(bt([Battle('x', 'y', 'a')]))"

The study behind `BT_C` and `MIN_VOTES` (seeded simulations: eight configurations with known true ratings, uniform
random pairs, outcomes drawn from the Bradley–Terry probabilities; mean over seeds 0-19 of the RMS distance between
fitted and true ratings after removing the common offset, Elo points):

    true ratings 850-1190 (SD 107)                  true ratings 700-1380 (SD 214)
    battles  C=1e6   10    3    1   0.3  0.1        C=1e6   10    3    1   0.3  0.1
       20     1295  243  167  114   89   93         1846  226  142  126  156  185
       40      180  115   98   79   69   81          733  151  107   96  129  167
       80       79   77   74   68   61   68          206  103   86   75   97  138
      160       52   52   50   47   42   46           74   70   64   57   66  105
      640       25   25   24   24   24   27           31   31   30   30   33   53
     2560       14   14   14   14   14   14           17   16   16   16   17   21

C = 1 is best, or within 15% of the best from 40 battles on (28% at 20), in both fields, while a tighter prior
(0.3, 0.1) biases wide fields; Kendall τ to the true order is the same for every C within 0.03 (0.58 at 40 battles,
0.94 at 640, 1.00 at 2560 on the narrow field).
At 5 votes a configuration is off by 115-125 points RMS, more than the narrow field's SD; at 10, by 80-95:
hence `MIN_VOTES` = 10. The issue's scenarios, before (C = 1e6, mean of all = 1000) and after:

- one vote x beats y: 2100 vs −100 with a zero-width interval → both "not enough votes yet" (the fit says 1091 / 909).
- a configuration of true 1190 that won all its 12 battles, beside six measured ones (300 battles, 20 seeds): it
  ran away to 3131-3212 and pulled the others down 362 on average → 1389-1458, flagged "never beaten" (open upper
  end), the others moved by less than 0.1.
- a newcomer with one win beside six configurations with 600 battles: the six dropped 310 and their 95% intervals
  widened from 83 to 396 points → they move by at most 1.0 and the intervals stay 78-83 wide (the newcomer: 1152,
  not rated). Anchoring on the median instead of the mean gave 102-wide intervals, hence the mean.
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
BT_C = 1.0  # scikit-learn's C on the mirrored rows: a prior β ~ N(0, 2C), SD ≈ 246 Elo points; study above
MLE_C = 1e6  # practically no prior: plain maximum likelihood, the old default (never-beaten ratings run away)
MIN_VOTES = 10  # rated battles a configuration needs before its rating is shown and it helps anchor its group

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


def components(battles: Sequence[Battle], both_bad: BothBad = "tie") -> list[list[str]]:
    """Connected groups of the rated battles' graph, biggest first, each sorted by name.

    Two configurations are in one group when a chain of rated battles links them; across groups the votes say
    nothing about who is better, so ratings are only comparable within a group. A name seen only in dropped
    battles is a group of its own.
    """
    parent = {name: name for name in vote_counts(battles)}

    def root(name: str) -> str:
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    for a, b, _ in _scored(battles, both_bad):
        parent[root(a)] = root(b)
    groups: defaultdict[str, list[str]] = defaultdict(list)
    for name in sorted(parent):
        groups[root(name)].append(name)
    return sorted(groups.values(), key=lambda group: (-len(group), group[0]))


def rated_votes(battles: Sequence[Battle], both_bad: BothBad = "tie") -> dict[str, int]:
    """How many rated (not dropped) battles each name took part in: what `MIN_VOTES` is compared with."""
    return dict(Counter(name for a, b, _ in _scored(battles, both_bad) for name in (a, b)))


def won_and_lost(battles: Sequence[Battle], both_bad: BothBad) -> tuple[dict[str, float], dict[str, float]]:
    """Points won and points lost by each name over its rated battles (a tie is ½ of each)."""
    won: defaultdict[str, float] = defaultdict(float)
    lost: defaultdict[str, float] = defaultdict(float)
    for a, b, score in _scored(battles, both_bad):
        won[a] += score
        lost[a] += 1.0 - score
        won[b] += 1.0 - score
        lost[b] += score
    return won, lost


def _anchors(
    battles: Sequence[Battle], both_bad: BothBad, min_votes: int, reference: str | None
) -> list[tuple[list[str], list[str]]]:
    """For each group, (its members, the names whose mean is set to 1000).

    The anchor is the reference configuration when it is in the group, else the group's well-measured members (at
    least `min_votes` rated battles, having both won and lost points), else all of them. A newcomer below
    `min_votes` is never an anchor, so it cannot shift the others.
    """
    counts = rated_votes(battles, both_bad)
    won, lost = won_and_lost(battles, both_bad)
    plan = []
    for group in components(battles, both_bad):
        if reference in group:
            plan.append((group, [reference]))
            continue
        measured = [n for n in group if counts.get(n, 0) >= min_votes and won[n] > 0 and lost[n] > 0]
        plan.append((group, measured or group))
    return plan


def _raw_fit(tally: Mapping[tuple[str, str, float], float], c: float) -> Ratings:
    """Bradley–Terry coefficients on the Elo scale, not yet anchored (the prior centres them near 0)."""
    names = sorted({name for a, b, _ in tally for name in (a, b)})
    column = {name: i for i, name in enumerate(names)}
    weights: defaultdict[tuple[int, int, int], float] = defaultdict(float)
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
    model = LogisticRegression(fit_intercept=False, C=c, tol=1e-8, max_iter=10_000)
    with threadpool_limits(limits=1):  # a tiny problem: BLAS/OpenMP threads only add contention (10x slower)
        model.fit(x, y, sample_weight=np.array([weights[r] for r in rows]))
    return {name: SCALE / math.log(10) * float(model.coef_[0][column[name]]) for name in names}


def _anchored(raw: Mapping[str, float], plan: Sequence[tuple[list[str], list[str]]]) -> Ratings:
    """Shift each group so that the mean of its anchors present in `raw` is 1000; groups without one are left out."""
    ratings: Ratings = {}
    for group, anchors in plan:
        present = [raw[name] for name in anchors if name in raw]
        if not present:
            continue
        offset = float(np.mean(present))
        ratings |= {name: raw[name] - offset + BASE_RATING for name in group if name in raw}
    return ratings


def bradley_terry(
    battles: Sequence[Battle],
    both_bad: BothBad = "tie",
    *,
    c: float = BT_C,
    min_votes: int = MIN_VOTES,
    reference: str | None = None,
) -> Ratings:
    """Bradley–Terry ratings on the Elo scale with an L2 prior, each group's anchor at 1000.

    Each battle becomes a row with +1 in model_a's column and -1 in model_b's, labelled 1 when model_a won;
    a tie is two rows (a win and a loss) of weight ½. Identical rows are merged with summed weights, and every row
    is mirrored (−x, 1−y), which leaves the fit unchanged and guarantees both classes exist. `c` is scikit-learn's
    inverse penalty (`MLE_C` for plain maximum likelihood). Anchors: see `_anchors` (with `min_votes` and
    `reference`). Every name gets a number here, even below `min_votes`; `leaderboard` says which to show.
    A name seen only in dropped battles gets 1000.
    """
    raw = _raw_fit(_tally(battles, both_bad), c)
    ratings = _anchored(raw, _anchors(battles, both_bad, min_votes, reference))
    return {name: ratings.get(name, BASE_RATING) for name in sorted(vote_counts(battles))}


@dataclass(frozen=True)
class Interval:
    lower: float
    upper: float


def bootstrap_ci(
    battles: Sequence[Battle],
    rounds: int = 200,
    level: float = 0.95,
    seed: int = 0,
    both_bad: BothBad = "tie",
    *,
    c: float = BT_C,
    min_votes: int = MIN_VOTES,
    reference: str | None = None,
) -> dict[str, Interval]:
    """Percentile intervals of Bradley–Terry ratings refitted on `rounds` resamples of the battles.

    Resampling the n battles with replacement is a multinomial draw of n over the distinct (model_a, model_b,
    outcome) counts, which is what is drawn. Every resample is anchored on the anchors of the full data (so a
    newcomer's luck in a resample does not shift the others). The same seed gives the same intervals. A name
    absent from a resample, or whose group's anchors all are, is skipped in that round; a name only in dropped
    battles gets no interval.
    """
    tally = _tally(battles, both_bad)
    keys = list(tally)
    counts = np.array([tally[key] for key in keys], dtype=float)
    if not keys:
        return {}
    plan = _anchors(battles, both_bad, min_votes, reference)
    rng = np.random.default_rng(seed)
    samples: defaultdict[str, list[float]] = defaultdict(list)
    for _ in range(rounds):
        drawn = rng.multinomial(int(counts.sum()), counts / counts.sum())
        raw = _raw_fit({key: n for key, n in zip(keys, drawn, strict=True) if n}, c)
        for name, value in _anchored(raw, plan).items():
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
