"""Compare tab: one question, 2–4 answer panels side by side, each streaming from its own setup in parallel.

Each panel picks a model (the base model or any served adapter), a persona (or none, or an edited system prompt),
RAG on/off with a knowledge base, and sampling. Presets set up the classic comparisons for a domain. One event
answers in every panel: app.playground runs them concurrently and a failing panel never blocks the others
(separate Gradio events for one button would run one after another). Under each answer: speed, tokens and cost
(app.playground), the term check (app.scoring: glossary terms, misuses, false and unsupported claims), and with RAG
the sources. Model output and KB text are untrusted: they are HTML-escaped before display (KB text
Markdown-escaped too), Markdown is rendered sanitised, and the term check is shown as plain highlighted text.
"""

from __future__ import annotations

import asyncio
import html
import json
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import gradio as gr

from app.comparison import comparison_record, panel_record, to_markdown
from app.config import Settings
from app.configuration import PRESETS, Configuration, PanelConfig
from app.content import Content, EvalItem, Persona
from app.playground import PanelAnswer, answer_panels
from app.prompts import message_text
from app.rag import ALL, Citation, RAGError, RAGStore, embeddings
from app.report import md_text
from app.scoring import FALSE_CLAIM, MISUSE, TERM, UNSUPPORTED, AnswerScores, highlight, score_answer
from app.serving.client import ModelInfo, ServingClient, ServingError

History = list[dict[str, Any]]
MAX_PANELS = 4
NO_PERSONA = "none"
DEFAULT_DOMAIN = "medical"
EXAMPLES_PER_DOMAIN = 6
MARK_COLORS = {TERM: "#c8f7c5", MISUSE: "#ffc9c9", FALSE_CLAIM: "#ffc9c9", UNSUPPORTED: "#ffe3b3"}
HELP = (
    "Pick a **domain** and a **preset** (or set each panel yourself), then ask: all panels answer at once. "
    "Under each answer: speed, tokens, an estimated cost per 1,000 such answers, and the **term check** — "
    "glossary terms used correctly (green), misused terms and known-false claims (red), numbers and names that "
    "neither the knowledge base nor the reference supports (orange)."
)


def _for_display(text: str) -> str:
    """Show model text as text: `<script>` appears literally instead of being parsed as HTML."""
    return html.escape(text, quote=False)


def sources_markdown(citations: Sequence[Citation]) -> tuple[str, str]:
    """The sources list ([n] title — source — score) and the retrieved passages, both escaped."""
    if not citations:
        return "", ""
    listing = "\n".join(
        f"- **\\[{n}\\]** {md_text(c.title)} — {md_text(c.source or c.path)} — score {c.score:.2f}"
        for n, c in enumerate(citations, 1)
    )
    passages = "\n\n".join(
        f"**\\[{n}\\] {md_text(c.title)}**{' — ' + md_text(c.heading) if c.heading else ''} ({md_text(c.path)})\n\n"
        + "\n".join(f"> {md_text(line)}" for line in c.text.splitlines())
        for n, c in enumerate(citations, 1)
    )
    return f"**Sources**\n\n{listing}", passages


def _from_display(history: History) -> History:
    return [{"role": turn["role"], "content": html.unescape(message_text(turn["content"]))} for turn in history]


def status_line(base_url: str, models: list[ModelInfo] | None, error: str | None = None) -> str:
    if error:
        return f"**Server** `{base_url}` — ⚠️ {_for_display(error)}"
    adapters = [m.id for m in models or [] if m.is_adapter]
    names = ", ".join(f"`{_for_display(name)}`" for name in adapters) or "none loaded"
    return f"**Server** `{base_url}` — base model and {len(adapters)} adapter(s): {names}"


