"""Arena tab: a blind A/B test. Two configurations from the user's pool answer one prompt as "Model A" and "Model B";
the user votes, and only then are the configurations revealed.

The work is done elsewhere: app.arena.rounds draws the pair, app.playground streams both answers in one event (so
they stream in parallel, and a failing panel never blocks the other), app.arena.store keeps the vote. Each browser
session has its own random generator and current round in `gr.State`; nothing mutable lives at module level. Which
configuration answered is kept server-side until the vote; the answers' stats (token counts would give RAG away)
are shown only with the reveal. Model output is untrusted and shown escaped, as in the Compare tab.
"""

from __future__ import annotations

import html
import random
import time
import uuid
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import anyio
import gradio as gr
from gradio.events import Dependency

from app.arena.ratings import Outcome
from app.arena.rounds import ArenaError, draw_pair
from app.arena.store import DuplicateVote, StoreError
from app.content import Domain
from app.inert import md_text
from app.playground import PanelAnswer
from app.services import Services
from app.serving.client import ServingError
from app.setups import ARENA_DEFAULT_POOL, ARENA_POOL, DEFAULT_TEMPERATURE, REPETITION, Setup
from app.ui.compare import first_domain
from app.ui.display import scores_label, shown_chat, stats_line
from app.ui.panel import checked_prompt, repetition_sliders

HELP = (
    "**Blind A/B test.** Pick a domain and tick the configurations that may compete (the *pool*), type a prompt or "
    "pick an example, and press *New round*: two different configurations drawn at random from the pool answer "
    "side by side as **Model A** and **Model B**. Read both, then vote. Only after your vote are the configurations "
    "revealed, so that your vote is about the answers, not the names. Votes feed the *Leaderboard* tab and its "
    "preference-data export. A panel that failed still takes a vote; it is kept but not rated."
)
SCROLL_TO_ANSWERS = (
    "() => document.getElementById('arena-answers')?.scrollIntoView({behavior: 'smooth', block: 'start'})"
)
HIDDEN_ERROR = "this model could not answer; the reason is shown after your vote"
VOTES: dict[str, Outcome] = {"A is better": "a", "B is better": "b", "Tie": "tie", "Both are bad": "both_bad"}

Updates = dict[gr.components.Component, Any]


@dataclass(frozen=True)
class Round:
    """One session's current round; `answers` is None while they stream, `vote_id` set once voted."""

    domain: str
    prompt: str
    setups: tuple[Setup, Setup]
    id: str = field(default_factory=lambda: uuid.uuid4().hex)  # one vote per round id, enforced by the database
    answers: tuple[PanelAnswer, PanelAnswer] | None = None
    vote_id: int | None = None


class ArenaEvents(NamedTuple):
    """What other tabs hook into: the vote events (chain `.success(...)` on them, e.g. to refresh a leaderboard)
    and the keyword arguments of a listener that re-offers the pool after the server's adapters changed."""

    votes: list[Dependency]
    refresh_pool: dict[str, Any]


def offered_specs(domain: Domain, adapters: Collection[str]) -> list[str]:
    """The pool specs that can run for `domain`: adapter ones only if the server serves the domain's adapter, RAG
    ones only if the domain has a knowledge base."""
    return [
        spec
        for spec in ARENA_POOL
        if ("adapter" not in spec or domain.adapter in adapters) and ("rag" not in spec or domain.knowledge_base)
    ]


def render(services: Services, demo: gr.Blocks) -> ArenaEvents:
    """Build the tab inside the current Blocks context and wire its events (see ArenaEvents for what it returns)."""
    return _ArenaTab(services).wire(demo)


