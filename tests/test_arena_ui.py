"""The Arena and Leaderboard tabs of the real Gradio app, driven through gradio_client.

Against the real vLLM server (it serves the base model only, so the pools are base-model configurations of the
support domain) and real SQLite vote stores in temporary folders; one app with a dead server checks that failures
stay inside the panels.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import pytest
from gradio_client import Client
from gradio_client.client import Job
from gradio_client.exceptions import AppError

from app.arena.ratings import vote_counts
from app.arena.rounds import battles
from app.arena.store import VoteStore, sqlite_url
from app.config import Settings
from app.content import Domain, load_persona
from app.inert import inert_markdown
from app.prompts import message_text
from app.serving.client import ServingClient
from app.serving.process import VLLMServer
from app.setups import RECOMMENDED, Setup
from app.ui import build_app
from app.ui.arena_tab import HIDDEN_ERROR
from tests.conftest import free_port

DOMAIN = "support"
POOL = ["base", "base+persona", "base+persona+rag"]  # every configuration the base-only server can run
SUPPORT = Domain(name=DOMAIN, persona=DOMAIN, adapter=DOMAIN, knowledge_base=DOMAIN)
PLAYED = {Setup.parse(spec, SUPPORT, temperature=0.0, max_tokens=32, **RECOMMENDED).label for spec in POOL}


@dataclass
class Arena:
    client: Client
    store: VoteStore
    url: str  # the votes database


def launch(settings: Settings, serving: ServingClient, store: VoteStore) -> tuple[gr.Blocks, Client]:
    demo = build_app(settings, serving, store=store)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    return demo, Client(f"http://127.0.0.1:{port}/", verbose=False)


@pytest.fixture(scope="module")
def arena(
    vllm_server: VLLMServer, server_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Arena]:
    url = sqlite_url(tmp_path_factory.mktemp("arena") / "votes.db")
    with VoteStore(url) as store:
        demo, client = launch(server_settings, vllm_server.client(), store)
        try:
            yield Arena(client, store, url)
        finally:
            demo.close()


def play(client: Client, prompt: str, pool: list[str] = POOL) -> Job:
    """One round at temperature 0 and 32 tokens; wait for it to end."""
    job = client.submit(prompt, DOMAIN, pool, 0.0, 32, api_name="/arena_round")
    job.result(timeout=180)
    return job


def answer_of(chat: list[dict]) -> str:
    assert [turn["role"] for turn in chat] == ["user", "assistant"]
    return message_text(chat[1]["content"])


def test_domain_offers_its_pool_and_examples(arena: Arena) -> None:
    pool, examples = arena.client.predict(DOMAIN, api_name="/arena_domain")
    assert pool["choices"] == [
        ["base model", "base"],
        ["base model + support persona", "base+persona"],
        ["base model + support persona + RAG(support)", "base+persona+rag"],
    ]
    assert pool["value"] == ["base+persona", "base+persona+rag"], "default pool; no adapter served, none offered"
    assert len(examples["choices"]) == 6, "the domain's example questions, the same as in Compare"
    assert examples["choices"][0][0].startswith("I'm thinking about switching to Acme"), "from evals/support.jsonl"


def test_round_hides_identities_until_the_vote(arena: Arena) -> None:
    before = len(arena.store.votes())
    prompt = "What does <b>Acme Unlimited</b> cost per month?"
    job = play(arena.client, prompt)
    chat_a, chat_b, _, _, message = job.outputs()[-1]
    assert len(job.outputs()) > 4, "the answers stream as many updates"
    assert job.outputs()[0][2:4] == ("", ""), "the round starts by clearing the last reveal"
    assert answer_of(chat_a).strip() and answer_of(chat_b).strip()
    assert "⚠️" not in answer_of(chat_a) + answer_of(chat_b)
    assert message_text(chat_a[0]["content"]) == inert_markdown(prompt), "the prompt is shown inert"
    assert "Which one is better" in message
    shown = json.dumps(job.outputs())
    assert "32 tokens)" not in shown and "persona" not in shown, "no configuration label before the vote"

    reveal_a, reveal_b, message = arena.client.predict("A is better", api_name="/arena_vote")
    revealed = [re.search(r"was \*\*(.+?)\*\*", reveal)[1] for reveal in (reveal_a, reveal_b)]
    assert set(revealed) <= PLAYED and revealed[0] != revealed[1], "two different configurations answered"
    assert "Vote saved" in message and "first token" in reveal_a

    votes = arena.store.votes()
    assert len(votes) == before + 1
    vote = votes[-1]
    assert (vote.outcome, vote.domain, vote.prompt) == ("a", DOMAIN, prompt), "the raw prompt is stored"
    assert [Setup.model_validate(c).label for c in (vote.config_a, vote.config_b)] == revealed
    assert inert_markdown(vote.answer_a) == answer_of(chat_a) and inert_markdown(vote.answer_b) == answer_of(chat_b)
    assert vote.session_id and vote.latency_a_s and vote.latency_b_s and not vote.errored

    with pytest.raises(AppError, match="already voted on this round"):
        arena.client.predict("B is better", api_name="/arena_vote")
    assert len(arena.store.votes()) == before + 1


def test_bad_requests_are_refused_clearly(arena: Arena) -> None:
    fresh = Client(arena.client.src, verbose=False)  # a new session, with no round yet
    with pytest.raises(AppError, match="Start a round first"):
        fresh.predict("Tie", api_name="/arena_vote")
    with pytest.raises(AppError, match="at least two configurations"):
        play(fresh, "Hello", pool=["base+persona"])
    with pytest.raises(AppError, match="Type a prompt first"):
        play(fresh, "  ")


def test_leaderboard_and_preference_export(arena: Arena, server_settings: Settings) -> None:
    for prompt, verdict in [("Hi, can I keep my number?", "Tie"), ("How do I check my data use?", "B is better")]:
        play(arena.client, prompt)
        arena.client.predict(verdict, api_name="/arena_vote")
    votes = arena.store.votes(DOMAIN)
    expected = vote_counts(battles(votes))
    summary, table, _chart, matrix = arena.client.predict(DOMAIN, "tie", api_name="/leaderboard")
    assert f"**{len(votes)} vote(s)** in {DOMAIN}" in summary and "1 tie" in summary
    assert table["headers"] == ["rank", "configuration", "rating (Bradley–Terry)", "95% CI", "Elo", "votes"]
    assert {row[1]: row[5] for row in table["data"]} == expected
    assert [row[0] for row in table["data"]] == list(range(1, len(expected) + 1))
    assert matrix["headers"][1:] == [row[1] for row in table["data"]]
    assert all(matrix["data"][i][i + 1] == "" for i in range(len(expected))), "a configuration never meets itself"
    summary, table, *_ = arena.client.predict("legal", "tie", api_name="/leaderboard")
    assert "No votes yet in legal" in summary and table["data"] == []

    persona, _ = load_persona(server_settings.paths.personas / f"{DOMAIN}.yaml")
    exported, note = arena.client.predict(DOMAIN, DOMAIN, api_name="/leaderboard_export")
    assert exported["visible"], "the file shows up for download"
    rows = [json.loads(line) for line in Path(exported["value"]).read_text(encoding="utf-8").splitlines()]
    decisive = [vote for vote in votes if vote.outcome in ("a", "b")]
    assert len(rows) == len(decisive) and f"{len(rows)} preference pair(s)" in note, "the tie is skipped"
    for row, vote in zip(rows, decisive, strict=True):
        assert set(row) == {"prompt", "chosen", "rejected"}
        assert row["prompt"][0] == {"role": "system", "content": persona.system_prompt}
        assert row["prompt"][1] == {"role": "user", "content": vote.prompt}
        winner, loser = (vote.answer_a, vote.answer_b) if vote.outcome == "a" else (vote.answer_b, vote.answer_a)
        assert row["chosen"] == [{"role": "assistant", "content": winner}]
        assert row["rejected"] == [{"role": "assistant", "content": loser}]
    with pytest.raises(AppError, match="Nothing to export yet"):
        arena.client.predict("legal", "", api_name="/leaderboard_export")


def test_votes_survive_a_restart(arena: Arena) -> None:
    play(arena.client, "Hello")
    arena.client.predict("Both are bad", api_name="/arena_vote")
    with VoteStore(arena.url) as reopened:  # what a restarted app opens: the same SQLite file
        assert reopened.votes() == arena.store.votes()
        assert reopened.votes()[-1].outcome == "both_bad"


def test_dead_server_fails_in_the_panels_and_the_vote_is_kept_unrated(
    server_settings: Settings, tmp_path: Path
) -> None:
    with VoteStore(sqlite_url(tmp_path / "votes.db")) as store:
        demo, client = launch(server_settings, ServingClient(f"http://127.0.0.1:{free_port()}/v1"), store)
        try:
            pool, _ = client.predict(DOMAIN, api_name="/arena_domain")
            assert [choice[1] for choice in pool["choices"]] == POOL, "base-model configurations only"
            chat_a, chat_b, _, _, message = play(client, "Hello").outputs()[-1]
            assert HIDDEN_ERROR in answer_of(chat_a) and HIDDEN_ERROR in answer_of(chat_b), "no reason before the vote"
            assert "A panel failed: you can still vote" in message
            reveal_a, _, _ = client.predict("Tie", api_name="/arena_vote")
            assert "was **" in reveal_a and "not reachable" in reveal_a, "the reason comes with the reveal"
            summary, table, *_ = client.predict("all", "tie", api_name="/leaderboard")
        finally:
            demo.close()
        (vote,) = store.votes()
    assert vote.outcome == "tie" and vote.error_a and vote.error_b
    assert "1 not rated" in summary and table["data"] == []
