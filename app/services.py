"""The services one app (or one eval run) builds once at start-up and hands to every part: settings, the model
server's client, the knowledge bases, the domain content, the playground that answers, the one judge, and the votes.
Nothing here is per user; per-user data lives in Gradio State."""

from __future__ import annotations

from dataclasses import dataclass

from app.arena.store import VoteStore
from app.auth import Access
from app.config import Settings
from app.content import Content, load_content
from app.inert import md_code, md_text
from app.playground import Playground
from app.rag import RAGStore
from app.scoring.judge import Judge
from app.serving.client import ModelInfo, ServingClient, ServingError
from app.serving.supervisor import Supervisor


def status_line(base_url: str, models: list[ModelInfo] | None, error: str | None = None) -> str:
    """Markdown: the server, and its adapters or what is wrong."""
    if error:
        return f"**Server** `{base_url}` — ⚠️ {md_text(error)}"
    adapters = [m.id for m in models or [] if m.is_adapter]
    names = ", ".join(md_code(name) for name in adapters) or "none loaded"
    return f"**Server** `{base_url}` — base model and {len(adapters)} adapter(s): {names}"


@dataclass(frozen=True)
class Services:
    settings: Settings
    client: ServingClient
    rag: RAGStore
    content: Content
    playground: Playground
    judge: Judge
    store: VoteStore
    access: Access
    supervisor: Supervisor | None = None  # None: an external server (vllm.url) that the app does not manage

    async def status(self) -> str:
        """The status line: which server, what it serves, and (for our own vLLM) whether it is up or restarting."""
        health = self.supervisor.health() if self.supervisor else None
        await self.client.sync_adapters()  # replicas behind a router serve the same run-time adapters
        if health and health.state != "up":
            return status_line(self.client.base_url, None, health.describe())
        try:
            models = await self.client.list_models()
        except ServingError as exc:
            return status_line(self.client.base_url, None, f"{exc} — the app picks it up as soon as it answers")
        line = status_line(self.client.base_url, models)
        return f"{line} · {health.describe()}" if health and health.detail else line

    @classmethod
    def build(
        cls,
        settings: Settings,
        client: ServingClient,
        rag: RAGStore | None = None,
        store: VoteStore | None = None,
        supervisor: Supervisor | None = None,
    ) -> Services:
        """Everything from the settings; `rag` and `store` may be given (tests, start-up that built them already)."""
        rag = rag or RAGStore(settings)
        paths = settings.paths
        content = load_content(paths.personas, paths.kb, paths.adapters, paths.evals)
        return cls(
            settings=settings,
            client=client,
            rag=rag,
            content=content,
            playground=Playground(client, rag, content.personas),
            judge=Judge(content, rag),
            store=store or VoteStore.from_settings(settings),
            access=Access.from_settings(settings),
            supervisor=supervisor,
        )
