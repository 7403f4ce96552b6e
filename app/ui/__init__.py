"""The Gradio app: one file per tab, assembled here. The only package that imports gradio."""

from __future__ import annotations

from typing import Any

import gradio as gr

from app.arena.store import VoteStore
from app.auth import Access
from app.config import Settings
from app.rag import RAGStore
from app.services import Services
from app.serving.client import ServingClient
from app.serving.supervisor import Supervisor
from app.ui import adapters_tab, arena_tab, compare, eval_tab, leaderboard_tab

TITLE = "Adapter Arena"
INTRO = (
    "Does a fine-tuned LoRA adapter beat a persona prompt or RAG for your domain? **Compare** answers side by side, "
    "vote blind in the **Arena** and see the **Leaderboard**, load or merge **Adapters**, and measure it all in "
    "**Eval**. Answers come from a small demo model: they are demo material, not professional advice."
)


# Wide tables scroll sideways on a phone instead of squeezing their columns out of sight.
CSS = """
.table-wrap { overflow-x: auto !important; }
"""


def build_app(
    settings: Settings,
    client: ServingClient,
    rag: RAGStore | None = None,
    store: VoteStore | None = None,
    supervisor: Supervisor | None = None,
) -> gr.Blocks:
    """The whole UI, wired to `client`, the knowledge bases of `rag` and the arena votes of `store` (default: the
    database of settings.arena.database_url, else paths.data/arena.db); launch it with `launch(demo, settings)`."""
    return build_blocks(Services.build(settings, client, rag, store, supervisor))


def build_blocks(services: Services) -> gr.Blocks:
    """The whole UI on services built already (one Setup path, one judge, one store for every tab)."""
    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        gr.Markdown(f"# {TITLE}\n{INTRO}")
        with gr.Tabs(overflow_behavior="wrap"):  # on a phone all five tabs show, on two rows
            with gr.Tab("Compare"):
                refresh_models = compare.render(services, demo)
            with gr.Tab("Arena"):
                arena = arena_tab.render(services, demo)
            with gr.Tab("Leaderboard") as leaderboard:
                refresh_leaderboard = leaderboard_tab.render(services.store, services.content)
            leaderboard.select(**refresh_leaderboard)
            for event in arena.votes:
                event.success(**refresh_leaderboard)
            with gr.Tab("Adapters") as adapters:
                for event in adapters_tab.render(services, demo):
                    event.success(**refresh_models)  # a loaded or unloaded adapter shows up in the panels' dropdowns
                    event.success(**arena.refresh_pool)  # ... and in the arena's pool
            with gr.Tab("Eval") as evaluation:
                eval_tab.render(services)

        def show_admin_tabs(request: gr.Request) -> list[gr.Tab]:
            """The admin tabs are hidden from others; their handlers check the role again."""
            return [gr.Tab(visible=services.access.may_administer(request.username))] * 2

        demo.load(show_admin_tabs, outputs=[adapters, evaluation], api_visibility="private")
    # vLLM batches concurrent requests, so let many panels (and users) stream at once, up to a bounded queue.
    demo.queue(default_concurrency_limit=32, max_size=services.settings.ui.queue_max_size)
    return demo


def launch(demo: gr.Blocks, settings: Settings, **options: Any) -> None:
    """Serve the app with the settings' address and, when accounts exist, Gradio's login page in front of it."""
    access = Access.from_settings(settings)
    demo.launch(
        server_name=settings.ui.host,
        server_port=settings.ui.port,
        show_error=True,
        css=CSS,
        auth=access.check_password if access.login_required else None,
        auth_message="Adapter Arena: sign in with the account you were given." if access.login_required else None,
        **options,
    )