def stats_line(answer: PanelAnswer, prices: tuple[float, float]) -> str:
    """Time to first token, speed, token counts and cost of a finished answer."""
    if answer.first_token_s is None:
        return ""
    parts = [f"first token {answer.first_token_s:.1f} s"]
    if answer.tokens_per_s is not None:
        parts.append(f"{answer.tokens_per_s:.0f} tokens/s")
    if answer.prompt_tokens is not None:
        parts.append(f"{answer.prompt_tokens} tokens in / {answer.completion_tokens} out")
    cost = answer.cost_per_1k_answers(*prices)
    if cost is not None:
        parts.append(f"≈ ${cost:.3f} per 1k answers")
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
    return (
        f'<div class="term-check"><p><strong>{html.escape(scores_label(scores))}</strong> {legend}</p>'
        f'<p style="white-space:pre-wrap">{pieces}</p></div>'
    )


def shown_chat(history: History, question: str, answer: PanelAnswer) -> History:
    """The panel's chat as displayed: earlier turns, the question, the answer so far (and its error), escaped."""
    text = f"{answer.text}\n\n⚠️ {answer.error}".strip() if answer.error else answer.text
    turns = [*history, {"role": "user", "content": question}, {"role": "assistant", "content": text}]
    return [{"role": turn["role"], "content": _for_display(turn["content"])} for turn in turns]


class PanelValues(NamedTuple):
    """One panel's inputs to the answer event, in `PanelControls.inputs` order."""

    model: str | None
    chat: History | None
    persona: str | None
    system_prompt: str | None
    temperature: float
    top_p: float
    max_tokens: float
    seed: float | None
    rag: bool
    kb: str | None

    def config(self) -> PanelConfig:
        return PanelConfig(
            model=self.model,
            system_prompt=(self.system_prompt or "").strip() or None,
            kb=(self.kb or ALL) if self.rag else None,
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=int(self.max_tokens),
            seed=None if self.seed is None else int(self.seed),
        )

    def setup(self, personas: dict[str, Persona]) -> dict[str, Any]:
        """The panel as the user set it, for export; the label says whether the system prompt was edited."""
        config = self.config()
        persona = personas.get(self.persona or "")
        if persona and config.system_prompt == persona.system_prompt:
            prompt = f"{persona.name} persona"
        else:
            prompt = "custom prompt" if config.system_prompt else None
        label = " + ".join(part for part in (self.model, prompt, config.kb and f"RAG({config.kb})") if part)
        return {"label": label, "model": self.model, "persona": self.persona if persona else None,
                "system_prompt": config.system_prompt, "rag": config.kb, "temperature": config.temperature,
                "top_p": config.top_p, "max_tokens": config.max_tokens, "seed": config.seed}  # fmt: skip


@dataclass
class PanelControls:
    """The components of one answer panel."""

    column: gr.Column
    model: gr.Dropdown
    persona: gr.Dropdown
    system_prompt: gr.Textbox
    temperature: gr.Slider
    top_p: gr.Slider
    max_tokens: gr.Slider
    seed: gr.Number
    use_rag: gr.Checkbox
    kb: gr.Dropdown
    chatbot: gr.Chatbot
    stats: gr.Markdown
    marks: gr.HTML
    citations: gr.State

    @property
    def inputs(self) -> list[gr.components.Component]:
        return [self.model, self.chatbot, self.persona, self.system_prompt, self.temperature, self.top_p,
                self.max_tokens, self.seed, self.use_rag, self.kb]  # fmt: skip


