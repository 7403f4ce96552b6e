"""One Compare question in flight: the panels' Setups, their answers as they stream, the one judge's scores, and
the record that Export and Stop keep.

`answer_all_handler` is the Compare tab's answer event: it checks the question, makes each panel's Setup (a panel
with invalid values fails alone), streams every panel through the Playground at once and sends the browser at most
one update every UPDATE_EVERY_S, plus one at once when a panel's first token or its end arrives. Each finished answer
is judged in a worker thread beside the stream, not in its way: its text and stats show as soon as it ends, its term
check when the judge is done. `mark_stopped` runs after Stop: unfinished panels get a mark, and the export keeps what
they had.
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
from app.ui.display import chat_turns, marked_html, shown_chat, shown_turns, stats_line
from app.ui.panel import FIELDS, PanelControls, checked_prompt, panel_setup

UPDATE_EVERY_S = 0.1  # stream to the browser at most this often (plus a panel's first token and end), not per token
STOPPED = "⏹ stopped"
Updates = dict[Any, Any]


class Round:
    """One question in the shown panels: their Setups, answers, scores and export records as they come in.

    `hidden` are the panels not asked, with their conversations: every view gives them a value too. Gradio turns an
    output left out of an update into one that rebuilds the component and its API schema on every yield (~2.5 ms for
    a Chatbot), which made hidden panels the largest part of the app's CPU with many users (docs/performance.md)."""

    def __init__(self, services: Services, panels: list[PanelControls], inputs: list[dict[str, Any]], *, base: str,
                 question: str, domain: Domain | None, last: gr.State,
                 hidden: list[tuple[PanelControls, list[dict[str, Any]]]]) -> None:  # fmt: skip
        settings, self.judge = services.settings, services.judge
        self.prices = (settings.ui.price_in_per_mtok, settings.ui.price_out_per_mtok)
        self.panels, self.question, self.domain, self.last = panels, question, domain, last
        self.hidden = [(panel, shown_turns(history)) for panel, history in hidden]
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
        self.evidence: asyncio.Task[list[str]] | None = None  # the judge's passages for the question, found once

    @property
    def sent(self) -> list[int]:
        """The panels whose Setup is valid: those the playground answers."""
        return [index for index, setup in enumerate(self.setups) if setup is not None]

    def update(self, index: int, answer: PanelAnswer) -> bool:
        """A new state of panel `index`; True when the browser should see it at once (its first token, or its end)."""
        before, self.answers[index] = self.answers[index], answer
        return bool(answer.text and not before.text) or (answer.done and not before.done)

    async def score(self, index: int) -> None:
        """Judge panel `index`'s finished answer in a worker thread, and record it for the export."""
        answer = self.answers[index]
        if answer.text:
            if self.evidence is None:
                self.evidence = asyncio.create_task(asyncio.to_thread(self._evidence))
            self.scores[index] = await asyncio.to_thread(
                self.judge.score, answer.text, domain=self.domain, question=self.question,
                citations=answer.citations, evidence=await self.evidence,
            )  # fmt: skip
        self.records[index] = panel_record(self.setups[index], answer, self.scores[index], self.prices)

    def _evidence(self) -> list[str]:
        try:
            return self.judge.evidence(self.domain, self.question)
        except RAGError:  # a broken knowledge base means no evidence, not a failed panel
            return []

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
        for panel, turns in self.hidden:
            updates |= {panel.chatbot: turns, panel.stats: "", panel.marks: None}
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
        count = int(count)
        inputs = [dict(zip(FIELDS, values[i * width : (i + 1) * width], strict=True)) for i in range(len(panels))]
        hidden = [(panel, given["history"] or []) for panel, given in zip(panels[count:], inputs[count:], strict=True)]
        try:
            base = await services.playground.base_model()
        except ServingError:
            base = ""  # the base-model panels then fail with the server's reason
        domain = services.content.domains.get(domain_name or "")
        run = Round(services, panels[:count], inputs[:count], base=base, question=question, domain=domain, last=last,
                    hidden=hidden)  # fmt: skip
        judging = [asyncio.create_task(run.score(index)) for index, answer in enumerate(run.answers) if answer.done]
        sent = run.sent
        setups = [setup for setup in run.setups if setup is not None]
        histories = [run.histories[i] for i in sent]
        shown_at, judged = 0.0, 0
        try:
            async for streamed in services.playground.answer(setups, histories, question, base=base):
                now = False
                for index, answer in zip(sent, streamed, strict=True):
                    if run.update(index, answer):
                        now = True
                        if answer.done:
                            judging.append(asyncio.create_task(run.score(index)))
                done_judging = sum(task.done() for task in judging)
                now |= done_judging > judged  # a term check is ready
                if now or time.monotonic() - shown_at >= UPDATE_EVERY_S:  # one render per interval, not per token
                    shown_at, judged = time.monotonic(), done_judging
                    yield run.view()
            await asyncio.gather(*judging)
        finally:  # Stop closes this generator: judges still running are not waited for
            for task in judging:
                task.cancel()
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
