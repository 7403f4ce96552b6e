"""The verdict: pure, typed rules from scored eval answers to a summary and a fine-tune / RAG / prompt / combine
decision per domain (the rules of docs/fine-tune-or-not.md). No I/O, no models: tested on hand-made rows.

`summarize(results, volatile=...)` groups results.jsonl records by domain and named spec into `SummaryRow`s and
decides each domain; `Summary.model_dump()` is summary.json (schema in docs/eval.md).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel

from app.eval.intervals import Interval, paired_intervals
from app.setups import ADAPTER, COMBINED, PROMPT, RAG

SUMMARY_VERSION = 3  # 2: a version field; 3: each verdict's paired intervals (docs/eval.md)
VERDICT_SPLIT = "paraphrase"  # the split verdicts are decided on, when the run has it: new wording, same facts
VERDICT_MARGIN = 0.05  # a gain in mean quality (0-1) below this is noise, not a reason to train or retrieve
Verdict = Literal["fine-tune", "RAG", "prompt", "combine"]


class SummaryRow(BaseModel):
    """One domain x split x named spec: rates and means over the answered (non-error) records; errors apart."""

    domain: str
    split: str = "eval"  # "eval" (evals/<domain>.jsonl) or "paraphrase" (evals/paraphrase/: new wording, same facts)
    model: str  # "base" or the adapter's name
    persona: bool
    rag: bool
    terminology_accuracy: float | None
    hallucination_rate: float | None
    groundedness: float | None  # RAG rows only
    style_score: float | None  # brand-voice domains only
    latency_s: float | None
    n: int
    spec: str
    label: str
    errors: int
    forbidden_rate: float | None
    unsupported_rate: float | None
    first_token_s: float | None
    tokens_in: float | None
    tokens_out: float | None
    loop_rate: float | None = None  # share of answers in which a 6-word phrase comes 3 times or more
    figures_right_rate: float | None = None  # of the answers to questions that expect figures: all stated, none false
    sign_off_rate: float | None = None  # brand-voice domains: share of answers that end with the persona's sign-off


class Axis(BaseModel):
    """One axis of the verdict: which role is best on it, by how much, and the numbers (higher is better, except
    latency and prompt tokens)."""

    winner: str  # a role spec, or "none" when nothing beats the prompt baseline by the margin
    clear: bool  # the winner beats every other role by the margin too
    values: dict[str, float]


class Decision(BaseModel):
    """The verdict of one domain, its one-sentence reason and the numbers behind it."""

    verdict: Verdict | None
    reason: str
    gains: dict[str, float]
    margin: float
    volatile: bool
    numbers: dict[str, dict[str, float | int | None]]
    axes: dict[str, Axis] = {}
    split: str = "eval"  # the split the verdict was decided on (the paraphrase split when the run has one)
    # role spec -> "quality" | "terminology" | "hallucination" -> 95 % interval of its difference from base + persona
    intervals: dict[str, dict[str, Interval]] = {}


class Summary(BaseModel):
    """summary.json: the rows in results order, and a decision per domain."""

    version: int = SUMMARY_VERSION
    rows: list[SummaryRow]
    verdict: dict[str, Decision]

    @property
    def domains(self) -> list[str]:
        return sorted({row.domain for row in self.rows})

    @property
    def splits(self) -> list[str]:
        """The question splits measured: "eval" first, then "paraphrase" (the generalisation split)."""
        return sorted({row.split for row in self.rows}, key=lambda split: (split != "eval", split))

    def verdict_rows(self, domain: str) -> list[SummaryRow]:
        """The domain's rows on the split its verdict was decided on."""
        decision = self.verdict.get(domain)
        split = decision.split if decision else "eval"
        return [row for row in self.rows if row.domain == domain and row.split == split]


def adapter_gains(rows: Sequence[SummaryRow]) -> dict[str, float | None]:
    """Adapter + persona minus base + persona in terminology and hallucination rate (the differences the targets and
    model cards show beside their intervals), in hundredths as shown: 0.45 - 0.30 is 0.1499... in floats, yet reads
    (and counts as) +0.15. None where either row or value is missing."""
    by_spec = {row.spec: row for row in rows}
    adapter, prompt = by_spec.get(ADAPTER), by_spec.get(PROMPT)
    gains: dict[str, float | None] = {}
    for figure, field in (("terminology", "terminology_accuracy"), ("hallucination", "hallucination_rate")):
        mine, theirs = (getattr(row, field) if row else None for row in (adapter, prompt))
        gains[figure] = None if mine is None or theirs is None else round(mine - theirs, 2)
    return gains


