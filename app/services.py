"""The services one app (or one eval run) builds once at start-up and hands to every part: settings, the model
server's client, the knowledge bases, the domain content, the playground that answers, the one judge, and the votes.
Nothing here is per user; per-user data lives in Gradio State."""

from __future__ import annotations

from dataclasses import dataclass

from app.arena.store import VoteStore
from app.config import Settings
from app.content import Content, load_content
from app.playground import Playground
from app.rag import RAGStore
from app.scoring.judge import Judge
from app.serving.client import ServingClient


@dataclass(frozen=True)
class Services:
    settings: Settings
    client: ServingClient
    rag: RAGStore
    content: Content
    playground: Playground
    judge: Judge
    store: VoteStore

    @classmethod
    def build(
        cls, settings: Settings, client: ServingClient, rag: RAGStore | None = None, store: VoteStore | None = None
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
        )
