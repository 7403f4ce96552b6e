"""How answers look on the page, for the Compare and Arena tabs: the chat as shown, speed and cost, the term check,
sources and the server status line.

The raw conversation lives in `gr.State`; what a Chatbot shows is made from it here, through `app.inert` (model
output renders as Markdown but never as HTML, links or images) and then Gradio's own sanitiser. Nothing shown is
ever read back.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from typing import Any

from app.inert import inert_markdown, md_text
from app.playground import PanelAnswer
from app.rag import Citation
from app.scoring.checks import FALSE_CLAIM, MISUSE, TERM, UNSUPPORTED, highlight
from app.scoring.judge import AnswerScores

Turn = dict[str, Any]  # {"role": "user" | "assistant", "content": str}
MARKDOWN_HEADING = re.compile(r"^\s{0,3}#{1,6}\s*", re.MULTILINE)
MARKDOWN_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
MARKDOWN_EMPHASIS = re.compile(r"\*\*|__|(?<!\w)[*_](?=\S)|(?<=\S)[*_](?!\w)")
MARK_COLORS = {TERM: "#c8f7c5", MISUSE: "#ffc9c9", FALSE_CLAIM: "#ffc9c9", UNSUPPORTED: "#ffe3b3"}


def chat_turns(history: Sequence[Turn], question: str, answer: PanelAnswer) -> list[Turn]:
    """The raw conversation after this question: earlier turns, the question, the answer's text (errors left out:
    they are not something the model said)."""
    return [*history, {"role": "user", "content": question}, {"role": "assistant", "content": answer.text}]


def shown_turns(history: Sequence[Turn]) -> list[Turn]:
    """A conversation as the Chatbot shows it: every turn made inert."""
    return [{"role": turn["role"], "content": inert_markdown(turn["content"])} for turn in history]


def shown_chat(history: Sequence[Turn], question: str, answer: PanelAnswer) -> list[Turn]:
    """What the Chatbot shows while and after answering: the conversation, the question, and the answer with its
    error (if any) under it, all inert."""
    text = inert_markdown(answer.text)
    if answer.error:
        text = f"{text}\n\n⚠️ {inert_markdown(answer.error)}".strip()
    return [*shown_turns(history), {"role": "user", "content": inert_markdown(question)},
            {"role": "assistant", "content": text}]  # fmt: skip


def stats_line(answer: PanelAnswer, prices: tuple[float, float]) -> str:
    """Time to first token, speed, token counts and cost of a finished answer (and a note such as trimmed turns)."""
    if answer.first_token_s is None:
        return f"⚠️ {answer.note}" if answer.note else ""
    parts = [f"first token {answer.first_token_s:.1f} s"]
    if answer.tokens_per_s is not None:
        parts.append(f"{answer.tokens_per_s:.0f} tokens/s")
    if answer.prompt_tokens is not None:
        parts.append(f"{answer.prompt_tokens} tokens in / {answer.completion_tokens} out")
    cost = answer.cost_per_1k_answers(*prices)
    if cost is not None:
        parts.append(f"≈ ${cost:.3f} per 1k answers")
    if answer.note:
        parts.append(f"⚠️ {answer.note}")
    return " · ".join(parts)


def scores_label(scores: AnswerScores) -> str:
    """A one-line verdict above the highlighted answer, e.g. "terminology 67% · 1 unsupported claim"."""
    parts = [] if scores.terminology is None else [f"terminology {scores.terminology:.0%}"]
    terms = {hit.term for hit in scores.glossary if not hit.misuse}
    parts.append(f"{len(terms)} glossary term(s)")
    for count, what in ((len(scores.forbidden), "false claim"), (len(scores.unsupported), "unsupported claim"),
                        (sum(hit.misuse for hit in scores.glossary), "misuse")):  # fmt: skip
        if count:
            parts.append(f"{count} {what}{'s' if count > 1 else ''}")
    if scores.loops:
        parts.append(f"loops: a phrase repeats {scores.repeats}×")
    if scores.groundedness is not None:
        parts.append(f"grounded {scores.groundedness:.0%}")
    if scores.voice:
        parts.append(f"voice {sum(scores.voice.values())}/{len(scores.voice)} rules")
    return "Term check: " + " · ".join(parts)


def marked_html(text: str, scores: AnswerScores) -> str:
    """The answer with the term check's marks as coloured spans; every piece of model text is HTML-escaped."""
    pieces = "".join(
        html.escape(piece) if label is None else
        f'<mark style="background:{MARK_COLORS[label]}" title="{label}">{html.escape(piece)}</mark>'
        for piece, label in highlight(text, scores.marks())
    )  # fmt: skip
    legend = " ".join(f'<mark style="background:{color}">{label}</mark>' for label, color in MARK_COLORS.items())
    return (  # collapsed: the answer is already shown once, in the chat above
        f'<details class="term-check"><summary><strong>{html.escape(scores_label(scores))}</strong> (show the '
        f'answer marked)</summary><p>{legend}</p><p style="white-space:pre-wrap">{pieces}</p></details>'
    )


def plain_passage(text: str) -> str:
    """A knowledge-base passage as plain text: its own Markdown (headings, emphasis, links) would only show up as
    literal `##` and `**` once escaped."""
    text = MARKDOWN_HEADING.sub("", text)
    text = MARKDOWN_LINK.sub(r"\1", text)
    return MARKDOWN_EMPHASIS.sub("", text)


def sources_markdown(citations: Sequence[Citation]) -> tuple[str, str]:
    """The sources list — one line per document, with the passage numbers taken from it and its best score — and the
    retrieved passages as plain text; both escaped."""
    if not citations:
        return "", ""
    documents: dict[str, list[tuple[int, Citation]]] = {}
    for number, citation in enumerate(citations, 1):
        documents.setdefault(citation.path, []).append((number, citation))
    lines = []
    for path, found in documents.items():
        numbers = " ".join(f"\\[{number}\\]" for number, _ in found)
        first = found[0][1]
        best = max(citation.score for _, citation in found)
        lines.append(
            f"- **{numbers}** {md_text(first.title)} — {md_text(first.source or path)} — best score {best:.2f}"
        )
    listing = "\n".join(lines)
    passages = "\n\n".join(
        f"**\\[{n}\\] {md_text(c.title)}**{' — ' + md_text(c.heading) if c.heading else ''} ({md_text(c.path)})\n\n"
        + "\n".join(f"> {md_text(line)}" for line in plain_passage(c.text).splitlines())
        for n, c in enumerate(citations, 1)
    )
    return f"**Sources**\n\n{listing}", passages
