"""The domain-quality targets a run is held to, and whether it meets them, per domain, with the numbers.

The product's question is whether an adapter beats the prompt; on a small base model the honest answer includes
where it does not. So the report states each target beside what the run measured, on the split verdicts are decided
on (the paraphrases, when the run has them), adapter + persona against base + persona, RAG off:
- the adapter keeps at least `TERMINOLOGY_GAIN` more of the expected terms;
- the adapter states unsupported or false claims no more often than the base model;
- no configuration loops (a 6-word phrase three times) in more than `LOOP_RATE` of its answers;
- in a brand-voice domain (support), the adapter states the fact asked for right (every expected figure, no
  known-false claim) in at least `FIGURES_RIGHT` of the questions that expect figures, and ends at least `SIGN_OFF`
  of its answers with the persona's sign-off.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from app.eval.intervals import Interval, bracket
from app.eval.verdict import Summary, SummaryRow, adapter_gains
from app.setups import ADAPTER, PROMPT

TERMINOLOGY_GAIN = 0.15
LOOP_RATE = 0.05
FIGURES_RIGHT = 0.70
SIGN_OFF = 0.95
HEADERS = [
    "domain",
    "split",
    f"terminology gain ≥ +{TERMINOLOGY_GAIN:.2f}",
    "adapter hallucination ≤ base",
    f"loops ≤ {LOOP_RATE:.0%} everywhere",
    f"brand voice: figures right ≥ {FIGURES_RIGHT:.0%}",
    f"brand voice: sign-off ≥ {SIGN_OFF:.0%}",
]


NOT_MET = "not met"
NOISE = "within noise"
NOTE = (
    "Targets: adapter + persona against base + persona, RAG off, on the split the verdict is decided on; loops over "
    "every configuration the run has. The brand-voice targets (support's) are the adapter + persona's: the share of "
    "questions that expect figures whose answer states every one of them and no known-false claim, and the share of "
    "answers ending with the persona's sign-off; – in a domain without a brand voice. In brackets: the 95 % interval "
    "of the adapter's difference from base + persona over the questions (paired bootstrap, docs/eval.md); *within "
    "noise* when it straddles the target's threshold, so that another run or other questions could decide it."
)


def _cell(
    values: Sequence[float | None],
    shown: str,
    met: Callable[..., bool],
    spread: Interval | None = None,
    at: float = 0.0,
) -> str:
    """One target's cell: "not measured" when a value is missing, else the values shown, the `spread` of the
    difference behind them in brackets, and whether they meet the target ("within noise" when the spread contains
    the threshold `at`, so that another run or other questions could decide it)."""
    if any(value is None for value in values):
        return "not measured"
    shown_spread = noise = ""
    if spread is not None:
        shown_spread = f" {bracket(spread)}"
        noise = f", {NOISE}" if spread[0] <= at <= spread[1] else ""
    return f"{shown.format(*values)}{shown_spread}: {'met' if met(*values) else NOT_MET}{noise}"


def domain_targets(rows: list[SummaryRow], intervals: Mapping[str, Interval] | None = None) -> list[str]:
    """One domain's cells (after domain and split): each target's measured value and whether it is met; `intervals`
    (the adapter's, from `Decision.intervals`) adds the spread of the two differences from base + persona."""
    intervals = intervals or {}
    by_spec = {row.spec: row for row in rows}
    base, adapter = by_spec.get(PROMPT), by_spec.get(ADAPTER)
    gain = adapter_gains(rows)["terminology"]
    made_up = [row.hallucination_rate if row else None for row in (adapter, base)]
    worst = max((row.loop_rate for row in rows if row.loop_rate is not None), default=None)
    worst_spec = next((row.spec for row in rows if worst is not None and row.loop_rate == worst), "")
    cells = [
        _cell([gain], "{:+.2f}", lambda g: g >= TERMINOLOGY_GAIN, intervals.get("terminology"), TERMINOLOGY_GAIN),
        _cell(made_up, "{:.2f} vs {:.2f}", lambda a, b: a <= b, intervals.get("hallucination")),
        _cell([worst], f"worst {{:.0%}} ({worst_spec})", lambda w: w <= LOOP_RATE),
    ]
    if not any(row.style_score is not None for row in rows):  # no brand voice: those targets do not apply
        return [*cells, "–", "–"]
    return [
        *cells,
        _cell([adapter.figures_right_rate if adapter else None], "{:.0%}", lambda f: f >= FIGURES_RIGHT),
        _cell([adapter.sign_off_rate if adapter else None], "{:.0%}", lambda s: s >= SIGN_OFF),
    ]


def targets_table(summary: Summary) -> list[list[str]]:
    """A row per domain: its name, the split measured, then `domain_targets` (plain text, domain unescaped)."""
    table = []
    for domain in summary.domains:
        rows, decision = summary.verdict_rows(domain), summary.verdict.get(domain)
        intervals = decision.intervals.get(ADAPTER) if decision else None
        table.append([domain, rows[0].split if rows else "–", *domain_targets(rows, intervals)])
    return table


def missed(table: Sequence[Sequence[str]], base_model: str | None) -> str:
    """One sentence under the table: each target the run did not meet and where (those within noise apart), with the
    base model it was measured on, so that what this model does not reach is said, not left to be read off cells;
    "" when every target is met."""
    parts = []
    for column, header in enumerate(HEADERS[2:], 2):
        beyond = [row[0] for row in table if row[column].endswith(f": {NOT_MET}")]
        within = [row[0] for row in table if row[column].endswith(f": {NOT_MET}, {NOISE}")]
        where = [f"in {', '.join(beyond)}"] if beyond else []
        where += [f"{NOISE} in {', '.join(within)}"] if within else []
        if where:
            parts.append(f"{header} {' and '.join(where)}")
    if not parts:
        return ""
    model = f" with base model {base_model}" if base_model else ""
    return (
        f"Not met{model}: {'; '.join(parts)}. The training recipes tried against them on the embedded model are in "
        "docs/adapters.md."
    )
