"""Ratings on small hand-checked cases: Elo updates, Bradley–Terry differences, bootstrap intervals, win rates."""

from __future__ import annotations

import math

import pytest

from app.arena.ratings import (
    Battle,
    Outcome,
    bootstrap_ci,
    bradley_terry,
    compute_elo,
    leaderboard,
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
    ratings = bradley_terry(games("x", "y", "a", 3) + games("x", "y", "b", 1))
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
    ratings = bradley_terry([Battle("x", "y", "a"), *games("x", "y", "tie", 2)])
    assert ratings["x"] - ratings["y"] == pytest.approx(400 * math.log10(2), abs=0.5)


def test_bradley_terry_chain_adds_up() -> None:
    # x beats y 3:1 and y beats z 3:1, never x against z: the fitted gaps add along the chain
    ratings = bradley_terry(
        games("x", "y", "a", 3) + games("x", "y", "b", 1) + games("y", "z", "a", 3) + games("y", "z", "b", 1)
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


def test_never_beaten_stays_finite_and_ordered() -> None:
    ratings = bradley_terry(games("x", "y", "a", 2))
    assert math.isfinite(ratings["x"])
    assert ratings["x"] > ratings["y"] + 400


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
