"""The domain-quality targets a run is held to, and whether it meets them, per domain, with the numbers.

The product's question is whether an adapter beats the prompt; on a small base model the honest answer includes
where it does not. So the report states each target beside what the run measured, on the split verdicts are decided
on (the paraphrases, when the run has them), adapter + persona against base + persona, RAG off:
- the adapter keeps at least `TERMINOLOGY_GAIN` more of the expected terms;
- the adapter states unsupported or false claims no more often than the base model;
- no configuration loops (a 6-word phrase three times) in more than `LOOP_RATE` of its answers.
"""

from __future__ import annotations

from app.eval.verdict import Summary, SummaryRow
from app.setups import ADAPTER, PROMPT

TERMINOLOGY_GAIN = 0.15
LOOP_RATE = 0.05
HEADERS = [
    "domain",
    "split",
    f"terminology gain ≥ +{TERMINOLOGY_GAIN:.2f}",
    "adapter hallucination ≤ base",
    f"loops ≤ {LOOP_RATE:.0%} everywhere",
]


NOTE = (
    "Targets: adapter + persona against base + persona, RAG off, on the split the verdict is decided on; loops over "
    "every configuration the run has. Support's own targets (the Acme fact asked for stated right in 70 % of fact "
    "questions, the sign-off in 95 % of answers) are not separate figures: its hallucination and style columns are "
    "the nearest."
)


def _mark(met: bool | None) -> str:
    return "not measured" if met is None else "met" if met else "not met"


def domain_targets(rows: list[SummaryRow]) -> list[str]:
    """One domain's cells (after domain and split): each target's measured value and whether it is met."""
    by_spec = {row.spec: row for row in rows}
    base, adapter = by_spec.get(PROMPT), by_spec.get(ADAPTER)
    cells = []
    terms = [row.terminology_accuracy if row else None for row in (base, adapter)]
    if terms[0] is None or terms[1] is None:
        cells.append(_mark(None))
    else:
        gain = terms[1] - terms[0]
        cells.append(f"{gain:+.2f}: {_mark(gain >= TERMINOLOGY_GAIN - 1e-9)}")
    made_up = [row.hallucination_rate if row else None for row in (adapter, base)]
    if made_up[0] is None or made_up[1] is None:
        cells.append(_mark(None))
    else:
        cells.append(f"{made_up[0]:.2f} vs {made_up[1]:.2f}: {_mark(made_up[0] <= made_up[1])}")
    loops = [(row.loop_rate, row.spec) for row in rows if row.loop_rate is not None]
    if not loops:
        cells.append(_mark(None))
    else:
        worst, spec = max(loops)
        cells.append(f"worst {worst:.0%} ({spec}): {_mark(worst <= LOOP_RATE)}")
    return cells


def targets_table(summary: Summary) -> list[list[str]]:
    """A row per domain: its name, the split measured, then `domain_targets` (plain text, domain unescaped)."""
    table = []
    for domain in summary.domains:
        rows = summary.verdict_rows(domain)
        table.append([domain, rows[0].split if rows else "–", *domain_targets(rows)])
    return table