def _mean(values: Sequence[float | None], digits: int = 4) -> float | None:
    present = [value for value in values if value is not None]
    return round(sum(present) / len(present), digits) if present else None


def _flag(value: bool | None) -> float | None:
    return None if value is None else float(value)


def summary_row(records: Sequence[Mapping[str, Any]]) -> SummaryRow:
    """The row of one domain x spec from its results.jsonl records."""
    config, domain = records[0]["config"], records[0]["domain"]
    answered = [r for r in records if r["error"] is None]
    scores = [r["scores"] for r in answered]
    return SummaryRow(
        domain=domain,
        model=config["adapter"] or "base",
        persona=bool(config["persona"]),
        rag=bool(config["rag"]),
        terminology_accuracy=_mean([s["terminology"] for s in scores]),
        hallucination_rate=_mean([float(s["hallucination"]) for s in scores]),
        groundedness=_mean([s["groundedness"] for s in scores]) if config["rag"] else None,
        style_score=_mean([s["style_score"] for s in scores]),
        latency_s=_mean([r["latency_s"] for r in answered], 3),
        n=len(answered),
        spec=records[0]["spec"],
        label=records[0]["label"],
        errors=len(records) - len(answered),
        forbidden_rate=_mean([float(bool(s["forbidden"])) for s in scores]),
        unsupported_rate=_mean([float(bool(s["unsupported"])) for s in scores]),
        first_token_s=_mean([r["first_token_s"] for r in answered], 3),
        tokens_in=_mean([r["tokens_in"] for r in answered], 1),
        tokens_out=_mean([r["tokens_out"] for r in answered], 1),
        loop_rate=_mean([float(s.get("loops", False)) for s in scores]),
        figures_right_rate=_mean([_flag(s.get("figures_right")) for s in scores]),
        sign_off_rate=_mean([_flag(s["voice"].get("sign_off")) for s in scores]),
        split=records[0].get("split", "eval"),
    )


def goodness(row: SummaryRow) -> dict[str, float]:
    """The quality metrics a row measured, each oriented so that higher is better."""
    rate = row.hallucination_rate
    values = {
        "terminology": row.terminology_accuracy,
        "factuality (1 - hallucination rate)": None if rate is None else 1 - rate,
        "style": row.style_score,
    }
    return {name: value for name, value in values.items() if value is not None}


def quality(row: SummaryRow) -> float | None:
    """One 0-1 number per row: the mean of terminology accuracy, 1 - hallucination rate and (where measured) the
    style score. None when the row has no answered item."""
    return _mean(list(goodness(row).values()))


QUALITY_AXES = {  # axis -> how a row measures it, higher is better (the article's reasons to fine-tune)
    "terminology": lambda row: row.terminology_accuracy,
    "voice": lambda row: row.style_score,
    "facts": lambda row: None if row.hallucination_rate is None else 1 - row.hallucination_rate,
}
COST_AXES = {"latency": lambda row: row.latency_s, "prompt tokens": lambda row: row.tokens_in}  # lower is better
ROLE_NAMES = {PROMPT: "the persona prompt", ADAPTER: "the adapter", RAG: "RAG", COMBINED: "adapter + RAG"}


def _values(by_spec: Mapping[str, SummaryRow], measure: Callable[[SummaryRow], float | None]) -> dict[str, float]:
    measured = {spec: measure(by_spec[spec]) for spec in ROLE_NAMES if spec in by_spec}
    return {spec: value for spec, value in measured.items() if value is not None}


def decide_axes(by_spec: Mapping[str, SummaryRow], margin: float) -> dict[str, Axis]:
    """Per axis, the role that does best: on a quality axis it must gain the margin over the prompt baseline (else
    "none"); `clear` when it also leads every other role by the margin. Cost axes just name the cheapest role."""
    axes: dict[str, Axis] = {}
    for name, measure in QUALITY_AXES.items():
        values = {
            spec: value for spec in ROLE_NAMES if spec in by_spec and (value := measure(by_spec[spec])) is not None
        }
        if PROMPT not in values:
            continue
        best = max(values, key=lambda spec: (values[spec], spec == PROMPT))
        others = [value for spec, value in values.items() if spec != best]
        gained = best != PROMPT and values[best] - values[PROMPT] >= margin
        clear = gained and all(values[best] - value >= margin for value in others)
        axes[name] = Axis(winner=best if gained else "none", clear=clear, values=values)
    for name, measure in COST_AXES.items():
        values = {
            spec: value for spec in ROLE_NAMES if spec in by_spec and (value := measure(by_spec[spec])) is not None
        }
        if values:
            axes[name] = Axis(winner=min(values, key=values.__getitem__), clear=True, values=values)
    return axes


