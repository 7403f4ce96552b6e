"""Eval report: pure functions from the eval's Summary, results.jsonl records and run.json to Markdown, HTML,
PNG charts (matplotlib, Agg) and the tables and chart data the Eval tab shows.

`python -m app.eval` writes report.html (charts inlined as base64 PNG) and report.md (linking the PNG files beside
it). Answers, questions and names come from models and data files, so they are untrusted: HTML output escapes every
one of them with `html.escape`, Markdown output with `md_text` (no raw HTML, links or images from an answer).
"""

from __future__ import annotations

import base64
import html
import io
import re
from collections.abc import Mapping, Sequence
from typing import Any

from app.eval import targets
from app.eval.intervals import bracket
from app.eval.verdict import QUALITY_AXES, ROLE_NAMES, Decision, Summary
from app.inert import md_code, md_table, md_text
from app.setups import recipe_order

TITLE = "Eval report"
RESULTS_TITLE = "Eval results"
RESULTS_NOTE = "Written by `make eval` (`python -m app.eval`); regenerate it rather than editing it. See docs/eval.md."
EXAMPLES_PER_DOMAIN = 2
METRICS = {  # summary key -> how charts and tables name it
    "terminology_accuracy": "terminology accuracy ↑",
    "hallucination_rate": "hallucination rate ↓",
    "groundedness": "groundedness ↑",
    "style_score": "brand-voice style ↑",
    "loop_rate": "loop rate ↓",
}
LATENCY = "latency_s"
CHART_METRICS = {**METRICS, LATENCY: "latency (s) ↓"}
COLUMNS = {  # summary key -> table header
    "split": "split",
    "spec": "configuration",
    "n": "answered",
    "errors": "errors",
    "terminology_accuracy": "terminology",
    "hallucination_rate": "hallucination",
    "groundedness": "groundedness",
    "style_score": "style",
    "sign_off_rate": "sign-off",
    "figures_right_rate": "figures right",
    "loop_rate": "loops",
    LATENCY: "latency s",
    "tokens_in": "tokens in",
    "tokens_out": "tokens out",
}


