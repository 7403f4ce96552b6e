"""Compare tab: one question, 2–4 answer panels side by side, each streaming from its own Setup in parallel.

Presets set up the classic comparisons for a domain (app.setups.PRESETS). One event answers in every panel: the
Playground runs them concurrently and a failing panel never blocks the others (separate Gradio events for one
button would run one after another). Under each answer: speed, tokens and cost, the one judge's term check, and with
RAG the sources (app.ui.display). Each panel keeps its raw conversation in a `gr.State` for follow-ups.
"""

from __future__ import annotations

import asyncio
import json
import re
import tempfile
from collections.abc import AsyncIterator, Callable
from typing import Any

import gradio as gr

from app.comparison import comparison_record, panel_record, to_markdown
from app.content import Domain
from app.playground import PanelAnswer
from app.rag import ALL, RAGError
from app.scoring.judge import AnswerScores
from app.services import Services, status_line
from app.serving.client import ServingError
from app.setups import PRESETS, Setup
from app.ui.display import chat_turns, marked_html, shown_chat, stats_line
from app.ui.panel import FIELDS, NO_PERSONA, PanelControls, build_panel, panel_setup

MAX_PANELS = 4
HELP = (
    "Pick a **domain** and a **preset** (or set each panel yourself), then ask: all panels answer at once. "
    "Under each answer: speed, tokens, an estimated cost per 1,000 such answers, and the **term check** — "
    "glossary terms used correctly (green), misused terms and known-false claims (red), numbers and names that "
    "neither the knowledge base nor the reference supports (orange)."
)
Updates = dict[Any, Any]
CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # all but tab, newline, carriage return


def checked_prompt(text: str | None, limit: int, what: str = "prompt") -> str:
    """The user's text, stripped, without control characters or unpaired surrogates (which no tokenizer or HTTP
    body wants); gr.Error when it is empty or longer than ui.max_prompt_chars (checked here, on the server: a client
    can send anything)."""
    text = CONTROL_CHARACTERS.sub("", (text or "").encode("utf-8", "replace").decode("utf-8")).strip()
    if not text:
        raise gr.Error(f"Type a {what} first.")
    if len(text) > limit:
        raise gr.Error(f"Your {what} is {len(text):,} characters; the limit is {limit:,} (ui.max_prompt_chars). "
                       "Shorten it, or ask about one part at a time.")  # fmt: skip
    return text


def first_domain(services: Services) -> str | None:
    """The domain both the Compare and the Arena tab open on: ui.default_domain when it exists, else the first."""
    domains = list(services.content.domains)
    wanted = services.settings.ui.default_domain
    return wanted if wanted in domains else next(iter(domains), None)