def _split_parts(axes: Mapping[str, Axis], volatile: bool) -> tuple[str, str] | None:
    """When the adapter clearly wins some quality axis and RAG (alone or with the adapter) clearly wins another, or
    the facts of a fast-changing domain: (verdict reason naming who does what) — the article's combination. Only
    once adapter + RAG was measured and is no worse than either alone (else the combination is a guess)."""
    adapter = [name for name, axis in axes.items() if name in QUALITY_AXES and axis.clear and axis.winner == ADAPTER]
    rag = [
        name for name, axis in axes.items() if name in QUALITY_AXES and axis.clear and axis.winner in (RAG, COMBINED)
    ]
    if not adapter or not (rag or volatile):
        return None
    facts = [*rag, "facts"] if volatile and "facts" not in rag else rag
    why = " (its facts change fast)" if volatile else ""
    return (
        "combine",
        f"use the adapter for {' and '.join(adapter)} and RAG for {' and '.join(facts)}{why}: "
        + "; ".join(f"{name}: {_axis_numbers(axes[name])}" for name in [*adapter, *rag] if name in axes)
        + ".",
    )


def _axis_numbers(axis: Axis) -> str:
    return ", ".join(f"{ROLE_NAMES[spec]} {value:.2f}" for spec, value in axis.values.items())


def decide_verdict(rows: Sequence[SummaryRow], *, volatile: bool = False, margin: float = VERDICT_MARGIN) -> Decision:
    """fine-tune, RAG, prompt or combine for one domain, from its summary rows (docs/fine-tune-or-not.md).

    Candidates are compared with base+persona (the prompt-engineering baseline) by `quality`; a gain counts when it
    is at least `margin`. In order: *combine* if adapter+persona+rag beats base+persona, the adapter alone and RAG
    alone by the margin; *prompt* if neither the adapter (adapter+persona) nor RAG (base+persona+rag) gains the
    margin; *RAG* if only RAG does; *fine-tune* if only the adapter does. If both do: *RAG* when the domain is
    `volatile` (its facts change faster than one would retrain), when RAG's quality beats the adapter's by the
    margin, or when RAG is within the margin of the adapter on every metric (RAG already answers as well, with no
    training); otherwise *fine-tune*: the adapter is better on some metric and cheaper per answer (no retrieved
    context in the prompt). Returns the verdict, a one-sentence reason and the numbers behind it.
    """
    by_spec = {row.spec: row for row in rows if row.n}
    numbers = {
        spec: {
            "quality": quality(row),
            **{key: getattr(row, key) for key in ("terminology_accuracy", "hallucination_rate", "style_score")},
            **{key: getattr(row, key) for key in ("tokens_in", "latency_s")},
            "n": row.n,
        }
        for spec, row in by_spec.items()
        if spec in (PROMPT, ADAPTER, RAG, COMBINED)
    }
    q = {spec: values["quality"] for spec, values in numbers.items() if values["quality"] is not None}
    if PROMPT not in q:
        return Decision(verdict=None, reason="no answered base+persona rows to compare with", gains={},
                        margin=margin, volatile=volatile, numbers=numbers)  # fmt: skip
    gains = {spec: round(q[spec] - q[PROMPT], 4) for spec in (ADAPTER, RAG, COMBINED) if spec in q}
    axes = decide_axes(by_spec, margin)
    verdict, reason = _verdict(q, gains, by_spec, volatile=volatile, margin=margin)
    combined_holds = COMBINED in q and q[COMBINED] >= max(q.get(ADAPTER, 0.0), q.get(RAG, 0.0)) - margin
    parts = _split_parts(axes, volatile) if combined_holds else None
    if parts and verdict in ("fine-tune", "RAG", "combine"):
        verdict, reason = "combine", parts[1]  # the axes tell apart what the one quality number mixes
    return Decision(verdict=verdict, reason=reason, gains=gains, margin=margin, volatile=volatile, numbers=numbers,
                    axes=axes, split=next(iter(by_spec.values())).split)  # fmt: skip