def fmt(value: Any, key: str = "") -> str:
    """A table cell: – for missing, whole numbers for counts and tokens, two decimals otherwise."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) or key.startswith("tokens"):
        return f"{value:.0f}"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def table(summary: Summary, domain: str | None = None, *, formatted: bool = False) -> tuple[list[str], list[list[Any]]]:
    """Headers and rows of the summary (one domain's, or all with a domain column first); raw values, or `fmt`ed."""
    keys = list(COLUMNS) if domain else ["domain", *COLUMNS]
    rows = [
        [fmt(getattr(row, key), key) if formatted else getattr(row, key) for key in keys]
        for row in summary.rows
        if domain in (None, row.domain)
    ]
    return [COLUMNS.get(key, key) for key in keys], rows


def chart_records(summary: Summary, metric: str) -> list[dict[str, Any]]:
    """Long-form rows for one bar per domain x configuration of `metric` (missing values left out)."""
    several = len(summary.splits) > 1
    return [
        {"bar": f"{row.domain} · {row.spec}" + (f" · {row.split}" if several else ""), "domain": row.domain,
         "configuration": row.spec, "value": getattr(row, metric)}
        for row in sorted(summary.rows, key=lambda r: (r.domain, r.split != "eval", recipe_order(r.spec)))
        if getattr(row, metric) is not None
    ]  # fmt: skip


def generalisation(summary: Summary, domain: str) -> tuple[list[str], list[list[str]]]:
    """Terminology on the eval set beside the paraphrase split, per configuration: overfitting to our eval wording
    shows as a gap. Empty when the run has one split only."""
    if len(summary.splits) < 2:
        return [], []
    by_split = {(row.split, row.spec): row for row in summary.rows if row.domain == domain}
    specs = sorted({spec for _, spec in by_split}, key=recipe_order)
    rows = []
    for spec in specs:
        seen, new = by_split.get(("eval", spec)), by_split.get(("paraphrase", spec))
        values = [row.terminology_accuracy if row else None for row in (seen, new)]
        gap = values[1] - values[0] if None not in values else None  # type: ignore[operator]
        rows.append([spec, fmt(values[0]), fmt(values[1]), "–" if gap is None else f"{gap:+.2f}"])
    return ["configuration", "terminology, eval set", "terminology, paraphrases", "difference"], rows


def axes_text(decision: Decision) -> str:
    """E.g. "terminology: the adapter (clear) · facts: RAG (clear) · latency: the persona prompt"."""
    parts = []
    for name, axis in decision.axes.items():
        who = ROLE_NAMES.get(axis.winner, "none by the margin")
        parts.append(f"{name}: {who}{' (clear)' if axis.clear and name in QUALITY_AXES else ''}")
    return " · ".join(parts)


def _quality_numbers(decision: Decision) -> str:
    return " · ".join(
        f"{spec} {values['quality']:.2f}" for spec, values in decision.numbers.items() if values["quality"] is not None
    )


def _gains_with_intervals(decision: Decision) -> str:
    """E.g. "adapter+persona +0.15 [+0.09, +0.22] · base+persona+rag +0.03 [-0.05, +0.09]": each quality gain over
    base + persona with its 95 % paired interval, to read against the margin."""
    return " · ".join(
        f"{spec} {gain:+.2f} {bracket(interval)}"
        for spec, gain in decision.gains.items()
        if (interval := decision.intervals.get(spec, {}).get("quality")) is not None
    )


def verdict_items(summary: Summary) -> list[tuple[str, str, str, str]]:
    """(domain, verdict, reason, the numbers behind it) per domain, as plain (unescaped) text."""
    items = []
    for domain, decision in summary.verdict.items():
        notes = [f"quality {_quality_numbers(decision) or 'not measured'}", f"margin {decision.margin:g}"]
        if gains := _gains_with_intervals(decision):
            notes.append(f"gains over base+persona, 95 % intervals: {gains}")
        if decision.axes:
            notes.append("best by axis: " + axes_text(decision))
        if decision.split != "eval":
            notes.append(f"decided on the {decision.split} split")
        if decision.volatile:
            notes.append("facts treated as fast-changing")
        verdict: str = decision.verdict or "no verdict"
        items.append((domain, verdict, decision.reason, "; ".join(notes)))
    return items


def verdicts_markdown(summary: Summary, warnings: Sequence[str] = ()) -> str:
    """The verdicts as a Markdown list (domain names escaped); then any warnings of the run, escaped."""
    lines = [
        f"- **{md_text(domain)}: {verdict}** — {reason} ({numbers})"
        for domain, verdict, reason, numbers in verdict_items(summary)
    ]
    lines += [f"- ⚠️ {md_text(warning)}" for warning in warnings]
    return "\n".join(lines) or "No verdict: nothing was answered."


def _png(figure: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer, metadata={"Software": None})  # no version stamp: stable files
    return buffer.getvalue()


def _colour(spec: str) -> str:
    from matplotlib import colormaps

    red, green, blue, _ = colormaps["tab10"](recipe_order(spec)[0] % 10)
    return f"#{round(red * 255):02x}{round(green * 255):02x}{round(blue * 255):02x}"


def chart_name(domain: str) -> str:
    return f"chart-{re.sub(r'[^A-Za-z0-9_-]', '_', domain)}.png"


def render_charts(summary: Summary) -> dict[str, bytes]:
    """PNG bar charts: per domain one panel per metric (a bar per configuration), and one latency chart."""
    from matplotlib.figure import Figure

    charts: dict[str, bytes] = {}
    for domain in summary.domains:
        rows = sorted(summary.verdict_rows(domain), key=lambda r: recipe_order(r.spec), reverse=True)
        metrics = [m for m in METRICS if any(getattr(r, m) is not None for r in rows)]
        figure = Figure(figsize=(3.2 * max(len(metrics), 1), 0.45 * len(rows) + 1.4), layout="constrained")
        for index, metric in enumerate(metrics):
            axes = figure.add_subplot(1, len(metrics), index + 1)
            values = [getattr(r, metric) for r in rows]
            bars = axes.barh([r.spec for r in rows], [v or 0.0 for v in values], color=[_colour(r.spec) for r in rows])
            axes.bar_label(bars, labels=["n/a" if v is None else f"{v:.2f}" for v in values], fontsize=7, padding=2)
            axes.set_xlim(0, 1)
            axes.set_title(METRICS[metric], fontsize=9)
            axes.tick_params(labelsize=8, labelleft=index == 0)
        figure.suptitle(domain, fontsize=11)
        charts[chart_name(domain)] = _png(figure)
    records = chart_records(summary, LATENCY)
    if records:
        figure = Figure(figsize=(7, 0.3 * len(records) + 1.2), layout="constrained")
        axes = figure.add_subplot()
        records.reverse()
        axes.barh([r["bar"] for r in records], [r["value"] for r in records],
                  color=[_colour(r["configuration"]) for r in records])  # fmt: skip
        axes.set_xlabel("mean seconds per answer (lower is better)")
        axes.set_title("Latency per answer", fontsize=11)
        axes.tick_params(labelsize=8)
        charts["chart-latency.png"] = _png(figure)
    return charts


def examples(results: Sequence[Mapping[str, Any]], per_domain: int = EXAMPLES_PER_DOMAIN) -> list[list[Mapping]]:
    """The first `per_domain` questions of each domain, each as its answers (one record per configuration)."""
    by_id: dict[str, list[Mapping[str, Any]]] = {}
    for record in results:
        by_id.setdefault(record["id"], []).append(record)
    chosen: dict[str, list[list[Mapping[str, Any]]]] = {}
    for records in by_id.values():
        picked = chosen.setdefault(records[0]["domain"], [])
        if len(picked) < per_domain:
            picked.append(records)
    return [group for domain in sorted(chosen) for group in chosen[domain]]


def score_line(record: Mapping[str, Any]) -> str:
    """Plain-text scores of one answer (contains answer text: escape before display)."""
    if record["error"]:
        return f"error: {record['error']}"
    scores = record["scores"]
    parts = [f"terminology {fmt(scores['terminology'])}"]
    claims = [*scores["forbidden"], *scores["unsupported"]]
    parts.append(f"hallucination: {'yes (' + ', '.join(claims) + ')' if claims else 'no'}")
    if scores["groundedness"] is not None:
        parts.append(f"groundedness {fmt(scores['groundedness'])}")
    if scores["style_score"] is not None:
        parts.append(f"style {fmt(scores['style_score'])}")
    parts.append(f"{fmt(record['latency_s'])} s, {fmt(record['tokens_in'], 'tokens')} tokens in")
    return " · ".join(parts)


CODE_FIELDS = frozenset({"Command", "Server", "Base model"})  # shown verbatim (code) in Markdown
PLAIN_FIELDS = frozenset({"Date", "Answers"})  # made by app.eval itself: no escaping needed


def run_lines(meta: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(what, value) lines about the run, from run.json, plain text."""
    fields = [
        ("Command", meta.get("command")),
        ("Date", meta.get("date")),
        ("Hardware", meta.get("hardware")),
        ("Server", meta.get("server")),
        ("Base model", meta.get("base_model")),
        ("Adapters served", ", ".join(meta.get("adapters", [])) or "none"),
    ]
    if "answers" in meta:
        fields.append(
            ("Answers", f"{meta['answers']} ({meta.get('cached', 0)} from the cache, {meta.get('errors', 0)} errors) "
             f"at temperature {meta.get('temperature', 0):g}, ≤ {meta.get('max_tokens')} tokens, "
             f"{meta.get('concurrency')} in flight; {meta.get('wall_s', 0):.0f} s in all")
        )  # fmt: skip
    fields += [("Warning", warning) for warning in meta.get("warnings", [])]
    return [(name, str(value)) for name, value in fields if value is not None]


READING = (
    "Terminology: share of each question's expected-term groups in the answer. Hallucination: the answer states a "
    "known-false claim of the question, or a number, price, duration or name that no evidence supports (the "
    "reference answer, the persona's facts, passages retrieved for the question). Groundedness (RAG rows): share of "
    "answer sentences that a retrieved sentence supports. Style (support): share of the persona's brand-voice rules "
    "kept. Verdict rules: docs/fine-tune-or-not.md; definitions: docs/eval.md."
)


def _md_field(name: str, value: str) -> str:
    if name in CODE_FIELDS:
        return md_code(value)
    return value if name in PLAIN_FIELDS else md_text(value)


def render_markdown(
    summary: Summary,
    results: Sequence[Mapping[str, Any]],
    meta: Mapping[str, Any],
    charts: Mapping[str, bytes],
    *,
    chart_prefix: str = "",
    title: str = TITLE,
    note: str = "",
) -> str:
    """report.md: run, verdicts, per domain its table, chart and example answers; charts linked as files."""
    out = [f"# {title}", "", *([note, ""] if note else [])]
    out += [f"- **{name}**: {_md_field(name, value)}" for name, value in run_lines(meta)]
    out += ["", "## Verdicts", "", verdicts_markdown(summary), "", READING, ""]
    target_table = targets.targets_table(summary)
    target_rows = [[md_text(domain), *cells] for domain, *cells in target_table]
    out += ["## Targets", "", *md_table(targets.HEADERS, target_rows)]
    missed = targets.missed(target_table, meta.get("base_model"))
    out += ["", *([md_text(missed), ""] if missed else []), targets.NOTE, ""]
    for domain in summary.domains:
        headers, rows = table(summary, domain, formatted=True)
        out += [f"## {md_text(domain)}", "", *md_table(headers, rows)]
        general_headers, general = generalisation(summary, domain)
        if general:
            out += ["", f"Generalisation ({md_text(domain)}): the same facts asked in new words", ""]
            out += md_table(general_headers, general)
        if chart_name(domain) in charts:
            out += ["", f"![{md_text(domain)}: metrics per configuration]({chart_prefix}{chart_name(domain)})"]
        out.append("")
        for group in (g for g in examples(results) if g[0]["domain"] == domain):
            out += [f"### {md_text(group[0]['id'])}: {md_text(group[0]['question'])}", ""]
            for record in group:
                out += [f"**{record['spec']}** — {md_text(score_line(record))}", ""]
                out += [
                    f"> {md_text(line)}" if line.strip() else ">" for line in (record["answer"] or "–").splitlines()
                ]
                out.append("")
    if "chart-latency.png" in charts:
        out += ["## Latency", "", f"![Latency per answer]({chart_prefix}chart-latency.png)", ""]
    return "\n".join(out)


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 78rem; padding: 0 1rem; color: #222; }
table { border-collapse: collapse; margin: 1rem 0; } th, td { border: 1px solid #ccc; padding: .3rem .6rem; }
td.num { text-align: right; font-variant-numeric: tabular-nums; } img { max-width: 100%; }
.answers { display: grid; grid-template-columns: repeat(auto-fit, minmax(17rem, 1fr)); gap: .8rem; }
.answer { border: 1px solid #ddd; border-radius: 6px; padding: .6rem; }
.answer pre { white-space: pre-wrap; font-family: inherit; margin: .4rem 0; }
.scores { color: #555; font-size: .85em; } .verdict { font-weight: bold; }
"""


def _html_table(headers: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[bool]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td{' class=num' if num else ''}>{html.escape(cell)}</td>" for cell, num in zip(row, numeric, strict=True)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(charts: Mapping[str, bytes], name: str, alt: str) -> str:
    if name not in charts:
        return ""
    data = base64.b64encode(charts[name]).decode("ascii")
    return f'<p><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></p>'


def render_html(
    summary: Summary,
    results: Sequence[Mapping[str, Any]],
    meta: Mapping[str, Any],
    charts: Mapping[str, bytes],
    *,
    title: str = TITLE,
) -> str:
    """report.html: one self-contained page (charts inlined); every text from data or models is escaped."""
    e = html.escape
    target_table = targets.targets_table(summary)
    missed = targets.missed(target_table, meta.get("base_model"))
    parts = [
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>'
        f"<style>{_CSS}</style></head><body><h1>{e(title)}</h1><ul>",
        *(f"<li><b>{e(name)}</b>: {e(value)}</li>" for name, value in run_lines(meta)),
        "</ul><h2>Verdicts</h2>",
        _html_table(
            ["domain", "verdict", "reason", "numbers"],
            [list(item) for item in verdict_items(summary)],
            [False] * 4,
        ),
        f"<p>{e(READING)}</p><h2>Targets</h2>",
        _html_table(targets.HEADERS, target_table, [False] * len(targets.HEADERS)),
        *([f"<p>{e(missed)}</p>"] if missed else []),
        f"<p>{e(targets.NOTE)}</p>",
    ]
    numeric = [key != "spec" for key in COLUMNS]
    for domain in summary.domains:
        headers, rows = table(summary, domain, formatted=True)
        parts += [f"<h2>{e(domain)}</h2>", _html_table(headers, rows, numeric)]
        general_headers, general = generalisation(summary, domain)
        if general:
            parts += [f"<p>Generalisation ({e(domain)}): the same facts asked in new words</p>",
                      _html_table(general_headers, general, [False, True, True, True])]  # fmt: skip
        parts.append(_img(charts, chart_name(domain), f"{domain}: metrics per configuration"))
        for group in (g for g in examples(results) if g[0]["domain"] == domain):
            parts.append(f"<h3>{e(group[0]['id'])}: {e(group[0]['question'])}</h3><div class=answers>")
            parts += [
                f"<div class=answer><b>{e(r['spec'])}</b><pre>{e(r['answer'] or '–')}</pre>"
                f"<div class=scores>{e(score_line(r))}</div></div>"
                for r in group
            ]
            parts.append("</div>")
    if "chart-latency.png" in charts:
        parts += ["<h2>Latency</h2>", _img(charts, "chart-latency.png", "Latency per answer")]
    parts.append("</body></html>")
    return "\n".join(parts)