class _ArenaTab:
    """The tab's components and handlers, one per app; what belongs to a user lives in its `gr.State` components."""

    def __init__(self, services: Services) -> None:
        self.services, self.settings, self.content = services, services.settings, services.content
        first = first_domain(services)
        gr.Markdown(HELP)
        self.domain = gr.Radio(list(self.content.domains), value=first, label="Domain")
        # Every pool spec is a valid choice from the start (Gradio checks submitted values against the choices the
        # component was built with, also after a session narrowed them); each session then sees what its server serves.
        start = self.pool_choices(first, {self.content.domains[first].adapter}) if first else []
        self.pool = gr.CheckboxGroup(
            start,
            value=[spec for _, spec in start if spec in ARENA_DEFAULT_POOL],
            label="Pool: the configurations that may answer (two are drawn each round)",
        )
        with gr.Row():
            self.prompt = gr.Textbox(
                label="Your prompt",
                placeholder="Ask something in this domain, then Enter",
                lines=1,
                max_lines=6,
                scale=5,
                max_length=self.settings.ui.max_prompt_chars,
            )
            with gr.Column(scale=1, min_width=140):
                self.new_round = gr.Button("New round", variant="primary")
        self.example = gr.Dropdown(self.examples(first) if first else [], value=None, label="Example prompts")
        with gr.Accordion("Sampling (both models)", open=False):
            self.temperature = gr.Slider(0.0, 1.5, value=DEFAULT_TEMPERATURE, step=0.05, label="Temperature")
            tokens = self.settings.ui.max_tokens
            self.max_tokens = gr.Slider(16, tokens * 4, value=tokens, step=16, label="Max tokens")
            self.repetition = repetition_sliders()
            gr.Markdown("Sampling other than the defaults becomes part of a configuration's name on the leaderboard.")
        self.chats: list[gr.Chatbot] = []
        self.reveals: list[gr.Markdown] = []
        with gr.Row(equal_height=True, elem_id="arena-answers"):
            for side in "AB":
                with gr.Column(min_width=260):
                    self.chats.append(
                        gr.Chatbot(
                            label=f"Model {side}", height=380, sanitize_html=True, allow_tags=False, buttons=["copy"]
                        )
                    )
                    self.reveals.append(gr.Markdown())
        with gr.Row():
            self.buttons = [gr.Button(name, interactive=False) for name in VOTES]
        self.message = gr.Markdown()
        self.rng = gr.State(None)  # the session's random.Random, made at its first round (seeded by the OS)
        self.current = gr.State(None)  # the session's Round
        self.voted = gr.State([])  # when the session voted (time.monotonic()), for the per-session rate limit
        self.adapters = gr.State([])  # the adapters the server served when the session last asked

    def pool_choices(self, name: str, adapters: Collection[str]) -> list[tuple[str, str]]:
        """(label, spec) of each setup on offer for domain `name`."""
        domain = self.content.domains[name]
        return [(Setup.parse(spec, domain).label, spec) for spec in offered_specs(domain, adapters)]

    def examples(self, name: str) -> list[str]:
        return self.content.domains[name].examples

    def shown(self, prompt: str, answers: list[PanelAnswer]) -> Updates:
        """Both answers as they stream; a failure is named but its reason (which could name the adapter, persona or
        knowledge base) waits for the reveal."""
        hidden = [replace(a, error=HIDDEN_ERROR) if a.error else a for a in answers]
        return {chat: shown_chat([], prompt, answer) for chat, answer in zip(self.chats, hidden, strict=True)}

    def vote_buttons(self, enabled: bool) -> Updates:
        return {button: gr.Button(interactive=enabled) for button in self.buttons}

    async def served_adapters(self) -> list[str]:
        try:
            return [m.id for m in await self.services.client.list_models() if m.is_adapter]
        except ServingError as exc:
            gr.Warning(f"Cannot list the server's adapters ({exc}): offering base-model configurations only.")
            return []

    def show_pool(self, domain: str, adapters: list[str], keep: list[str] | None) -> Updates:
        """The pool of `domain`: the ticks in `keep` that are still offered, or the default ticks when None."""
        choices = self.pool_choices(domain, adapters)
        ticked = [spec for _, spec in choices if spec in (ARENA_DEFAULT_POOL if keep is None else keep)]
        return {self.pool: gr.CheckboxGroup(choices=choices, value=ticked)}

    async def on_domain(self, domain: str, adapters: list[str] | None) -> Updates:
        """The domain's pool (default ticks) and example prompts. The session's adapters are asked for only when it
        has none yet (a session that never loaded the page, e.g. an API client)."""
        adapters = adapters or await self.served_adapters()
        return {
            self.adapters: adapters,
            **self.show_pool(domain, adapters, None),
            self.example: gr.Dropdown(self.examples(domain), value=None),
        }

    async def on_load(self) -> Updates:
        return {self.adapters: await self.served_adapters()}

    def on_loaded(self, domain: str, adapters: list[str]) -> Updates:
        """Narrow the pool once the page knows what the server serves, but only where the page's guess (the domain's
        adapter is served) was wrong: a load that finishes after the user ticked the pool must not undo the ticks.
        The pool's value is not an input: a domain change that narrowed the session's choices while this event
        waited would make Gradio refuse the page's older ticks, and the refused event freezes the pool."""
        guessed = {self.content.domains[domain].adapter} if domain else set()
        if domain and self.pool_choices(domain, adapters) != self.pool_choices(domain, guessed):
            return self.show_pool(domain, adapters, None)
        return {self.pool: gr.skip()}

    async def on_adapters_changed(self, domain: str, keep: list[str]) -> Updates:
        adapters = await self.served_adapters()
        return {self.adapters: adapters, **self.show_pool(domain, adapters, keep)}

    async def play(  # noqa: PLR0917 - Gradio passes the inputs positionally
        self,
        prompt: str,
        domain: str,
        specs: list[str],
        temperature: float,
        max_tokens: float,
        rng: random.Random | None,
        *penalties: float,
    ) -> AsyncIterator[Updates]:
        """Draw two configurations from the pool and stream both answers; the vote buttons open when both are done."""
        prompt = checked_prompt(prompt, self.settings.ui.max_prompt_chars)
        if not domain:
            raise gr.Error("Pick a domain first.")
        sampling = {"temperature": temperature, "max_tokens": int(max_tokens), **dict(zip(REPETITION, penalties,
                                                                                         strict=True))}  # fmt: skip
        rng = rng or random.Random()
        policy = self.content.domains.get(domain)
        if policy is None:
            raise gr.Error(f"Unknown domain {domain!r}: pick one of the listed domains.")
        try:
            pair = draw_pair([Setup.parse(spec, policy, **sampling) for spec in specs], rng)
        except (ArenaError, ValueError) as exc:
            raise gr.Error(f"Tick at least two configurations in the pool ({exc}).") from exc
        pending = Round(domain, prompt, pair)
        yield {
            self.rng: rng,
            self.current: pending,
            self.message: "",
            **self.vote_buttons(False),
            **dict.fromkeys(self.reveals, ""),
        }
        answers: list[PanelAnswer] = []
        async for answers in self.services.playground.answer(list(pair), [[], []], prompt):
            yield self.shown(prompt, answers)
        failed = any(answer.error for answer in answers)
        yield {
            **self.shown(prompt, answers),
            self.current: replace(pending, answers=(answers[0], answers[1])),
            self.message: "A panel failed: you can still vote (the vote is kept, not rated), or start a new round."
            if failed
            else "Both answers are in. Which one is better? Your vote reveals the configurations.",
            **self.vote_buttons(True),
        }

    def reveal(self, side: str, setup: Setup, answer: PanelAnswer, played: Round) -> str:
        """Who answered, its speed and cost, and the one judge's term check (shown only now: it could hint)."""
        stats = stats_line(answer, (self.settings.ui.price_in_per_mtok, self.settings.ui.price_out_per_mtok))
        lines = [f"**Model {side}** was **{html.escape(setup.label)}**" + (f" — {stats}" if stats else "")]
        if answer.error:
            lines.append(f"It failed: {md_text(answer.error)}")
        if answer.text:
            domain = self.content.domains.get(played.domain)
            scores = self.services.judge.score(answer.text, domain=domain, question=played.prompt,
                                               citations=answer.citations)  # fmt: skip
            lines.append(html.escape(scores_label(scores)))
        return "\n\n".join(lines)

    async def vote(self, choice: str, played: Round | None, voted: list[float], request: gr.Request) -> Updates:
        """Store the vote on the session's round (once), then reveal both configurations."""
        recent = [at for at in voted or [] if time.monotonic() - at < 60]
        if len(recent) >= self.settings.ui.votes_per_minute:
            wait = 60 - (time.monotonic() - recent[0])
            raise gr.Error(f"That is {len(recent)} votes in a minute, the most one session may cast "
                           f"(ui.votes_per_minute). Try again in {wait:.0f} s.")  # fmt: skip
        if played is None:
            raise gr.Error("Start a round first: type a prompt and press New round.")
        if played.answers is None:
            raise gr.Error("Wait until both answers are done, then vote.")
        if played.vote_id is not None:
            raise gr.Error("You already voted on this round. Press New round for the next prompt.")
        if choice not in VOTES:
            raise gr.Error(f"Unknown vote {choice!r}: expected one of {', '.join(VOTES)}.")
        (answer_a, answer_b), (setup_a, setup_b) = played.answers, played.setups
        try:
            vote_id = await anyio.to_thread.run_sync(
                lambda: self.services.store.add_vote(
                    session_id=request.session_hash or "",
                    domain=played.domain,
                    prompt=played.prompt,
                    config_a=setup_a.record(),
                    config_b=setup_b.record(),
                    answer_a=answer_a.text,
                    answer_b=answer_b.text,
                    outcome=VOTES[choice],
                    latency_a_s=answer_a.elapsed_s,
                    latency_b_s=answer_b.elapsed_s,
                    error_a=answer_a.error,
                    error_b=answer_b.error,
                    round_id=played.id,
                )
            )
        except DuplicateVote as exc:
            raise gr.Error("You already voted on this round. Press New round for the next prompt.") from exc
        except StoreError as exc:
            raise gr.Error(f"Your vote was not saved: {exc}. Try again.") from exc
        reveals = await anyio.to_thread.run_sync(
            lambda: [self.reveal("A", setup_a, answer_a, played), self.reveal("B", setup_b, answer_b, played)]
        )
        return {
            self.current: replace(played, vote_id=vote_id),
            self.voted: [*recent, time.monotonic()],
            self.reveals[0]: reveals[0],
            self.reveals[1]: reveals[1],
            self.message: f"Vote saved: *{choice}*. Press **New round** for the next prompt.",
            **self.vote_buttons(False),
        }

    def wire(self, demo: gr.Blocks) -> ArenaEvents:
        self.domain.change(
            self.on_domain,
            inputs=[self.domain, self.adapters],
            outputs=[self.adapters, self.pool, self.example],
            api_name="arena_domain",
        )
        demo.load(self.on_load, outputs=self.adapters, api_visibility="private").then(
            self.on_loaded, inputs=[self.domain, self.adapters], outputs=self.pool, api_visibility="private"
        )
        self.example.change(
            lambda text: text or gr.skip(), inputs=self.example, outputs=self.prompt, api_visibility="private"
        )
        # Before the round's event: the browser runs a trigger's listeners in order, each after the last one's stream.
        gr.on([self.new_round.click, self.prompt.submit], None, js=SCROLL_TO_ANSWERS)
        gr.on(
            [self.new_round.click, self.prompt.submit],
            self.play,
            inputs=[self.prompt, self.domain, self.pool, self.temperature, self.max_tokens, self.rng, *self.repetition],
            outputs=[*self.chats, *self.reveals, *self.buttons, self.message, self.current, self.rng],
            api_name="arena_round",
        )
        # One vote at a time, app-wide (a vote takes milliseconds), so a double click cannot store a round twice.
        votes = [
            button.click(
                self.vote,
                inputs=[button, self.current, self.voted],
                outputs=[*self.reveals, *self.buttons, self.message, self.current, self.voted],
                api_name="arena_vote" if index == 0 else None,
                api_visibility="public" if index == 0 else "private",
                concurrency_limit=1,
                concurrency_id="arena_vote",
            )
            for index, button in enumerate(self.buttons)
        ]
        refresh_pool: dict[str, Any] = {"fn": self.on_adapters_changed, "inputs": [self.domain, self.pool]}
        return ArenaEvents(votes, {**refresh_pool, "outputs": [self.adapters, self.pool], "api_visibility": "private"})