def _verdict(  # noqa: PLR0911 - one return per rule of the decision list, in order
    q: Mapping[str, float],
    gains: Mapping[str, float],
    rows: Mapping[str, SummaryRow],
    *,
    volatile: bool,
    margin: float,
) -> tuple[Verdict, str]:
    adapter_wins = gains.get(ADAPTER, 0.0) >= margin
    rag_wins = gains.get(RAG, 0.0) >= margin
    if COMBINED in q and ADAPTER in q and RAG in q and gains[COMBINED] >= margin:
        lead = q[COMBINED] - max(q[ADAPTER], q[RAG])
        if lead >= margin:
            return "combine", (
                f"adapter + RAG ({q[COMBINED]:.2f}) beats the adapter alone ({q[ADAPTER]:.2f}) and RAG alone "
                f"({q[RAG]:.2f}) by {lead:.2f} (margin {margin:g})."
            )
    if not adapter_wins and not rag_wins:
        found = ", ".join(f"{spec} {gains[spec]:+.2f}" for spec in (ADAPTER, RAG) if spec in gains) or "none measured"
        return "prompt", f"neither the adapter nor RAG beats base + persona ({q[PROMPT]:.2f}) by {margin:g} ({found})."
    if not adapter_wins:
        return "RAG", f"RAG gains {gains[RAG]:+.2f} over base + persona and the adapter does not ({_gain(gains)})."
    if not rag_wins:
        return "fine-tune", (
            f"the adapter gains {gains[ADAPTER]:+.2f} over base + persona and RAG does not ({_gain(gains, RAG)})"
            + ("; keep the fast-changing facts out of its training data." if volatile else ".")
        )
    if volatile:
        return "RAG", (
            f"both beat base + persona (adapter {gains[ADAPTER]:+.2f}, RAG {gains[RAG]:+.2f}), but this domain's facts "
            "change fast, so update the knowledge base instead of retraining."
        )
    if q[RAG] - q[ADAPTER] >= margin:
        return "RAG", f"RAG ({q[RAG]:.2f}) beats the adapter ({q[ADAPTER]:.2f}) by at least {margin:g}."
    adapter_metrics, rag_metrics = goodness(rows[ADAPTER]), goodness(rows[RAG])
    ahead = [m for m in adapter_metrics if m in rag_metrics and adapter_metrics[m] - rag_metrics[m] > margin]
    if not ahead:
        return "RAG", (
            f"RAG is within {margin:g} of the adapter on every metric ({q[RAG]:.2f} vs {q[ADAPTER]:.2f}), so it "
            "answers as well without training."
        )
    saved = (rows[RAG].tokens_in or 0) - (rows[ADAPTER].tokens_in or 0)
    return "fine-tune", (
        f"the adapter beats RAG on {', '.join(ahead)} by more than {margin:g} and needs {saved:.0f} fewer prompt "
        f"tokens per answer (latency {rows[ADAPTER].latency_s or 0:.2f} s vs {rows[RAG].latency_s or 0:.2f} s)."
    )


def _gain(gains: Mapping[str, float], spec: str = ADAPTER) -> str:
    return f"{gains[spec]:+.2f}" if spec in gains else "not measured"


def summarize(
    results: Sequence[Mapping[str, Any]], *, volatile: Collection[str] = (), margin: float = VERDICT_MARGIN
) -> Summary:
    """One row per domain x split x spec (in results order) and a decision per domain, on the paraphrase split when
    the run has one; `volatile` names the domains whose facts change often (Domain.facts_change_often)."""
    groups: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    for record in results:
        groups.setdefault((record["domain"], record.get("split", "eval"), record["spec"]), []).append(record)
    rows = [summary_row(records) for records in groups.values()]
    verdict = {}
    for domain in sorted({row.domain for row in rows}):
        splits = {row.split for row in rows if row.domain == domain}
        split = VERDICT_SPLIT if VERDICT_SPLIT in splits else "eval"  # judged on wording it was not trained on
        mine = [row for row in rows if row.domain == domain and row.split == split]
        decision = decide_verdict(mine, volatile=domain in volatile, margin=margin)
        roles = {spec: groups[domain, split, spec] for spec in ROLE_NAMES if (domain, split, spec) in groups}
        verdict[domain] = decision.model_copy(update={"intervals": paired_intervals(roles, PROMPT)})
    return Summary(rows=rows, verdict=verdict)


def adapter_domains(summary: Summary) -> list[str]:
    """The domains whose adapter was measured against the persona-prompted base model."""
    answered = {(row.domain, row.spec) for row in summary.rows if row.n}
    return sorted(domain for domain, spec in answered if spec == ADAPTER and (domain, PROMPT) in answered)