def render(services: Services, demo: gr.Blocks) -> dict[str, Any]:
    """Build the tab inside the current Blocks context and wire its events.

    Returns the keyword arguments of an event listener that refreshes the models on offer (status line and
    dropdowns), for other tabs to chain after they load or unload an adapter.
    """
    settings, content = services.settings, services.content
    start = first_domain(services)
    gr.Markdown(HELP)
    status = gr.Markdown(status_line(services.client.base_url, None, "connecting ..."))
    with gr.Row(equal_height=True):
        domain = gr.Dropdown(list(content.domains), value=start, label="Domain", scale=1)
        preset = gr.Dropdown(list(PRESETS), value=next(iter(PRESETS)), label="Preset", scale=2)
        apply = gr.Button("Apply preset", scale=0, min_width=120)
        count = gr.Radio([2, 3, 4], value=settings.ui.panels, label="Panels", scale=1)
    example = gr.Dropdown(content.domains[start].examples if start else [], value=None, label="Example questions")
    with gr.Row():
        question = gr.Textbox(label="Your question", placeholder="Pick an example or type a question", lines=2,
                              scale=5, max_length=settings.ui.max_prompt_chars)  # fmt: skip
        with gr.Column(scale=1, min_width=140):
            send = gr.Button("Send to all", variant="primary")
            stop = gr.Button("Stop")
            clear = gr.Button("Clear")
    with gr.Row(equal_height=False):
        panels = [build_panel(i, settings, sorted(content.personas), services.rag.names()) for i in range(MAX_PANELS)]
    with gr.Row():
        export_md = gr.Button("Export Markdown", size="sm")
        export_json = gr.Button("Export JSON", size="sm")
    exported = gr.File(label="Exported comparison", visible=False)
    last = gr.State({})  # the last finished comparison, for export

    for controls in panels:
        controls.persona.change(
            lambda name: content.personas[name].system_prompt if name in content.personas else "",
            inputs=controls.persona, outputs=controls.system_prompt, api_visibility="private",
        )  # fmt: skip
    count.change(lambda n: [gr.Column(visible=i < n) for i in range(MAX_PANELS)], inputs=count,
                 outputs=[p.column for p in panels], api_visibility="private")  # fmt: skip
    example.change(lambda text: text or gr.skip(), inputs=example, outputs=question, api_visibility="private")

    models_outputs = [status, *(p.model for p in panels)]
    preset_outputs = [*models_outputs, count, example, question]
    for controls in panels:
        preset_outputs += [controls.persona, controls.system_prompt, controls.use_rag, controls.kb]
    preset_event: dict[str, Any] = {
        "fn": _preset_applier(services, status=status, count=count, example=example, question=question, panels=panels),
        "inputs": [domain, preset, question],
        "outputs": preset_outputs,
    }
    apply.click(**preset_event, api_name="apply_preset")
    domain.change(**preset_event, api_visibility="private")
    demo.load(**preset_event, api_visibility="private")

    outputs = [*(p.chatbot for p in panels), *(p.stats for p in panels), *(p.marks for p in panels),
               *(p.citations for p in panels), *(p.history for p in panels), last]  # fmt: skip
    inputs = [question, domain, count, *(c for p in panels for c in p.inputs)]
    handler = _answer_all(services, panels, last)
    events: list[dict[str, Any]] = [
        send.click(handler, inputs=inputs, outputs=outputs, api_name="answer_all"),
        question.submit(handler, inputs=inputs, outputs=outputs, api_visibility="private"),
    ]
    stop.click(None, cancels=events)
    clear.click(lambda: _cleared(panels, last), outputs=outputs, api_visibility="private")
    export_md.click(_exporter(to_markdown, ".md"), inputs=last, outputs=exported, api_name="export_markdown")
    export_json.click(_exporter(lambda r: json.dumps(r, indent=2, ensure_ascii=False), ".json"), inputs=last,
                      outputs=exported, api_name="export_json")  # fmt: skip
    gr.Timer(5).tick(services.status, outputs=status, api_name="status")  # restarts, recoveries, a server coming up
    refresh = _refresher(services, status, [p.model for p in panels])
    return {"fn": refresh, "inputs": [p.model for p in panels], "outputs": models_outputs, "api_visibility": "private"}


def _cleared(panels: list[PanelControls], last: gr.State) -> Updates:
    updates: Updates = {last: {}}
    for p in panels:
        updates.update({p.chatbot: [], p.history: [], p.stats: "", p.marks: None, p.citations: []})
    return updates


def _refresher(services: Services, status: gr.Markdown, dropdowns: list[gr.Dropdown]) -> Callable[..., Any]:
    client = services.client

    async def refresh(*current: str | None) -> Updates:
        """Status line and dropdown choices; each panel keeps its model if the server still serves it."""
        try:
            models = await client.list_models()
        except ServingError as exc:
            return {status: status_line(client.base_url, None, str(exc))}
        choices = [m.id for m in models]
        updates: Updates = {status: status_line(client.base_url, models)}
        for dropdown, value in zip(dropdowns, current, strict=True):
            updates[dropdown] = gr.Dropdown(choices=choices, value=value if value in choices else choices[0])
        return updates

    return refresh


