"""Leaderboard tab: which arena configurations people prefer, from the stored votes, and the DPO data they make.

The work is done elsewhere: app.arena.store reads the votes, app.arena.rounds turns them into battles and preference
rows, app.arena.ratings rates them (Bradley–Terry with a prior and a bootstrap interval, online Elo, win rates,
groups of configurations that met). One filter (a domain or all, and what "both are bad" counts as) drives the
table, the chart, the win-rate matrix and the export. The bootstrap refits the model 200 times (up to a second), so
reading and rating run in a worker thread.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import gradio as gr
import pandas as pd

from app.arena.leaderboard import Standing, groups_of, interval_text, leaderboard, rating_text
from app.arena.ratings import MIN_VOTES, BothBad, win_rates
from app.arena.rounds import battles, preference_records, write_preferences
from app.arena.store import StoreError, Vote, VoteStore
from app.content import Content
from app.inert import md_text

ALL = "all"
TABLE_WIDTHS: list[str | int] = ["70px", "260px", "170px", "120px", "70px", "70px"]  # one per header below
HEADERS = ["rank", "configuration", "rating (Bradley–Terry)", "95% CI", "Elo", "votes"]
CHART_MARGIN = 50.0  # rating points above and below the plotted values
CHART_COLORS = {"rating": "#1f77b4", "95% CI low": "#9e9e9e", "95% CI high": "#9e9e9e"}
OUTCOME_NAMES = {"a": "A better", "b": "B better", "tie": "tie", "both_bad": "both bad"}
HELP = (
    "Ratings of the Arena's configurations from every stored vote. **Bradley–Terry** (the ranking) is fitted to all "
    "votes at once with a mild prior, so a handful of votes cannot swing a rating by hundreds of points; the average "
    f"of the configurations with at least {MIN_VOTES} votes is 1000, so a newcomer does not move the others. Below "
    f"{MIN_VOTES} votes a configuration shows **not enough votes yet**. Its **95% CI** comes from 200 bootstrap "
    "resamples: overlapping intervals mean the votes do not separate two configurations yet; **n/a** at one end "
    "means it never lost (or never won), so the votes bound it on one side only. Configurations that never met, "
    "directly or through others, form separate **groups**, ranked separately. **Elo** is the classic online update, "
    "for comparison. A tie is half a win each. Votes where a panel failed are kept but not rated."
)

Updates = dict[gr.components.Component, Any]


def _rank(row: Standing, groups: int) -> int | str:
    """The rank within the row's group; the group is named only when there are several."""
    return row.rank if groups <= 1 else f"{row.rank} (group {row.group})"


def standings_frame(rows: Sequence[Standing]) -> pd.DataFrame:
    """The leaderboard table, by group then best first; ratings rounded to whole points, or "not enough votes yet"."""
    groups = groups_of(rows)
    return pd.DataFrame(
        [
            [_rank(row, groups), row.name, rating_text(row), interval_text(row), round(row.elo), row.votes]
            for row in rows
        ],
        columns=HEADERS,
    )


def win_rate_frame(names: Sequence[str], rates: dict[str, dict[str, float]]) -> pd.DataFrame:
    """Share of points the row's configuration took against the column's (ties ½); blank where they never met."""
    cells = [
        [name, *(f"{rates[name][other]:.0%}" if other in rates.get(name, {}) else "" for other in names)]
        for name in names
    ]
    return pd.DataFrame(cells, columns=["configuration vs →", *names])


def chart_frame(rows: Sequence[Standing]) -> pd.DataFrame:
    """Long format for a scatter plot: each rated configuration's rating and the closed ends of its interval.

    Unrated rows are left out, and so is the open end of a never-beaten (or never-won) one's interval. With several
    groups each name says its group, since heights compare only within one.
    """
    groups = groups_of(rows)
    points = []
    for row in rows:
        if row.rating is None:
            continue
        name = row.name if groups <= 1 else f"{row.name} (group {row.group})"
        if row.interval and row.status != "never_won":
            points.append((name, row.interval.lower, "95% CI low"))
        if row.interval and row.status != "never_beaten":
            points.append((name, row.interval.upper, "95% CI high"))
        points.append((name, row.rating, "rating"))  # drawn last, on top of an interval end it equals
    return pd.DataFrame(points, columns=["configuration", "rating", "series"]).astype({"rating": float})


def rating_range(points: pd.DataFrame) -> list[float | None]:
    """The chart's y range: every plotted value plus a margin (a rating axis from 0 would flatten them)."""
    if points.empty:
        return [None, None]  # Gradio's "scale to the data"
    return [float(points["rating"].min()) - CHART_MARGIN, float(points["rating"].max()) + CHART_MARGIN]


