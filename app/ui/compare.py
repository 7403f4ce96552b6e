"""Compare tab: one question, 2–4 answer panels side by side, each streaming from its own Setup in parallel.

Presets set up the classic comparisons for a domain (app.setups.PRESETS). One event answers in every panel: the
Playground runs them concurrently and a failing panel never blocks the others (separate Gradio events for one
button would run one after another). Under each answer: speed, tokens and cost, the one judge's term check, and with
RAG the sources (app.ui.display). Each panel keeps its raw conversation in a `gr.State` for follow-ups.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from typing import Any

import gradio as gr

from app.comparison import to_markdown
from app.services import Services, status_line
from app.serving.client import ServingError
from app.setups import PRESETS
from app.ui.compare_round import answer_all_handler, mark_stopped
from app.ui.panel import PanelControls, build_panel
from app.ui.presets import Presets

MAX_PANELS = 4
HELP = (
    "Pick a **domain** and a **preset** (or set each panel yourself), then ask: all panels answer at once. "
    "Under each answer: speed, tokens, an estimated cost per 1,000 such answers, and the **term check** — "
    "glossary terms used correctly (green), misused terms and known-false claims (red), numbers and names that "
    "neither the knowledge base nor the reference supports (orange)."
)
Updates = dict[Any, Any]
SCROLL_TO_PANELS = "() => document.getElementById('panels')?.scrollIntoView({behavior: 'smooth', block: 'start'})"


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
        question = gr.Textbox(label="Your question", placeholder="Pick an example or type a question, then Enter",
                              lines=1, max_lines=6, scale=5, max_length=settings.ui.max_prompt_chars)  # fmt: skip
        with gr.Column(scale=1, min_width=140):
            send = gr.Button("Send to all", variant="primary")
            stop = gr.Button("Stop")
            clear = gr.Button("Clear")
    with gr.Row(equal_height=False, elem_id="panels"):
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
    Presets(services, status=status, count=count, example=example, question=question, panels=panels).wire(
        demo, domain, preset, apply
    )

    outputs = [*(p.chatbot for p in panels), *(p.stats for p in panels), *(p.marks for p in panels),
               *(p.citations for p in panels), *(p.history for p in panels), last]  # fmt: skip
    inputs = [question, domain, count, *(c for p in panels for c in p.inputs)]
    handler = answer_all_handler(services, panels, last)
    # At 1280x800 the panels start below the fold: bring them up. Registered before the answers' event because the
    # browser runs a trigger's listeners in order and waits for each one's stream to end before the next.
    for trigger in (send.click, question.submit):
        trigger(None, js=SCROLL_TO_PANELS)
    events: list[dict[str, Any]] = [
        send.click(handler, inputs=inputs, outputs=outputs, api_name="answer_all"),
        question.submit(handler, inputs=inputs, outputs=outputs, api_visibility="private"),
    ]
    chats = [p.chatbot for p in panels]
    stop.click(None, cancels=events).then(
        mark_stopped, inputs=[last, *chats], outputs=[last, *chats], api_name="compare_stop"
    )
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


def _exporter(render_record: Callable[[dict[str, Any]], str], suffix: str) -> Callable[[dict[str, Any]], Any]:
    def export(record: dict[str, Any]) -> Any:
        if not record:
            raise gr.Error("Nothing to export yet: ask a question first.")
        with tempfile.NamedTemporaryFile("w", suffix=suffix, prefix="comparison-", delete=False,
                                         encoding="utf-8") as file:  # fmt: skip
            file.write(render_record(record))
        return gr.File(value=file.name, visible=True)

    return export
