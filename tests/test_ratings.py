"""Ratings: hand-checked small cases (Elo updates, Bradley–Terry differences, bootstrap intervals, win rates), and
seeded simulations from known true strengths for the prior, the anchor, the vote minimum and the groups."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.stats import kendalltau

from app.arena.leaderboard import NOT_RATED, Standing, interval_text, leaderboard, rating_text
from app.arena.ratings import (
    MIN_VOTES,
    MLE_C,
    Battle,
    Outcome,
    bootstrap_ci,
    bradley_terry,
    components,
    compute_elo,
    rated_votes,
    vote_counts,
    win_rates,
)


def games(a: str, b: str, outcome: Outcome, times: int) -> list[Battle]:
    return [Battle(a, b, outcome)] * times


def test_elo_single_update_k32() -> None:
    assert compute_elo([Battle("x", "y", "a")], k=32) == {"x": 1016.0, "y": 984.0}
    assert compute_elo([Battle("x", "y", "b")], k=32) == {"x": 984.0, "y": 1016.0}


def test_elo_tie_and_both_bad() -> None:
    assert compute_elo([Battle("x", "y", "tie")], k=32) == {"x": 1000.0, "y": 1000.0}
    after_win = [Battle("x", "y", "a"), Battle("x", "y", "both_bad")]
    # counted as a tie, both_bad pulls the winner back towards the loser: expected score was 0.546
    tied = compute_elo(after_win, k=32)
    expected = 1 / (1 + 10 ** ((984 - 1016) / 400))
    assert tied["x"] == pytest.approx(1016 + 32 * (0.5 - expected))
    assert compute_elo(after_win, k=32, both_bad="drop") == {"x": 1016.0, "y": 984.0}


def test_elo_default_k_is_4_and_order_matters() -> None:
    assert compute_elo([Battle("x", "y", "a")]) == {"x": 1002.0, "y": 998.0}
    forward = compute_elo([Battle("x", "y", "a"), Battle("y", "z", "a")], k=32)
    backward = compute_elo([Battle("y", "z", "a"), Battle("x", "y", "a")], k=32)
    assert forward["y"] != pytest.approx(backward["y"])


def test_bradley_terry_three_of_four() -> None:
    ratings = bradley_terry(games("x", "y", "a", 3) + games("x", "y", "b", 1), c=MLE_C)
    assert ratings["x"] - ratings["y"] == pytest.approx(400 * math.log10(3), abs=0.5)
    assert (ratings["x"] + ratings["y"]) / 2 == pytest.approx(1000)


def test_bradley_terry_side_does_not_matter() -> None:
    left = bradley_terry(games("x", "y", "a", 3) + games("x", "y", "b", 1))
    right = bradley_terry(games("y", "x", "b", 3) + games("y", "x", "a", 1))
    assert left == pytest.approx(right)


def test_bradley_terry_symmetric_results_give_equal_ratings() -> None:
    assert bradley_terry(games("x", "y", "a", 5) + games("x", "y", "b", 5)) == pytest.approx({"x": 1000, "y": 1000})
    cycle = [Battle("x", "y", "a"), Battle("y", "z", "a"), Battle("z", "x", "a")]
    assert bradley_terry(cycle) == pytest.approx({"x": 1000, "y": 1000, "z": 1000})


def test_bradley_terry_ties_are_half_wins() -> None:
    # 1 win + 2 ties = 2 points of 3: odds 2:1
    ratings = bradley_terry([Battle("x", "y", "a"), *games("x", "y", "tie", 2)], c=MLE_C)
    assert ratings["x"] - ratings["y"] == pytest.approx(400 * math.log10(2), abs=0.5)


def test_bradley_terry_chain_adds_up() -> None:
    # x beats y 3:1 and y beats z 3:1, never x against z: the fitted gaps add along the chain
    ratings = bradley_terry(
        games("x", "y", "a", 3) + games("x", "y", "b", 1) + games("y", "z", "a", 3) + games("y", "z", "b", 1), c=MLE_C
    )
    gap = 400 * math.log10(3)
    assert ratings["x"] - ratings["y"] == pytest.approx(gap, abs=0.5)
    assert ratings["x"] - ratings["z"] == pytest.approx(2 * gap, abs=1.0)
    assert ratings["x"] > ratings["y"] > ratings["z"]


def test_both_bad_policy() -> None:
    decisive = games("x", "y", "a", 3) + games("x", "y", "b", 1)
    both_bad = decisive + games("x", "y", "both_bad", 4)
    assert bradley_terry(both_bad, both_bad="drop") == pytest.approx(bradley_terry(decisive))
    assert bradley_terry(both_bad) == pytest.approx(bradley_terry(decisive + games("x", "y", "tie", 4)))
    # a configuration seen only in dropped battles keeps the base rating
    assert bradley_terry(games("p", "q", "both_bad", 2), both_bad="drop") == {"p": 1000.0, "q": 1000.0}


def test_prior_shrinks_small_samples_and_fades_with_votes() -> None:
    few = bradley_terry(games("x", "y", "a", 3) + games("x", "y", "b", 1))
    many = bradley_terry(games("x", "y", "a", 300) + games("x", "y", "b", 100))
    exact = 400 * math.log10(3)
    assert 0 < few["x"] - few["y"] < exact - 30, "4 votes: the prior pulls a 3:1 gap towards 0"
    assert many["x"] - many["y"] == pytest.approx(exact, abs=3), "400 votes: the prior is negligible"
    never_beaten = bradley_terry(games("x", "y", "a", 2))
    assert 0 < never_beaten["x"] - never_beaten["y"] < 300, "2 wins: a modest gap, not a runaway"


BOOT = (
    games("x", "y", "a", 14)
    + games("x", "y", "b", 6)
    + games("y", "z", "a", 9)
    + games("y", "z", "b", 7)
    + games("x", "z", "tie", 4)
    + games("z", "x", "a", 3)
    + games("z", "x", "b", 8)
)


def test_bootstrap_ci_contains_estimate_and_is_reproducible() -> None:
    ratings = bradley_terry(BOOT)
    intervals = bootstrap_ci(BOOT, rounds=60, seed=7)
    assert set(intervals) == {"x", "y", "z"}
    for name, value in ratings.items():
        assert intervals[name].lower < value < intervals[name].upper
    assert intervals == bootstrap_ci(BOOT, rounds=60, seed=7)
    assert intervals != bootstrap_ci(BOOT, rounds=60, seed=8)
    narrow = bootstrap_ci(BOOT, rounds=60, seed=7, level=0.5)
    assert intervals["x"].upper - intervals["x"].lower > narrow["x"].upper - narrow["x"].lower
    assert bootstrap_ci([]) == {}


def test_win_rates_and_counts() -> None:
    battles = [*games("x", "y", "a", 2), Battle("y", "x", "tie"), Battle("x", "z", "b"), Battle("y", "z", "both_bad")]
    rates = win_rates(battles)
    assert rates["x"] == {"y": pytest.approx(2.5 / 3), "z": 0.0}
    assert rates["y"] == {"x": pytest.approx(0.5 / 3), "z": 0.5}
    assert rates["z"] == {"x": 1.0, "y": 0.5}
    assert "z" not in win_rates(battles, both_bad="drop")["y"]
    assert vote_counts(battles) == {"x": 4, "y": 4, "z": 2}


def test_leaderboard_rows() -> None:
    rows = leaderboard(BOOT, rounds=30)
    assert [row.rating for row in rows] == sorted(bradley_terry(BOOT).values(), reverse=True)
    top = rows[0]
    assert top.name == "x"
    assert top.votes == vote_counts(BOOT)["x"]
    assert top.interval is not None
    assert top.interval.lower < top.rating < top.interval.upper
    assert top.elo == pytest.approx(compute_elo(BOOT)["x"])


def test_battle_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="outcome must be one of"):
        Battle("x", "y", "left")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="two different configurations"):
        Battle("x", "x", "a")


# Seeded simulations: battles drawn from known true ratings (the scenarios, and the study in ratings.py).

NARROW = dict(zip("abcdefgh", [1190, 1120, 1070, 1020, 980, 940, 900, 850], strict=True))
WIDE = dict(zip("abcdefgh", [1380, 1240, 1140, 1040, 960, 880, 800, 700], strict=True))
SIX = dict(zip("abcdef", [1120, 1070, 1020, 980, 940, 900], strict=True))  # mean 1005


def simulate(true: dict[str, float], n: int, seed: int, tie: float = 0.0) -> list[Battle]:
    """n battles between uniformly drawn pairs on random sides, won with the Bradley–Terry probability."""
    rng = np.random.default_rng(seed)
    pairs = list(itertools.combinations(sorted(true), 2))
    drawn = []
    for index in rng.integers(len(pairs), size=n):
        a, b = pairs[index] if rng.random() < 0.5 else pairs[index][::-1]
        if rng.random() < tie:
            drawn.append(Battle(a, b, "tie"))
            continue
        p_a = 1 / (1 + 10 ** ((true[b] - true[a]) / 400))
        drawn.append(Battle(a, b, "a" if rng.random() < p_a else "b"))
    return drawn


def rms_error(ratings: dict[str, float], true: dict[str, float]) -> float:
    """RMS distance to the true ratings once the common offset is removed (ratings are relative)."""
    gaps = np.array([ratings[name] - true[name] for name in true])
    return float(np.sqrt(np.mean((gaps - gaps.mean()) ** 2)))


def by_name(rows: list[Standing]) -> dict[str, Standing]:
    return {row.name: row for row in rows}


@pytest.mark.parametrize("votes", [1, 3, MIN_VOTES - 1])
def test_a_few_votes_are_not_enough_yet(votes: int) -> None:
    played = games("x", "y", "a", votes)
    rows = by_name(leaderboard(played, rounds=20))
    for name in "xy":
        row = rows[name]
        assert row.status == "too_few_votes", f"{votes} vote(s) must be below the minimum of {MIN_VOTES}"
        assert row.rating is None and row.interval is None, "an unrated row carries no number, nor a zero-width CI"
        assert rating_text(row) == NOT_RATED and interval_text(row) == "n/a"
    estimate = bradley_terry(played)
    assert estimate["x"] - estimate["y"] < 500, "the prior keeps the unshown gap modest (plain MLE: 2200)"
    assert (estimate["x"] + estimate["y"]) / 2 == pytest.approx(1000), "two configurations: their mean is 1000"


def test_minimum_counts_rated_battles_only() -> None:
    played = games("x", "y", "a", 6) + games("x", "y", "b", 3) + games("x", "y", "both_bad", 5)
    assert rated_votes(played) == {"x": 14, "y": 14}
    assert rated_votes(played, both_bad="drop") == {"x": 9, "y": 9}
    dropped = leaderboard(played, rounds=10, both_bad="drop")
    assert [row.status for row in dropped] == ["too_few_votes"] * 2, "9 rated votes: below the minimum of 10"
    assert all(row.votes == 14 for row in dropped), "the votes column still counts every vote"
    assert [row.status for row in leaderboard(played, rounds=10)] == ["rated"] * 2, "both bad as ties: 14 rated"


@pytest.mark.parametrize("streak", [5, 12])
def test_never_beaten_does_not_run_away_nor_drag_the_others(streak: int) -> None:
    top_true = 1190.0  # the six others average 1005; their anchor (mean) is 1000, so truth sits 5 points lower
    for seed in range(5):
        rng = np.random.default_rng(100 + seed)
        measured = simulate(SIX, 300, seed)
        streak_battles = [Battle("top", str(opponent), "a") for opponent in rng.choice(sorted(SIX), size=streak)]
        before = bradley_terry(measured)
        after = bradley_terry(measured + streak_battles)
        assert abs(after["top"] - (top_true - 5)) < 300, (
            f"seed {seed}: a configuration of true 1190 that won all {streak} battles must stay within 300 points "
            f"of it (plain maximum likelihood: ~3100); got {after['top']:.0f}"
        )
        shifts = [after[name] - before[name] for name in SIX]
        assert max(map(abs, shifts)) < 10, f"seed {seed}: it must not drag the measured six (moved {shifts})"
    row = by_name(leaderboard(measured + streak_battles, rounds=30))["top"]
    assert row.status == ("too_few_votes" if streak < MIN_VOTES else "never_beaten")
    if row.status == "never_beaten":
        assert row.rating is not None and row.interval is not None
        assert interval_text(row).endswith("– n/a (never beaten)"), "the upper end is open: the votes bound it below"


def test_never_won_is_flagged_with_an_open_lower_end() -> None:
    played = simulate(SIX, 300, 0) + [Battle("broken", name, "b") for name in sorted(SIX) * 2]
    row = by_name(leaderboard(played, rounds=30))["broken"]
    assert row.status == "never_won" and row.votes == 12
    assert row.rating is not None and 500 < row.rating < 1000, "low, but finite and cautious"
    assert interval_text(row).startswith("n/a – ") and interval_text(row).endswith("(never won)")


@pytest.mark.parametrize(("newcomer_beats", "outcome"), [("a", "a"), ("f", "a"), ("c", "tie")])
def test_a_newcomer_with_one_vote_moves_nobody(newcomer_beats: str, outcome: Outcome) -> None:
    measured = simulate(SIX, 600, 0)
    joined = [*measured, Battle("newcomer", newcomer_beats, outcome)]
    before, after = bradley_terry(measured), bradley_terry(joined)
    ci_before, ci_after = bootstrap_ci(measured, rounds=100), bootstrap_ci(joined, rounds=100)
    for name in SIX:
        assert abs(after[name] - before[name]) < 5, f"{name} must move < 5 points (plain MLE, mean = 1000: ~300)"
        width_before = ci_before[name].upper - ci_before[name].lower
        width_after = ci_after[name].upper - ci_after[name].lower
        assert width_after < 1.25 * width_before, (
            f"{name}'s interval must not blow up: {width_before:.0f} → {width_after:.0f}"
        )
    assert by_name(leaderboard(joined, rounds=10))["newcomer"].status == "too_few_votes"


@pytest.mark.parametrize(
    ("true", "battles", "max_rms", "min_tau"),
    [
        (NARROW, 40, 95, 0.45),  # 10 votes each: plain MLE is off by 105 on average
        (WIDE, 40, 120, 0.7),  # plain MLE: 633 (a never-beaten or never-won configuration runs away)
        (WIDE, 160, 65, 0.9),  # plain MLE: 72
        (NARROW, 2560, 20, 0.98),  # plenty of votes: the prior changes nothing, the order is (nearly) the true one
        (WIDE, 2560, 20, 0.98),
    ],
)
def test_ratings_track_true_strengths(true: dict[str, float], battles: int, max_rms: float, min_tau: float) -> None:
    errors, taus = [], []
    for seed in range(10):
        ratings = bradley_terry(simulate(true, battles, seed))
        ratings = {name: ratings.get(name, 1000.0) for name in true}  # a name can miss 40 random battles
        errors.append(rms_error(ratings, true))
        taus.append(kendalltau([ratings[n] for n in true], list(true.values())).statistic)
    assert np.mean(errors) <= max_rms, f"{battles} battles: mean RMS error must be ≤ {max_rms}; got {errors}"
    assert np.mean(taus) >= min_tau - 1e-9, f"{battles} battles: mean Kendall τ to the true order must be ≥ {min_tau}"


def test_plenty_of_votes_rank_in_the_true_order() -> None:
    rows = leaderboard(simulate(NARROW, 2560, 0, tie=0.1), rounds=20)
    assert [row.name for row in rows] == list(NARROW), "best first, in the true order"
    assert [row.rank for row in rows] == list(range(1, 9)) and {row.group for row in rows} == {1}
    assert all(row.status == "rated" and row.interval is not None for row in rows)
    assert sum(row.rating for row in rows if row.rating is not None) / 8 == pytest.approx(1000), "mean anchor"


def test_disconnected_groups_are_rated_and_ranked_separately() -> None:
    legal = simulate({"legal base": 900, "legal adapter": 1100, "legal rag": 1000}, 90, 1)
    finance = simulate({"finance base": 950, "finance adapter": 1150}, 40, 2)
    played = legal + finance
    assert components(played) == [["legal adapter", "legal base", "legal rag"], ["finance adapter", "finance base"]]
    rows = leaderboard(played, rounds=30)
    groups = {row.name: row.group for row in rows}
    assert groups == {"legal adapter": 1, "legal base": 1, "legal rag": 1, "finance adapter": 2, "finance base": 2}
    assert [(row.group, row.rank) for row in rows] == [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2)], "ranks restart"
    for group in (1, 2):
        rated = [row.rating for row in rows if row.group == group and row.rating is not None]
        assert np.mean(rated) == pytest.approx(1000), f"group {group} has its own anchor: its mean is 1000"
    assert rows[0].name == "legal adapter" and rows[3].name == "finance adapter"
    bridged = leaderboard([*played, Battle("legal base", "finance base", "tie")], rounds=10)
    assert {row.group for row in bridged} == {1}, "one battle across the groups joins them"
    dropped_only = [*played, Battle("odd one", "legal base", "both_bad")]
    assert components(dropped_only, both_bad="drop")[-1] == ["odd one"], "no rated battle: a group of its own"


def test_reference_configuration_is_the_anchor() -> None:
    played = simulate(SIX, 300, 3)
    anchored = bradley_terry(played, reference="d")
    assert anchored["d"] == pytest.approx(1000)
    default = bradley_terry(played)
    gaps = {name: anchored[name] - default[name] for name in SIX}
    assert max(gaps.values()) - min(gaps.values()) == pytest.approx(0, abs=1e-6), "the same ratings, shifted"
    newcomer = bradley_terry([*played, *games("newcomer", "d", "a", 3)], reference="d")
    assert newcomer["d"] == pytest.approx(1000), "nothing moves the reference"


def test_cli_prints_unrated_rows_and_groups(capsys: pytest.CaptureFixture[str]) -> None:
    from app.arena.__main__ import _print_leaderboard

    _print_leaderboard([*simulate(SIX, 300, 0), *games("x", "y", "a", 12), Battle("new", "a", "a")], "tie")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("configuration") and "rank" in lines[0]
    assert lines[1].startswith("-- group 1 of 2"), "several groups: a heading per group"
    new = next(line for line in lines if line.startswith("new "))
    assert NOT_RATED in new, f"a newcomer shows 'not enough votes yet', not a number: {new!r}"
    x = next(line for line in lines if line.startswith("x "))
    assert "(never beaten)" in x and "n/a" in x, f"x never lost: its interval is open above: {x!r}"
    assert sum(line.startswith("-- group") for line in lines) == 2


def test_leaderboard_tab_shows_not_rated_open_ends_and_groups() -> None:
    from app.ui.leaderboard_tab import chart_frame, standings_frame  # imports Gradio: seconds

    rows = leaderboard([*simulate(SIX, 300, 0), *games("x", "y", "a", 12), Battle("new", "a", "a")], rounds=20)
    table = standings_frame(rows)
    cells = {row[1]: row for row in table.itertuples(index=False)}
    assert cells["new"][2] == NOT_RATED and cells["new"][3] == "n/a", "unrated: words, not a number"
    assert cells["x"][3].endswith("n/a (never beaten)"), "never beaten: the upper end is open"
    assert cells["a"][0] == "1 (group 1)" and cells["x"][0] == "1 (group 2)", "ranks within named groups"
    points = chart_frame(rows)
    plotted = set(points["configuration"])
    assert "new (group 1)" not in plotted and "a (group 1)" in plotted, "unrated rows stay off the chart"
    x_series = set(points.loc[points["configuration"] == "x (group 2)", "series"])
    assert x_series == {"rating", "95% CI low"}, "a never-beaten row has no upper end to plot"
    single = standings_frame(leaderboard(simulate(SIX, 300, 0), rounds=10))
    assert list(single["rank"]) == [1, 2, 3, 4, 5, 6], "one group: plain ranks"