def _preset_applier(
    services: Services,
    *,
    status: gr.Markdown,
    count: gr.Radio,
    example: gr.Dropdown,
    question: gr.Textbox,
    panels: list[PanelControls],
) -> Callable[..., Any]:
    client, content, kbs = services.client, services.content, services.rag.names()
    examples = {name: domain.examples for name, domain in content.domains.items()}
    known_examples = {text for texts in examples.values() for text in texts}

    async def apply_preset(domain_name: str | None, preset_name: str, current_question: str) -> Updates:
        """Set the panels to the preset's setups for the domain (an unserved adapter falls back to the base model)."""
        specs = PRESETS.get(preset_name) or next(iter(PRESETS.values()))
        try:
            models = await client.list_models()
        except ServingError as exc:
            return {status: status_line(client.base_url, None, str(exc))}
        served = [m.id for m in models]
        base = next((m.id for m in models if not m.is_adapter), "")
        domain = content.domains.get(domain_name or "")
        updates: Updates = {status: status_line(client.base_url, models), count: len(specs)}
        updates[example] = gr.Dropdown(choices=examples.get(domain_name or "", []), value=None)
        if domain and domain.examples and (not current_question or current_question in known_examples):
            updates[question] = domain.examples[0]  # an example of another domain is replaced too
        missing = set()
        for index, controls in enumerate(panels):
            setup = _preset_setup(specs[index % len(specs)], domain)
            if setup.adapter and setup.adapter not in served:
                missing.add(setup.adapter)
            persona = setup.persona if setup.persona in content.personas else NO_PERSONA
            updates[controls.model] = gr.Dropdown(choices=served, value=setup.adapter if setup.adapter in served
                                                  else base)  # fmt: skip
            updates[controls.persona] = persona
            updates[controls.system_prompt] = setup.system_text(content.personas) or ""
            updates[controls.use_rag] = bool(setup.rag)
            updates[controls.kb] = setup.rag if setup.rag in kbs else ALL
        if missing:
            gr.Warning(f"No adapter named {', '.join(sorted(missing))} is served: those panels use the base model.")
        return updates

    return apply_preset


def _preset_setup(spec: str, domain: Domain | None) -> Setup:
    """The preset's Setup for the domain; without a domain (or its knowledge base) the parts it lacks are left out."""
    if domain is None:
        return Setup()
    if "rag" in spec and domain.knowledge_base is None:
        spec = spec.replace("+rag", "")
    return Setup.parse(spec, domain)


def _exporter(render_record: Callable[[dict[str, Any]], str], suffix: str) -> Callable[[dict[str, Any]], Any]:
    def export(record: dict[str, Any]) -> Any:
        if not record:
            raise gr.Error("Nothing to export yet: ask a question first.")
        with tempfile.NamedTemporaryFile("w", suffix=suffix, prefix="comparison-", delete=False,
                                         encoding="utf-8") as file:  # fmt: skip
            file.write(render_record(record))
        return gr.File(value=file.name, visible=True)

    return export


class _Round:
    """One question in the shown panels: their Setups, answers, scores and export records as they come in."""

    def __init__(self, services: Services, panels: list[PanelControls], inputs: list[dict[str, Any]], *, base: str,
                 question: str, domain: Domain | None) -> None:  # fmt: skip
        settings, self.judge = services.settings, services.judge
        self.prices = (settings.ui.price_in_per_mtok, settings.ui.price_out_per_mtok)
        self.panels, self.question, self.domain = panels, question, domain
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

    def view(self) -> Updates:
        updates: Updates = {}
        for index, (panel, answer) in enumerate(zip(self.panels, self.answers, strict=True)):
            score = self.scores[index]
            updates[panel.chatbot] = shown_chat(self.histories[index], self.question, answer)
            updates[panel.stats] = stats_line(answer, self.prices) if answer.done else ""
            updates[panel.marks] = marked_html(answer.text, score) if score else None
            updates[panel.citations] = answer.citations
        return updates

    def final(self, last: gr.State) -> Updates:
        """The last view, the conversations with this turn (answered panels only) and the record to export."""
        updates = self.view()
        for index, (panel, answer) in enumerate(zip(self.panels, self.answers, strict=True)):
            if answer.error is None:
                updates[panel.history] = chat_turns(self.histories[index], self.question, answer)
        updates[last] = comparison_record(self.question, [record for record in self.records if record is not None])
        return updates


def _answer_all(services: Services, panels: list[PanelControls], last: gr.State) -> Callable[..., Any]:
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
        run = _Round(services, shown, inputs, base=base, question=question, domain=domain)
        for index, answer in enumerate(run.answers):
            if answer.done:
                await run.update(index, answer)
        sent = run.sent
        setups = [setup for setup in run.setups if setup is not None]
        async for streamed in services.playground.answer(setups, [run.histories[i] for i in sent], question):
            for index, answer in zip(sent, streamed, strict=True):
                await run.update(index, answer)
            yield run.view()
        yield run.final(last)

    return answer_all
