"""Playground: answer one question with several setups at once — the one path from a Setup to streamed tokens.

`Playground.answer` runs every setup concurrently (vLLM batches their requests) and yields the state of all answers
after each change, so a UI can show them streaming side by side; the Compare and Arena tabs and the batch eval all
answer through it. An answer that fails (unknown adapter, empty knowledge base, dead server) ends with an error in
its own state and never stops the others. Closing the iterator (a Stop button) cancels every answer, which closes
their HTTP streams, which makes vLLM abort the requests. The base model is the one the server lists.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from app.content import Persona
from app.prompts import Message, build_messages, build_rag_messages, retrieval_query
from app.rag import Citation, RAGError, RAGStore
from app.serving.client import ServingClient, ServingError
from app.setups import Setup

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PanelAnswer:
    """A panel's answer so far. `error` is set (and `done`) when the panel failed."""

    text: str = ""
    citations: list[Citation] = field(default_factory=list)
    error: str | None = None
    done: bool = False
    note: str | None = None  # e.g. that earlier turns were left out to fit the context
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


@dataclass
class Playground:
    """Answers questions with Setups through one model server and the knowledge bases; one per app."""

    client: ServingClient
    rag: RAGStore
    personas: Mapping[str, Persona]
    _base: str | None = field(default=None, init=False, repr=False)

    async def base_model(self) -> str:
        """The base model's id as the server lists it (an external server may not call it `base`).

        Asked once and remembered, so that a question waits for no round trip (one to a server busy streaming can
        take tens of milliseconds, before every first token); a base-model answer that fails forgets it, so a server
        restarted on another model is asked again at the next question."""
        if self._base is None:
            models = await self.client.list_models()
            self._base = next((model.id for model in models if not model.is_adapter), None)
            if self._base is None:
                raise ServingError(f"the server at {self.client.base_url} lists no base model")
        return self._base

    def messages(
        self, setup: Setup, history: Sequence[dict[str, Any]], question: str, citations: Sequence[Citation]
    ) -> list[Message]:
        """What `setup` sends for `question` after `history`: its system prompt, and with RAG the rules and the
        `citations`; ValueError names an unknown persona. (The eval keys cached answers on it, without passages.)"""
        system = setup.system_text(self.personas)
        if setup.rag:
            return build_rag_messages(system, history, question, citations, brief=setup.brief)
        return build_messages(system, history, question)

    async def answer_one(
        self, setup: Setup, history: Sequence[dict[str, Any]], question: str, base_model: str, asked: float
    ) -> AsyncIterator[PanelAnswer]:
        """Stream one answer: retrieve (if RAG is on), build the messages, stream tokens; errors end the answer.

        Its times count from `asked` (time.monotonic() when the question was asked), as the user waits for them."""
        answer = PanelAnswer()
        try:
            setup.system_text(self.personas)  # an unknown persona fails before retrieval
        except ValueError as exc:
            yield replace(answer, error=str(exc), done=True)
            return
        model = setup.adapter or base_model
        citations: list[Citation] = []
        if setup.rag:
            try:  # embedding + search are CPU-bound: a worker thread keeps the other answers streaming
                query = retrieval_query(history, question)  # a follow-up is searched with what it follows
                citations = await asyncio.to_thread(self.rag.retrieve, setup.rag, query)
            except RAGError as exc:
                yield replace(answer, error=f"RAG: {exc}", done=True)
                return
            answer = replace(answer, citations=citations)
            yield answer

        def messages_for(turns: Sequence[dict[str, Any]]) -> list[Message]:
            return self.messages(setup, turns, question, citations)

        if history:
            try:
                history, dropped = await self.fit_history(model, setup.max_tokens, messages_for, history)
            except ServingError as exc:
                yield replace(answer, error=str(exc), done=True)
                return
            if dropped:
                answer = replace(answer, note=f"{dropped} earlier turn(s) left out to fit the model's context")
        messages = messages_for(history)
        try:
            async for delta in self.client.stream_chat(
                model,
                messages,
                temperature=setup.temperature,
                top_p=setup.top_p,
                max_tokens=setup.max_tokens,
                seed=setup.seed,
                repetition_penalty=setup.repetition_penalty,
                frequency_penalty=setup.frequency_penalty,
                presence_penalty=setup.presence_penalty,
            ):
                now = time.monotonic() - asked
                if delta.text:
                    answer = replace(
                        answer,
                        text=answer.text + delta.text,
                        first_token_s=answer.first_token_s if answer.first_token_s is not None else now,
                        elapsed_s=now,
                    )
                else:
                    answer = replace(
                        answer, prompt_tokens=delta.prompt_tokens, completion_tokens=delta.completion_tokens
                    )
                yield answer
        except ServingError as exc:
            answer = replace(answer, error=str(exc))
        yield replace(answer, done=True, elapsed_s=time.monotonic() - asked)

    async def fit_history(
        self,
        model: str,
        max_tokens: int,
        messages_for: Callable[[Sequence[dict[str, Any]]], list[dict[str, str]]],
        history: Sequence[dict[str, Any]],
    ) -> tuple[list[dict[str, Any]], int]:
        """The conversation trimmed, oldest turns first, until the prompt leaves room for `max_tokens` of answer in
        the model's context (counted by the server's own tokenizer); and how many turns were left out."""
        kept = list(history)
        while True:
            count, context = await self.client.count_tokens(model, messages_for(kept))
            if not context or count + max_tokens <= context or not kept:
                return kept, len(history) - len(kept)
            kept = kept[2:]  # one question and its answer

    async def answer(
        self, setups: Sequence[Setup], histories: Sequence[Sequence[dict[str, Any]]], question: str, *, base: str = ""
    ) -> AsyncIterator[list[PanelAnswer]]:
        """Run all setups concurrently; after each change yield every current answer (same order as `setups`).

        `base` is the base model's id when the caller knows it already (`base_model`); else it is found here."""
        asked = time.monotonic()
        answers = [PanelAnswer() for _ in setups]
        base_error = None
        if not base and any(setup.adapter is None for setup in setups):
            try:
                base = await self.base_model()
            except ServingError as exc:
                base_error = str(exc)
        updates: asyncio.Queue[tuple[int, PanelAnswer | None]] = asyncio.Queue()

        async def pump(index: int) -> None:
            try:
                if base_error and setups[index].adapter is None:
                    await updates.put((index, PanelAnswer(error=base_error, done=True)))
                    return
                async for answer in self.answer_one(setups[index], histories[index], question, base, asked):
                    if answer.error and setups[index].adapter is None:
                        self._base = None  # the server may have changed: ask for its base model again
                    await updates.put((index, answer))
            except Exception as exc:  # a bug in one answer must not take the others down
                log.exception("panel %d failed", index)
                await updates.put((index, replace(answers[index], error=f"internal error: {exc}", done=True)))
            finally:
                await updates.put((index, None))

        tasks = [asyncio.create_task(pump(index)) for index in range(len(setups))]
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
