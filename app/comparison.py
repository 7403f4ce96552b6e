"""A finished comparison as data: one record per panel (setup, answer, metrics, scores) and its Markdown export.

The Compare tab keeps the last comparison as `comparison_record(...)` (plain JSON) and offers it for download as
JSON or as Markdown (`to_markdown`), so a comparison can be pasted into a report or diffed later.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from app.inert import md_table, md_text
from app.playground import PanelAnswer
from app.scoring.judge import AnswerScores
from app.setups import Setup


def panel_record(
    setup: Setup | None, answer: PanelAnswer, scores: AnswerScores | None, prices: tuple[float, float]
) -> dict[str, Any]:
    """One panel: its Setup (None when the panel's values were not valid), the answer (or error), speed, tokens, cost
    and scores."""
    return {
        "setup": {**setup.record(), "label": setup.label, "spec": setup.spec} if setup else {"label": "invalid panel"},
        "answer": answer.text,
        "error": answer.error,
        "finished": answer.done,
        "metrics": {
            "first_token_s": answer.first_token_s,
            "elapsed_s": answer.elapsed_s,
            "tokens_per_s": answer.tokens_per_s,
            "prompt_tokens": answer.prompt_tokens,
            "completion_tokens": answer.completion_tokens,
            "usd_per_1k_answers": answer.cost_per_1k_answers(*prices),
        },
        "scores": None if scores is None else scores.as_record(),
        "citations": [
            {"title": c.title, "source": c.source, "path": c.path, "score": round(c.score, 4)} for c in answer.citations
        ],
    }


def comparison_record(question: str, panels: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The whole comparison: when, the question, and each panel's record (left to right)."""
    return {"created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "question": question,
            "panels": list(panels)}  # fmt: skip


TABLE_HEADERS = ["panel", "setup", "first token", "tokens/s", "tokens in/out", "$ per 1k answers", "terminology",
                 "unsupported"]  # fmt: skip


def _number(value: float | None, pattern: str) -> str:
    return "–" if value is None else pattern.format(value)


def to_markdown(record: Mapping[str, Any]) -> str:
    """A readable report of a comparison record: the question, a metrics table, then each answer in full."""
    panels = record["panels"]
    lines = [
        "# Adapter Arena comparison",
        "",
        f"*{record['created_at']}* — demo model output, not professional advice.",
        "",
        f"**Question:** {record['question']}",
        "",
    ]
    rows = []
    for number, panel in enumerate(panels, 1):
        metrics, scores = panel["metrics"], panel["scores"] or {}
        rows.append([
            str(number),
            md_text(panel["setup"].get("label", "")),
            _number(metrics["first_token_s"], "{:.2f} s"),
            _number(metrics["tokens_per_s"], "{:.0f}"),
            f"{metrics['prompt_tokens'] or '–'} / {metrics['completion_tokens'] or '–'}",
            _number(metrics["usd_per_1k_answers"], "${:.3f}"),
            _number(scores.get("terminology"), "{:.0%}"),
            md_text(", ".join(scores.get("unsupported") or [])) or "–",
        ])  # fmt: skip
    lines += md_table(TABLE_HEADERS, rows)
    for number, panel in enumerate(panels, 1):
        setup = panel["setup"]
        lines += ["", f"## Panel {number}: {setup.get('label', '')}", ""]
        if setup.get("system_prompt"):
            lines += ["System prompt:", "", *(f"> {line}" for line in setup["system_prompt"].splitlines()), ""]
        lines.append(panel["answer"] or "*(no answer)*")
        if panel.get("stopped"):
            lines += ["", "*Stopped before it finished.*"]
        if panel["error"]:
            lines += ["", f"**Error:** {panel['error']}"]
        if panel["citations"]:
            lines += ["", "Sources:", *(f"- {c['title']} ({c['path']}, score {c['score']:.2f})" for c in
                                        panel["citations"])]  # fmt: skip
    return "\n".join(lines) + "\n"