def _panel(index: int, settings: Settings, persona_names: list[str], kb_names: list[str]) -> PanelControls:
    with gr.Column(min_width=280, visible=index < settings.ui.panels) as column:
        model = gr.Dropdown(label=f"Panel {index + 1} model", choices=[], interactive=True, allow_custom_value=True)
        with gr.Row():
            persona = gr.Dropdown([NO_PERSONA, *persona_names], value=NO_PERSONA, label="Persona", min_width=120)
            use_rag = gr.Checkbox(label="RAG", value=False, min_width=70, scale=0)
            kb = gr.Dropdown(kb_names, value=ALL if ALL in kb_names else None, label="Knowledge base", min_width=110)
        with gr.Accordion("System prompt and sampling", open=False):
            system_prompt = gr.Textbox(label="System prompt (edit it for a custom one)", lines=4)
            temperature = gr.Slider(0.0, 1.5, value=0.7, step=0.05, label="Temperature")
            top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Top-p")
            max_tokens = gr.Slider(16, settings.ui.max_tokens * 4, value=settings.ui.max_tokens, step=16,
                                   label="Max tokens")  # fmt: skip
            seed = gr.Number(label="Seed (blank = random)", precision=0)
        chatbot = gr.Chatbot(label=f"Panel {index + 1}", height=380, sanitize_html=True, allow_tags=False,
                             buttons=["copy", "copy_all"])  # fmt: skip
        stats = gr.Markdown()
        marks = gr.HTML(label="Term check")
        citations = gr.State([])
        sources = gr.Markdown()
        with gr.Accordion("Retrieved passages", open=False):
            passages = gr.Markdown()
        citations.change(sources_markdown, inputs=citations, outputs=[sources, passages], api_name=False)
    return PanelControls(column, model, persona, system_prompt, temperature, top_p, max_tokens, seed, use_rag, kb,
                         chatbot, stats, marks, citations)  # fmt: skip


def render(
    settings: Settings, client: ServingClient, demo: gr.Blocks, rag: RAGStore, content: Content
) -> dict[str, Any]:
    """Build the tab inside the current Blocks context and wire its events.

    Returns the keyword arguments of an event listener that refreshes the models on offer (status line and
    dropdowns), for other tabs to chain after they load or unload an adapter.
    """
    personas = content.personas
    domains = content.domains
    examples = {domain: [item.question for item in items[:EXAMPLES_PER_DOMAIN]] for domain, items in
                content.evals.items()}  # fmt: skip
    first_domain = DEFAULT_DOMAIN if DEFAULT_DOMAIN in domains else (domains or [None])[0]
    prices = (settings.ui.price_in_per_mtok, settings.ui.price_out_per_mtok)

    gr.Markdown(HELP)
    status = gr.Markdown(status_line(client.base_url, None, "connecting ..."))
    with gr.Row(equal_height=True):
        domain = gr.Dropdown(domains, value=first_domain, label="Domain", scale=1)
        preset = gr.Dropdown(list(PRESETS), value=next(iter(PRESETS)), label="Preset", scale=2)
        apply = gr.Button("Apply preset", scale=0, min_width=120)
        count = gr.Radio([2, 3, 4], value=settings.ui.panels, label="Panels", scale=1)
    example = gr.Dropdown(examples.get(first_domain or "", []), value=None, label="Example questions",
                          allow_custom_value=False)  # fmt: skip
    with gr.Row():
        question = gr.Textbox(label="Your question", placeholder="Pick an example or type a question", lines=2,
                              scale=5)  # fmt: skip
        with gr.Column(scale=1, min_width=140):
            send = gr.Button("Send to all", variant="primary")
            stop = gr.Button("Stop")
            clear = gr.Button("Clear")
    with gr.Row(equal_height=False):
        panels = [_panel(i, settings, sorted(personas), rag.names()) for i in range(MAX_PANELS)]
    with gr.Row():
        export_md = gr.Button("Export Markdown", size="sm")
        export_json = gr.Button("Export JSON", size="sm")
    exported = gr.File(label="Exported comparison", visible=False)
    last = gr.State({})  # the last finished comparison, for export

    for controls in panels:
        controls.persona.change(
            lambda name: personas[name].system_prompt if name in personas else "",
            inputs=controls.persona, outputs=controls.system_prompt, api_name=False,
        )  # fmt: skip
    count.change(lambda n: [gr.Column(visible=i < n) for i in range(MAX_PANELS)], inputs=count,
                 outputs=[p.column for p in panels], api_name=False)  # fmt: skip
    example.change(lambda text: text or gr.skip(), inputs=example, outputs=question, api_name=False)

    models_outputs = [status, *(p.model for p in panels)]

    refresh = _refresher(client, status, [p.model for p in panels])

    preset_outputs = [*models_outputs, count, example, question]
    for controls in panels:
        preset_outputs += [controls.persona, controls.system_prompt, controls.use_rag, controls.kb]

    apply_preset = _preset_applier(
        settings=settings, client=client, rag=rag, personas=personas, examples=examples, status=status, count=count,
        example=example, question=question, panels=panels,
    )  # fmt: skip

    preset_event = {"fn": apply_preset, "inputs": [domain, preset, question], "outputs": preset_outputs}
    apply.click(**preset_event, api_name="apply_preset")
    domain.change(**preset_event, api_name=False)
    demo.load(**preset_event, api_name=False)

    outputs = [*(p.chatbot for p in panels), *(p.stats for p in panels), *(p.marks for p in panels),
               *(p.citations for p in panels), last]  # fmt: skip
    inputs = [question, domain, count, *(c for p in panels for c in p.inputs)]
    handler = _answer_all(client, rag, content, prices)
    events = [
        send.click(handler, inputs=inputs, outputs=outputs, api_name="answer_all"),
        question.submit(handler, inputs=inputs, outputs=outputs, api_name=False),
    ]
    stop.click(None, cancels=events)
    clear.click(lambda: [[]] * MAX_PANELS * 2 + [""] * MAX_PANELS + [None] * MAX_PANELS + [{}],
                outputs=[*(p.chatbot for p in panels), *(p.citations for p in panels), *(p.stats for p in panels),
                         *(p.marks for p in panels), last], api_name=False)  # fmt: skip
    export_md.click(_exporter(to_markdown, ".md"), inputs=last, outputs=exported, api_name="export_markdown")
    export_json.click(_exporter(lambda r: json.dumps(r, indent=2, ensure_ascii=False), ".json"), inputs=last,
                      outputs=exported, api_name="export_json")  # fmt: skip
    return {"fn": refresh, "inputs": [p.model for p in panels], "outputs": models_outputs, "api_name": False}


