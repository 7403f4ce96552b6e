"""The Gradio app: one file per tab, assembled here. The only package that imports gradio."""

from __future__ import annotations

import gradio as gr

from app.config import Settings
from app.rag import RAGStore
from app.serving import ServingClient
from app.ui import adapters_tab, compare

TITLE = "Adapter Arena"
INTRO = (
    "Does a fine-tuned LoRA adapter beat a persona prompt or RAG for your domain? Ask one question and compare the "
    "answers side by side. Answers come from a small demo model: they are demo material, not professional advice."
)


def build_app(settings: Settings, client: ServingClient, rag: RAGStore | None = None) -> gr.Blocks:
    """The whole UI, wired to `client` and the knowledge bases of `rag`; launch it with `demo.launch(...)`."""
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"# {TITLE}\n{INTRO}")
        with gr.Tab("Compare"):
            refresh_models = compare.render(settings, client, demo, rag or RAGStore(settings))
        with gr.Tab("Adapters"):
            for event in adapters_tab.render(settings, client, demo):
                event.success(**refresh_models)  # a loaded or unloaded adapter shows up in the panels' dropdowns
    # vLLM batches concurrent requests, so let many panels (and users) stream at once.
    demo.queue(default_concurrency_limit=32)
    return demo