def vote_summary(votes: Sequence[Vote], rated: int, domain: str | None, groups: int = 1) -> str:
    """How many votes the filter holds, by outcome, how many were left out, and whether the configurations met."""
    where = f" in {domain}" if domain else ""
    if not votes:
        return f"No votes yet{where}: play a few rounds in the Arena tab."
    outcomes: Counter[str] = Counter(vote.outcome for vote in votes)
    parts = [f"{outcomes[key]} {name}" for key, name in OUTCOME_NAMES.items() if outcomes[key]]
    summary = f"**{len(votes)} vote(s)**{where}: {', '.join(parts)}"
    if rated < len(votes):
        summary += f" · {len(votes) - rated} not rated (a panel failed, or both sides ran the same configuration)"
    if groups > 1:
        summary += (
            f" · the configurations form **{groups} groups** that never met each other: ratings and ranks compare "
            "only within a group"
        )
    return summary


def render(store: VoteStore, content: Content) -> dict[str, Any]:
    """Build the tab inside the current Blocks context and wire its events.

    Returns the keyword arguments of an event listener that refreshes the board, for the app to run when the tab
    is selected and after each arena vote.
    """
    gr.Markdown(HELP)
    with gr.Row():
        domain = gr.Dropdown([ALL, *content.domains], value=ALL, label="Domain", scale=2)
        both_bad = gr.Radio(
            [("a tie", "tie"), ("left out", "drop")], value="tie", label='"Both are bad" counts as', scale=2
        )
        refresh_button = gr.Button("Refresh", size="sm", scale=0, min_width=100)
    summary = gr.Markdown()
    table = gr.Dataframe(standings_frame([]), interactive=False, label="Leaderboard", wrap=True,
                         column_widths=TABLE_WIDTHS)  # fmt: skip  # fixed widths: a phone scrolls sideways
    chart = gr.ScatterPlot(
        None,  # never an empty frame: after one, Gradio 6.31 draws no points on the next update
        x="configuration",
        y="rating",
        color="series",
        color_map=CHART_COLORS,
        label="Bradley–Terry rating (blue) and the ends of its 95% interval (grey)",
        x_label_angle=-20,
        height=320,
    )
    matrix = gr.Dataframe(
        win_rate_frame([], {}),
        interactive=False,
        wrap=True,
        label="Win rates: share of points of the row vs the column",
    )
    with gr.Row():
        persona = gr.Dropdown(
            [("none: the question alone", ""), *((name, name) for name in sorted(content.personas))],
            value="",
            label="System prompt in the exported prompts",
            scale=2,
        )
        export = gr.Button("Download preference data (JSONL)", scale=1)
    exported = gr.File(label="Preference data (TRL conversational format)", interactive=False, visible=False)
    note = gr.Markdown()

    def board(chosen: str, counts_as: BothBad) -> Updates:
        only = None if chosen == ALL else chosen
        votes = store.votes(only)
        played = battles(votes)
        rows = leaderboard(played, both_bad=counts_as)
        names = [row.name for row in rows]
        points = chart_frame(rows)
        plotted = list(dict.fromkeys(points["configuration"]))  # rated ones only, in the table's order
        return {
            summary: vote_summary(votes, len(played), only, groups_of(rows)),
            table: standings_frame(rows),
            chart: gr.ScatterPlot(points if plotted else None, sort=plotted, y_lim=rating_range(points)),
            matrix: win_rate_frame(names, win_rates(played, counts_as)),
        }

    async def refresh(chosen: str, counts_as: BothBad) -> Updates:
        try:
            return await anyio.to_thread.run_sync(board, chosen, counts_as)
        except StoreError as exc:  # the database is down: say so, keep the last board
            return {summary: f"⚠️ Cannot read the votes: {md_text(str(exc))}"}

    async def download(chosen: str, persona_name: str) -> Updates:
        try:
            votes = await anyio.to_thread.run_sync(store.votes, None if chosen == ALL else chosen)
        except StoreError as exc:
            raise gr.Error(f"Cannot read the votes: {exc}") from exc
        system = content.personas[persona_name].system_prompt if persona_name else None
        records = preference_records(votes, system)
        if not records:
            raise gr.Error("Nothing to export yet: only votes where one answer won (A or B better) make pairs.")
        path = Path(tempfile.mkdtemp(prefix="arena-preferences-")) / f"preferences-{chosen}.jsonl"
        written = write_preferences(path, records)
        return {
            exported: gr.File(str(path), visible=True),
            note: f"{written} preference pair(s); ties, both-bad and failed votes skipped.",
        }

    outputs = [summary, table, chart, matrix]
    refresh_button.click(refresh, inputs=[domain, both_bad], outputs=outputs, api_name="leaderboard")
    for control in (domain, both_bad):
        control.change(refresh, inputs=[domain, both_bad], outputs=outputs, api_visibility="private")
    export.click(download, inputs=[domain, persona], outputs=[exported, note], api_name="leaderboard_export")
    return {"fn": refresh, "inputs": [domain, both_bad], "outputs": outputs, "api_visibility": "private"}
