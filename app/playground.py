"""Playground core: answer one question in several panels at once, each with its own model, prompt and RAG setting.

`answer_panels` runs every panel concurrently (vLLM batches their requests) and yields the state of all panels
after each change, so a UI can show them streaming side by side. A panel that fails (unknown adapter, empty
knowledge base, dead server) ends with an error in its own state and never stops the others. Closing the iterator
(a Stop button) cancels every panel, which closes their HTTP streams, which makes vLLM abort the requests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from app.configuration import PanelConfig
from app.prompts import build_messages, build_rag_messages
from app.rag import Citation, RAGError, RAGStore
from app.serving.client import ServingClient, ServingError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PanelAnswer:
    """A panel's answer so far. `error` is set (and `done`) when the panel failed."""

    text: str = ""
    citations: list[Citation] = field(default_factory=list)
    error: str | None = None
    done: bool = False
    first_token_s: float | None = None  # time to first token, from the question
    elapsed_s: float = 0.0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    @property
    def tokens_per_s(self) -> float | None:
        """Decoding speed after the first token."""
        if not self.completion_tokens or self.first_token_s is None or self.elapsed_s <= self.first_token_s:
            return None
        return self.completion_tokens / (self.elapsed_s - self.first_token_s)

    def cost_per_1k_answers(self, price_in_per_mtok: float, price_out_per_mtok: float) -> float | None:
        """USD for 1,000 answers like this one at the given prices per million tokens (prompt / answer)."""
        if self.prompt_tokens is None or self.completion_tokens is None:
            return None
        return (self.prompt_tokens * price_in_per_mtok + self.completion_tokens * price_out_per_mtok) / 1000


async def answer_panel(
    client: ServingClient, rag: RAGStore, config: PanelConfig, history: Sequence[dict[str, Any]], question: str
) -> AsyncIterator[PanelAnswer]:
    """Stream one panel's answer: retrieve (if RAG is on), build the messages, stream tokens; errors end the panel."""
    started = time.monotonic()
    answer = PanelAnswer()
    if not config.model:
        yield replace(answer, error="no model selected: is the server up? Pick a model for this panel.", done=True)
        return
    if config.kb:
        try:  # embedding + search are CPU-bound: a worker thread keeps the other panels streaming
            citations = await asyncio.to_thread(rag.retrieve, config.kb, question)
        except RAGError as exc:
            yield replace(answer, error=f"RAG: {exc}", done=True)
            return
        answer = replace(answer, citations=citations)
        yield answer
        messages = build_rag_messages(config.system_prompt, history, question, citations)
    else:
        messages = build_messages(config.system_prompt, history, question)
    try:
        async for delta in client.stream_chat(
            config.model,
            messages,
            temperature=config.temperature,
            top_p=config.top_p,
            max_tokens=config.max_tokens,
            seed=config.seed,
        ):
            now = time.monotonic() - started
            if delta.text:
                answer = replace(
                    answer,
                    text=answer.text + delta.text,
                    first_token_s=answer.first_token_s if answer.first_token_s is not None else now,
                    elapsed_s=now,
                )
            else:
                answer = replace(answer, prompt_tokens=delta.prompt_tokens, completion_tokens=delta.completion_tokens)
            yield answer
    except ServingError as exc:
        answer = replace(answer, error=str(exc))
    yield replace(answer, done=True, elapsed_s=time.monotonic() - started)


async def answer_panels(
    client: ServingClient,
    rag: RAGStore,
    configs: Sequence[PanelConfig],
    histories: Sequence[Sequence[dict[str, Any]]],
    question: str,
) -> AsyncIterator[list[PanelAnswer]]:
    """Run all panels concurrently; after each change yield every panel's current answer (same order as configs)."""
    answers = [PanelAnswer() for _ in configs]
    updates: asyncio.Queue[tuple[int, PanelAnswer | None]] = asyncio.Queue()

    async def pump(index: int) -> None:
        try:
            async for answer in answer_panel(client, rag, configs[index], histories[index], question):
                await updates.put((index, answer))
        except Exception as exc:  # a bug in one panel must not take the others down
            log.exception("panel %d failed", index)
            await updates.put((index, replace(answers[index], error=f"internal error: {exc}", done=True)))
        finally:
            await updates.put((index, None))

    tasks = [asyncio.create_task(pump(index)) for index in range(len(configs))]
    try:
        running = len(tasks)
        while running:
            index, answer = await updates.get()
            if answer is None:
                running -= 1
                continue
            answers[index] = answer
            yield list(answers)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
