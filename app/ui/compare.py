"""Compare tab: one question, several answer panels side by side, each streaming from its own model in parallel.

Each panel is its own Gradio event, so panels stream concurrently and a failing panel never blocks the others.
Model output is untrusted: it is HTML-escaped before display and Markdown is rendered sanitised.
"""

from __future__ import annotations

import html
from collections.abc import AsyncIterator
from typing import Any

import gradio as gr

from app.config import Settings
from app.prompts import build_messages, message_text
from app.serving import ModelInfo, ServingClient, ServingError

History = list[dict[str, Any]]


def _for_display(text: str) -> str:
    """Show model text as text: `<script>` appears literally instead of being parsed as HTML."""
    return html.escape(text, quote=False)


def _from_display(history: History) -> History:
    return [{"role": turn["role"], "content": html.unescape(message_text(turn["content"]))} for turn in history]


def status_line(base_url: str, models: list[ModelInfo] | None, error: str | None = None) -> str:
    if error:
        return f"**Server** `{base_url}` — ⚠️ {_for_display(error)}"
    adapters = [m.id for m in models or [] if m.is_adapter]
    names = ", ".join(f"`{_for_display(name)}`" for name in adapters) or "none loaded"
    return f"**Server** `{base_url}` — base model and {len(adapters)} adapter(s): {names}"


def default_choice(models: list[ModelInfo], panel: int) -> str | None:
    """Panel 0 shows the base model; later panels show the adapters in turn, so a first look is a comparison."""
    if not models:
        return None
    adapters = [m.id for m in models if m.is_adapter]
    if panel == 0 or not adapters:
        return models[0].id
    return adapters[(panel - 1) % len(adapters)]


def render(settings: Settings, client: ServingClient, demo: gr.Blocks) -> None:
    """Build the tab inside the current Blocks context and wire its events."""
    status = gr.Markdown(status_line(client.base_url, None, "connecting ..."))
    with gr.Row():
        question = gr.Textbox(
            label="Your question",
            placeholder="e.g. What is the difference between angina and a heart attack?",
            lines=2,
            scale=5,
        )
        with gr.Column(scale=1, min_width=140):
            send = gr.Button("Send to all", variant="primary")
            stop = gr.Button("Stop")
            clear = gr.Button("Clear")
    dropdowns: list[gr.Dropdown] = []
    chatbots: list[gr.Chatbot] = []
    events = []
    with gr.Row(equal_height=True):
        for index in range(settings.ui.panels):
            with gr.Column(min_width=260):
                model = gr.Dropdown(
                    label=f"Panel {index + 1} model", choices=[], interactive=True, allow_custom_value=True
                )
                chatbot = gr.Chatbot(
                    label=f"Panel {index + 1}",
                    height=420,
                    sanitize_html=True,
                    allow_tags=False,
                    buttons=["copy", "copy_all"],
                )
                with gr.Accordion("Sampling", open=False):
                    temperature = gr.Slider(0.0, 1.5, value=0.7, step=0.05, label="Temperature")
                    max_tokens = gr.Slider(
                        16, settings.ui.max_tokens * 4, value=settings.ui.max_tokens, step=16, label="Max tokens"
                    )
            dropdowns.append(model)
            chatbots.append(chatbot)
            for trigger in (send.click, question.submit):
                events.append(trigger(
                    _panel_handler(client), inputs=[question, model, chatbot, temperature, max_tokens],
                    outputs=chatbot, api_name=f"answer_{index}" if trigger == send.click else False,
                ))  # fmt: skip

    stop.click(None, cancels=events)
    clear.click(lambda: [[] for _ in chatbots], outputs=chatbots, api_name=False)

    async def refresh() -> dict[gr.components.Component, Any]:
        try:
            models = await client.list_models()
        except ServingError as exc:
            return {status: status_line(client.base_url, None, str(exc))}
        choices = [m.id for m in models]
        updates: dict[gr.components.Component, Any] = {status: status_line(client.base_url, models)}
        for index, dropdown in enumerate(dropdowns):
            updates[dropdown] = gr.Dropdown(choices=choices, value=default_choice(models, index))
        return updates

    demo.load(refresh, outputs=[status, *dropdowns], api_name="refresh_models")


def _panel_handler(client: ServingClient):
    async def answer(
        question: str, model: str | None, history: History, temperature: float, max_tokens: float
    ) -> AsyncIterator[History]:
        """Stream one panel's answer into its chat, turning any failure into a message in that panel only."""
        question = (question or "").strip()
        if not question:
            gr.Warning("Type a question first.")
            yield history
            return
        history = _from_display(history)
        messages = build_messages(None, history, question)
        shown = [*history, {"role": "user", "content": question}, {"role": "assistant", "content": ""}]
        shown = [{"role": t["role"], "content": _for_display(t["content"])} for t in shown]
        if not model:
            shown[-1]["content"] = "⚠️ No model selected: is the server up? Pick a model in this panel's dropdown."
            yield shown
            return
        text = ""
        try:
            async for delta in client.stream_chat(model, messages, temperature=temperature, max_tokens=int(max_tokens)):
                text += delta.text
                shown[-1]["content"] = _for_display(text)
                yield shown
        except ServingError as exc:
            shown[-1]["content"] = _for_display(f"{text}\n\n⚠️ {exc}".strip())
            yield shown

    return answer