def _refresher(client: ServingClient, status: gr.Markdown, dropdowns: list[gr.Dropdown]) -> Callable[..., Any]:
    async def refresh(*current: str | None) -> dict[gr.components.Component, Any]:
        """Status line and dropdown choices; each panel keeps its model if the server still serves it."""
        try:
            models = await client.list_models()
        except ServingError as exc:
            return {status: status_line(client.base_url, None, str(exc))}
        choices = [m.id for m in models]
        updates: dict[gr.components.Component, Any] = {status: status_line(client.base_url, models)}
        for dropdown, value in zip(dropdowns, current, strict=True):
            updates[dropdown] = gr.Dropdown(choices=choices, value=value if value in choices else choices[0])
        return updates

    return refresh


def _preset_applier(
    *,
    settings: Settings,
    client: ServingClient,
    rag: RAGStore,
    personas: dict[str, Persona],
    examples: dict[str, list[str]],
    status: gr.Markdown,
    count: gr.Radio,
    example: gr.Dropdown,
    question: gr.Textbox,
    panels: list[PanelControls],
) -> Callable[..., Any]:
    async def apply_preset(domain_name: str | None, preset_name: str, current_question: str) -> dict[Any, Any]:
        """Set the panels to the preset's configurations for the domain (an unserved adapter falls back to base)."""
        specs = PRESETS.get(preset_name) or next(iter(PRESETS.values()))
        try:
            models = await client.list_models()
        except ServingError as exc:
            return {status: status_line(client.base_url, None, str(exc))}
        served = [m.id for m in models]
        base = served[0] if served else settings.model.served_name
        updates: dict[Any, Any] = {status: status_line(client.base_url, models), count: len(specs)}
        updates[example] = gr.Dropdown(choices=examples.get(domain_name or "", []), value=None)
        known_examples = {text for texts in examples.values() for text in texts}
        if examples.get(domain_name or "") and (not current_question or current_question in known_examples):
            updates[question] = examples[domain_name or ""][0]  # an example of another domain is replaced too
        missing = set()
        for index, controls in enumerate(panels):
            config = Configuration.for_domain(specs[index % len(specs)], domain_name) if domain_name else None
            if config and config.adapter and config.adapter not in served:
                missing.add(config.adapter)
            persona = config.persona if config and config.persona in personas else NO_PERSONA
            updates[controls.model] = gr.Dropdown(
                choices=served, value=config.adapter if config and config.adapter in served else base
            )
            updates[controls.persona] = persona
            updates[controls.system_prompt] = personas[persona].system_prompt if persona in personas else ""
            updates[controls.use_rag] = bool(config and config.rag)
            updates[controls.kb] = config.rag if config and config.rag in rag.names() else ALL
        if missing:
            gr.Warning(f"No adapter named {', '.join(sorted(missing))} is served: those panels use the base model.")
        return updates

    return apply_preset


