"""The leaderboard: ratings (app.arena.ratings) turned into standings, one row per configuration, with how to read
each row (rated, too few votes, never beaten, never won) and the words the app and the CLI show for it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from app.arena.ratings import (
    BT_C,
    MIN_VOTES,
    Battle,
    BothBad,
    Interval,
    bootstrap_ci,
    bradley_terry,
    components,
    compute_elo,
    rated_votes,
    vote_counts,
    won_and_lost,
)

Status = Literal["rated", "too_few_votes", "never_beaten", "never_won"]


@dataclass(frozen=True)
class Standing:
    """One leaderboard row: Bradley–Terry rating with its bootstrap interval, online Elo, votes, group and status.

    `status` says how to read the row: "rated"; "too_few_votes" (fewer than `MIN_VOTES` rated battles: `rating`
    and `interval` are None, show "not enough votes yet"); "never_beaten" / "never_won" (the rating is the prior's
    cautious estimate and the interval's upper / lower end is open: the votes bound it on one side only).
    `group` numbers the connected groups from 1 (biggest first); `rank` is the position within the group, the
    rated rows first, then the unrated ones by their unshown estimate. Ratings compare only within a group.
    """

    name: str
    rating: float | None  # None when not rated yet (status "too_few_votes")
    interval: Interval | None  # None when not rated, or in no resample (tiny `rounds`)
    elo: float
    votes: int
    group: int = 1
    status: Status = "rated"
    rank: int = 1

    @property
    def rated(self) -> bool:
        """Whether the rating is shown (it has at least `MIN_VOTES` rated battles)."""
        return self.status != "too_few_votes"


def _status(votes: int, won: float, lost: float, min_votes: int) -> Status:
    if votes < min_votes:
        return "too_few_votes"
    if lost == 0:
        return "never_beaten"
    if won == 0:
        return "never_won"
    return "rated"


def leaderboard(
    battles: Sequence[Battle],
    rounds: int = 200,
    seed: int = 0,
    k: float = 4.0,
    both_bad: BothBad = "tie",
    *,
    min_votes: int = MIN_VOTES,
    reference: str | None = None,
    c: float = BT_C,
) -> list[Standing]:
    """Every name, by group (biggest first), then rated rows best first, then unrated ones; see `Standing`."""
    estimates = bradley_terry(battles, both_bad, c=c, min_votes=min_votes, reference=reference)
    intervals = bootstrap_ci(
        battles, rounds, seed=seed, both_bad=both_bad, c=c, min_votes=min_votes, reference=reference
    )
    elo = compute_elo(battles, k=k, both_bad=both_bad)
    counts = vote_counts(battles)
    rated = rated_votes(battles, both_bad)
    won, lost = won_and_lost(battles, both_bad)
    rows: list[Standing] = []
    for number, group in enumerate(components(battles, both_bad), 1):
        statuses = {name: _status(rated.get(name, 0), won[name], lost[name], min_votes) for name in group}
        order = sorted(group, key=lambda name: (statuses[name] == "too_few_votes", -estimates[name], name))
        for rank, name in enumerate(order, 1):
            shown = statuses[name] != "too_few_votes"
            rows.append(
                Standing(
                    name,
                    estimates[name] if shown else None,
                    intervals.get(name) if shown else None,
                    elo[name],
                    counts[name],
                    group=number,
                    status=statuses[name],
                    rank=rank,
                )
            )
    return rows


def groups_of(rows: Iterable[Standing]) -> int:
    """How many groups the standings span (1 when everything is comparable, 0 when empty)."""
    return len({row.group for row in rows})


NOT_RATED = "not enough votes yet"
OPEN_END = "n/a"


def rating_text(row: Standing) -> str:
    """The rating as shown (whole points), or "not enough votes yet": the same words in the app and the CLI."""
    return NOT_RATED if row.rating is None else f"{row.rating:.0f}"


def interval_text(row: Standing) -> str:
    """The 95% interval as shown: "lo – hi", with "n/a" for an open end (never beaten / never won) or no interval."""
    if row.interval is None:
        return OPEN_END
    lower, upper = f"{row.interval.lower:.0f}", f"{row.interval.upper:.0f}"
    if row.status == "never_beaten":
        return f"{lower} – {OPEN_END} (never beaten)"
    if row.status == "never_won":
        return f"{OPEN_END} – {upper} (never won)"
    return f"{lower} – {upper}"
