"""One Compare question in flight: the panels' Setups, their answers as they stream, the one judge's scores, and
the record that Export and Stop keep.

`answer_all_handler` is the Compare tab's answer event: it checks the question, makes each panel's Setup (a panel
with invalid values fails alone), streams every panel through the Playground at once and sends the browser at most
one update every UPDATE_EVERY_S (and one when a panel finishes), judging each answer off the event loop once it is
done. `mark_stopped` runs after Stop: unfinished panels get a mark, and the export keeps what they had.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import gradio as gr

from app.comparison import comparison_record, panel_record
from app.content import Domain
from app.playground import PanelAnswer
from app.prompts import message_text
from app.rag import RAGError
from app.scoring.judge import AnswerScores
from app.services import Services
from app.serving.client import ServingError
from app.setups import Setup
from app.ui.display import chat_turns, marked_html, shown_chat, stats_line
from app.ui.panel import FIELDS, PanelControls, checked_prompt, panel_setup

UPDATE_EVERY_S = 0.1  # stream to the browser at most this often (plus whenever a panel finishes), not per token
STOPPED = "⏹ stopped"
Updates = dict[Any, Any]


class Round:
    """One question in the shown panels: their Setups, answers, scores and export records as they come in."""

    def __init__(self, services: Services, panels: list[PanelControls], inputs: list[dict[str, Any]], *, base: str,
                 question: str, domain: Domain | None, last: gr.State) -> None:  # fmt: skip
        settings, self.judge = services.settings, services.judge
        self.prices = (settings.ui.price_in_per_mtok, settings.ui.price_out_per_mtok)
        self.panels, self.question, self.domain, self.last = panels, question, domain, last
        self.histories = [list(values["history"] or []) for values in inputs]
        self.setups: list[Setup | None] = []
        self.answers: list[PanelAnswer] = []
        for values in inputs:
            try:
                self.setups.append(panel_setup(values, base, services.content.personas))
                self.answers.append(PanelAnswer())
            except ValueError as exc:  # this panel fails alone, with the reason
                self.setups.append(None)
                self.answers.append(PanelAnswer(error=f"this panel's settings are not valid: {exc}", done=True))
        self.scores: list[AnswerScores | None] = [None] * len(panels)
        self.records: list[dict[str, Any] | None] = [None] * len(panels)
        self.evidence: list[str] | None = None

    @property
    def sent(self) -> list[int]:
        """The panels whose Setup is valid: those the playground answers."""
        return [index for index, setup in enumerate(self.setups) if setup is not None]

    async def update(self, index: int, answer: PanelAnswer) -> None:
        """A new state of panel `index`; once it is done, judge it (off the event loop) and record it."""
        self.answers[index] = answer
        if not answer.done or self.records[index] is not None:
            return
        if answer.text:
            if self.evidence is None:
                try:
                    self.evidence = await asyncio.to_thread(self.judge.evidence, self.domain, self.question)
                except RAGError:  # a broken knowledge base means no evidence, not a failed panel
                    self.evidence = []
            self.scores[index] = await asyncio.to_thread(
                self.judge.score, answer.text, domain=self.domain, question=self.question,
                citations=answer.citations, evidence=self.evidence,
            )  # fmt: skip
        self.records[index] = panel_record(self.setups[index], answer, self.scores[index], self.prices)

    def record(self) -> dict[str, Any]:
        """The comparison so far, for export: finished panels as judged, the others as far as they got (so that a
        Stop keeps them)."""
        panels = [
            record or panel_record(setup, answer, None, self.prices)
            for setup, answer, record in zip(self.setups, self.answers, self.records, strict=True)
        ]
        return comparison_record(self.question, panels)

    def view(self) -> Updates:
        updates: Updates = {self.last: self.record()}
        for index, (panel, answer) in enumerate(zip(self.panels, self.answers, strict=True)):
            score = self.scores[index]
            updates[panel.chatbot] = shown_chat(self.histories[index], self.question, answer)
            updates[panel.stats] = stats_line(answer, self.prices) if answer.done else ""
            updates[panel.marks] = marked_html(answer.text, score) if score else None
            updates[panel.citations] = answer.citations
        return updates

    def final(self) -> Updates:
        """The last view, with the conversations extended by this turn (answered panels only)."""
        updates = self.view()
        for index, (panel, answer) in enumerate(zip(self.panels, self.answers, strict=True)):
            if answer.error is None:
                updates[panel.history] = chat_turns(self.histories[index], self.question, answer)
        return updates


def answer_all_handler(services: Services, panels: list[PanelControls], last: gr.State) -> Callable[..., Any]:
    width = len(FIELDS)

    async def answer_all(question: str, domain_name: str | None, count: int, *values: Any) -> AsyncIterator[Updates]:
        """Stream the first `count` panels' answers to `question`; `values` holds each panel's inputs (FIELDS)."""
        question = checked_prompt(question, services.settings.ui.max_prompt_chars, "question")
        shown = panels[: int(count)]
        inputs = [dict(zip(FIELDS, values[i * width : (i + 1) * width], strict=True)) for i in range(len(shown))]
        try:
            base = await services.playground.base_model()
        except ServingError:
            base = ""  # the base-model panels then fail with the server's reason
        domain = services.content.domains.get(domain_name or "")
        run = Round(services, shown, inputs, base=base, question=question, domain=domain, last=last)
        for index, answer in enumerate(run.answers):
            if answer.done:
                await run.update(index, answer)
        sent = run.sent
        setups = [setup for setup in run.setups if setup is not None]
        shown_at = 0.0
        async for streamed in services.playground.answer(setups, [run.histories[i] for i in sent], question):
            finished = False
            for index, answer in zip(sent, streamed, strict=True):
                finished |= answer.done and run.records[index] is None
                await run.update(index, answer)
            if finished or time.monotonic() - shown_at >= UPDATE_EVERY_S:  # one render per interval, not per token
                shown_at = time.monotonic()
                yield run.view()
        yield run.final()

    return answer_all


def mark_stopped(record: dict[str, Any], *chats: list[dict[str, Any]]) -> list[Any]:
    """After Stop: each unfinished panel's answer gets a "stopped" mark, and so does its entry in the export."""
    if not record:
        return [gr.skip()] * (len(chats) + 1)
    panels = [dict(panel) for panel in record["panels"]]
    shown: list[Any] = []
    for index, chat in enumerate(chats):
        if index >= len(panels) or panels[index]["finished"] or not chat:
            shown.append(gr.skip())
            continue
        panels[index]["stopped"] = True
        *earlier, answer = chat
        text = message_text(answer["content"])
        shown.append([*earlier, {"role": "assistant", "content": f"{text}\n\n{STOPPED}".strip()}])
    return [{**record, "panels": panels}, *shown]
