"""Compare tab: one question, several answer panels side by side, each streaming from its own model in parallel.

One event answers in every panel: app.playground runs the panels concurrently and a failing panel never blocks the
others (separate Gradio events for one button run one after another in the browser). A panel with "RAG" ticked
first retrieves from its knowledge base (app.rag, in a worker thread), answers from that
context and lists its sources under the answer. Model output and KB text are untrusted: they are HTML-escaped
before display (KB text Markdown-escaped too) and Markdown is rendered sanitised.
"""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import gradio as gr

from app.config import Settings
from app.playground import PanelAnswer, PanelConfig, answer_panels
from app.prompts import message_text
from app.rag import ALL, Citation, RAGStore
from app.serving import ModelInfo, ServingClient, ServingError

History = list[dict[str, Any]]


def _for_display(text: str) -> str:
    """Show model text as text: `<script>` appears literally instead of being parsed as HTML."""
    return html.escape(text, quote=False)


def _literal(text: str) -> str:
    """KB text shown as plain text in Markdown: no HTML, no links or images, no formatting."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|~>])", r"\\\1", html.escape(text, quote=False))


def sources_markdown(citations: Sequence[Citation]) -> tuple[str, str]:
    """The sources list ([n] title — source — score) and the retrieved passages, both escaped."""
    if not citations:
        return "", ""
    listing = "\n".join(
        f"- **\\[{n}\\]** {_literal(c.title)} — {_literal(c.source or c.path)} — score {c.score:.2f}"
        for n, c in enumerate(citations, 1)
    )
    passages = "\n\n".join(
        f"**\\[{n}\\] {_literal(c.title)}**{' — ' + _literal(c.heading) if c.heading else ''} ({_literal(c.path)})\n\n"
        + "\n".join(f"> {_literal(line)}" for line in c.text.splitlines())
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


def default_choice(models: list[ModelInfo], panel: int) -> str | None:
    """Panel 0 shows the base model; later panels show the adapters in turn, so a first look is a comparison."""
    if not models:
        return None
    adapters = [m.id for m in models if m.is_adapter]
    if panel == 0 or not adapters:
        return models[0].id
    return adapters[(panel - 1) % len(adapters)]


PANEL_INPUTS = 6  # per panel: model, chat, temperature, max tokens, RAG on, knowledge base


def stats_line(answer: PanelAnswer) -> str:
    """Time to first token, speed and token counts of a finished answer."""
    if answer.first_token_s is None:
        return ""
    parts = [f"first token {answer.first_token_s:.1f} s"]
    if answer.completion_tokens and answer.elapsed_s > answer.first_token_s:
        parts.append(f"{answer.completion_tokens / (answer.elapsed_s - answer.first_token_s):.0f} tokens/s")
    if answer.prompt_tokens is not None:
        parts.append(f"{answer.prompt_tokens} tokens in / {answer.completion_tokens} out")
    return " · ".join(parts)


def shown_chat(history: History, question: str, answer: PanelAnswer) -> History:
    """The panel's chat as displayed: earlier turns, the question, the answer so far (and its error), escaped."""
    text = f"{answer.text}\n\n⚠️ {answer.error}".strip() if answer.error else answer.text
    turns = [*history, {"role": "user", "content": question}, {"role": "assistant", "content": text}]
    return [{"role": turn["role"], "content": _for_display(turn["content"])} for turn in turns]


def render(settings: Settings, client: ServingClient, demo: gr.Blocks, rag: RAGStore) -> dict[str, Any]:
    """Build the tab inside the current Blocks context and wire its events.

    Returns the keyword arguments of an event listener that refreshes the models on offer (status line and
    dropdowns), for other tabs to chain after they load or unload an adapter.
    """
    kb_names = rag.names()
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
    cited: list[gr.State] = []
    stats: list[gr.Markdown] = []
    panel_inputs: list[gr.components.Component] = []
    with gr.Row(equal_height=True):
        for index in range(settings.ui.panels):
            with gr.Column(min_width=260):
                model = gr.Dropdown(
                    label=f"Panel {index + 1} model", choices=[], interactive=True, allow_custom_value=True
                )
                with gr.Row():
                    use_rag = gr.Checkbox(label="RAG", value=False, min_width=80, scale=0)
                    kb = gr.Dropdown(
                        label="Knowledge base",
                        choices=kb_names,
                        value=ALL if ALL in kb_names else None,
                        interactive=True,
                        scale=2,
                    )
                chatbot = gr.Chatbot(
                    label=f"Panel {index + 1}",
                    height=420,
                    sanitize_html=True,
                    allow_tags=False,
                    buttons=["copy", "copy_all"],
                )
                stat = gr.Markdown()
                citations = gr.State([])
                sources = gr.Markdown()
                with gr.Accordion("Retrieved passages", open=False):
                    passages = gr.Markdown()
                with gr.Accordion("Sampling", open=False):
                    temperature = gr.Slider(0.0, 1.5, value=0.7, step=0.05, label="Temperature")
                    max_tokens = gr.Slider(
                        16, settings.ui.max_tokens * 4, value=settings.ui.max_tokens, step=16, label="Max tokens"
                    )
            dropdowns.append(model)
            chatbots.append(chatbot)
            cited.append(citations)
            stats.append(stat)
            panel_inputs += [model, chatbot, temperature, max_tokens, use_rag, kb]
            citations.change(sources_markdown, inputs=citations, outputs=[sources, passages], api_name=False)

    # The citations States are left out of the API: `answer_all` returns the chats and the stats lines.
    outputs = [*chatbots, *stats, *cited]
    handler = _answer_all(client, rag)
    events = [
        send.click(handler, inputs=[question, *panel_inputs], outputs=outputs, api_name="answer_all"),
        question.submit(handler, inputs=[question, *panel_inputs], outputs=outputs, api_name=False),
    ]
    stop.click(None, cancels=events)
    clear.click(lambda: [[] for _ in chatbots + cited] + [""] * len(stats), outputs=[*chatbots, *cited, *stats],
                api_name=False)  # fmt: skip

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
    return {"fn": refresh, "outputs": [status, *dropdowns], "api_name": False}


def _answer_all(client: ServingClient, rag: RAGStore) -> Callable[..., AsyncIterator[list[Any]]]:
    async def answer_all(question: str, *values: Any) -> AsyncIterator[list[Any]]:
        """Stream every panel's answer to `question`; `values` holds PANEL_INPUTS values per panel, in order."""
        question = (question or "").strip()
        if not question:
            raise gr.Error("Type a question first.")
        panels = [values[i : i + PANEL_INPUTS] for i in range(0, len(values), PANEL_INPUTS)]
        configs = [
            PanelConfig(model=model, kb=(kb or ALL) if use_rag else None, temperature=temp, max_tokens=int(tokens))
            for model, _, temp, tokens, use_rag, kb in panels
        ]
        histories = [_from_display(chat or []) for _, chat, *_ in panels]
        async for answers in answer_panels(client, rag, configs, histories, question):
            chats = [shown_chat(h, question, a) for h, a in zip(histories, answers, strict=True)]
            yield [*chats, *(stats_line(a) if a.done else "" for a in answers), *(a.citations for a in answers)]

    return answer_all