def _exporter(render_record: Callable[[dict[str, Any]], str], suffix: str) -> Callable[[dict[str, Any]], Any]:
    def export(record: dict[str, Any]) -> Any:
        if not record:
            raise gr.Error("Nothing to export yet: ask a question first.")
        with tempfile.NamedTemporaryFile("w", suffix=suffix, prefix="comparison-", delete=False,
                                         encoding="utf-8") as file:  # fmt: skip
            file.write(render_record(record))
        return gr.File(value=file.name, visible=True)

    return export


def _eval_items(content: Content) -> dict[str, EvalItem]:
    """Eval items by normalised question: asking one (e.g. an example) brings its expected terms and false claims."""
    return {_normalised(item.question): item for items in content.evals.values() for item in items}


def _normalised(text: str) -> str:
    return " ".join(text.lower().split())


def _answer_all(
    client: ServingClient, rag: RAGStore, content: Content, prices: tuple[float, float]
) -> Callable[..., AsyncIterator[list[Any]]]:
    items = _eval_items(content)
    fields = len(PanelValues._fields)

    async def evidence_for(domain: str | None, question: str) -> list[str]:
        """What the term check may treat as known facts: passages of the domain's KB for the question."""
        if not domain or domain not in rag.names():
            return []
        try:
            return [c.text for c in await asyncio.to_thread(rag.retrieve, domain, question)]
        except RAGError:
            return []

    def score(values: PanelValues, answer: PanelAnswer, question: str, domain: str | None, evidence: list[str]
              ) -> AnswerScores:  # fmt: skip
        persona = content.personas.get(values.persona or "")
        judge = persona if persona and persona.domain else content.personas.get(domain or "")
        item = items.get(_normalised(question))
        context = [c.text for c in answer.citations]
        return score_answer(
            answer.text, question=question, item=item, persona=judge, context=context, evidence=evidence,
            embed=embeddings().embed_documents if context else None, check_voice=judge is not None,
        )  # fmt: skip

    async def answer_all(question: str, domain: str | None, count: int, *values: Any) -> AsyncIterator[list[Any]]:
        """Stream the first `count` panels' answers to `question`; `values` holds each panel's inputs in order."""
        question = (question or "").strip()
        if not question:
            raise gr.Error("Type a question first.")
        panels = [PanelValues(*values[i : i + fields]) for i in range(0, len(values), fields)][: int(count)]
        histories = [_from_display(p.chat or []) for p in panels]
        hidden = [gr.skip()] * (MAX_PANELS - len(panels))
        marks: list[Any] = [None] * len(panels)
        evidence: list[str] | None = None
        records: list[dict[str, Any]] = [{}] * len(panels)
        async for answers in answer_panels(client, rag, [p.config() for p in panels], histories, question):
            for index, answer in enumerate(answers):
                if answer.done and not records[index]:
                    if evidence is None:
                        evidence = await evidence_for(domain, question)
                    scores = None
                    if answer.text:
                        scores = await asyncio.to_thread(score, panels[index], answer, question, domain, evidence)
                        marks[index] = marked_html(answer.text, scores)
                    records[index] = panel_record(panels[index].setup(content.personas), answer, scores, prices)
            chats = [shown_chat(h, question, a) for h, a in zip(histories, answers, strict=True)]
            done = all(records)
            yield [
                *chats, *hidden,
                *(stats_line(a, prices) if a.done else "" for a in answers), *hidden,
                *marks, *hidden,
                *(a.citations for a in answers), *hidden,
                comparison_record(question, records) if done else gr.skip(),
            ]  # fmt: skip

    return answer_all
