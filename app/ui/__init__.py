"""The Gradio app: one file per tab, assembled here. The only package that imports gradio."""

from __future__ import annotations

import gradio as gr

from app.arena.store import VoteStore
from app.config import Settings
from app.content import load_content
from app.rag import RAGStore
from app.serving.client import ServingClient
from app.ui import adapters_tab, arena_tab, compare, eval_tab, leaderboard_tab

TITLE = "Adapter Arena"
INTRO = (
    "Does a fine-tuned LoRA adapter beat a persona prompt or RAG for your domain? **Compare** answers side by side, "
    "vote blind in the **Arena** and see the **Leaderboard**, load or merge **Adapters**, and measure it all in "
    "**Eval**. Answers come from a small demo model: they are demo material, not professional advice."
)


def build_app(
    settings: Settings, client: ServingClient, rag: RAGStore | None = None, store: VoteStore | None = None
) -> gr.Blocks:
    """The whole UI, wired to `client`, the knowledge bases of `rag` and the arena votes of `store` (default: the
    database of settings.arena.database_url, else paths.data/arena.db); launch it with `demo.launch(...)`."""
    rag = rag or RAGStore(settings)
    store = store or VoteStore.from_settings(settings)
    paths = settings.paths
    content = load_content(paths.personas, paths.kb, paths.adapters, paths.evals)  # personas, glossaries, evals
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"# {TITLE}\n{INTRO}")
        with gr.Tab("Compare"):
            refresh_models = compare.render(settings, client, demo, rag, content)
        with gr.Tab("Arena"):
            arena = arena_tab.render(settings, client, demo, rag, store=store, content=content)
        with gr.Tab("Leaderboard") as leaderboard:
            refresh_leaderboard = leaderboard_tab.render(store, content)
        leaderboard.select(**refresh_leaderboard)
        for event in arena.votes:
            event.success(**refresh_leaderboard)
        with gr.Tab("Adapters"):
            for event in adapters_tab.render(settings, client, demo):
                event.success(**refresh_models)  # a loaded or unloaded adapter shows up in the panels' dropdowns
                event.success(**arena.refresh_pool)  # ... and in the arena's pool
        with gr.Tab("Eval"):
            eval_tab.render(settings, client, rag, content)
    # vLLM batches concurrent requests, so let many panels (and users) stream at once.
    demo.queue(default_concurrency_limit=32)
    return demo
