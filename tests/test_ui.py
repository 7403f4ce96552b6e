"""The real Gradio app against the real vLLM server, driven through gradio_client."""

from __future__ import annotations

from collections.abc import Iterator

import gradio as gr
import pytest
from gradio_client import Client
from gradio_client.client import Job
from gradio_client.exceptions import AppError

from app.config import Settings
from app.prompts import message_text
from app.rag import Citation
from app.serving import ServingClient, VLLMServer
from app.ui import build_app
from app.ui.compare import sources_markdown
from tests.conftest import free_port


@pytest.fixture(scope="module")
def ui_client(vllm_server: VLLMServer, server_settings: Settings) -> Iterator[Client]:
    demo: gr.Blocks = build_app(server_settings, ServingClient(vllm_server.base_url))
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield Client(f"http://127.0.0.1:{port}/", verbose=False)
    finally:
        demo.close()


def answer_of(history: list[dict]) -> str:
    assert history[-2]["role"] == "user"
    assert history[-1]["role"] == "assistant"
    return message_text(history[-1]["content"])


def panel(model: str | None = "base", history: list | None = None, tokens: int = 32, rag: bool = False,
          kb: str | None = "support") -> list:  # fmt: skip
    """One panel's inputs to /answer_all: model, chat, temperature, max tokens, RAG on, knowledge base."""
    return [model, history or [], 0.0, tokens, rag, kb]


def ask(client: Client, question: str, first: list, second: list) -> Job:
    return client.submit(question, *first, *second, api_name="/answer_all")


def test_two_panels_stream_in_parallel(ui_client: Client) -> None:
    question = "What is a tort? Answer in one sentence."
    job = ask(ui_client, question, panel(tokens=48), panel(tokens=48))
    chat_0, chat_1, stats_0, stats_1 = job.result(timeout=180)
    streamed = [update for update in job.outputs() if answer_of(update[0]) and answer_of(update[1])]
    assert len(job.outputs()) > 6, "the answers must stream as many updates, not arrive once"
    assert any(
        answer_of(update[0]) != answer_of(chat_0) and answer_of(update[1]) != answer_of(chat_1) for update in streamed
    ), "both panels must be mid-answer at the same moment (in parallel, not one after the other)"
    assert answer_of(chat_0).strip() and message_text(chat_0[-2]["content"]) == question
    assert answer_of(chat_0) == answer_of(chat_1), "same model, temperature 0: same answer in both panels"
    assert "first token" in stats_0 and "tokens/s" in stats_1


def test_failing_panel_does_not_break_the_other(ui_client: Client) -> None:
    chat_0, chat_1, *_ = ask(ui_client, "Hello", panel("no-such-adapter"), panel()).result(timeout=120)
    assert "⚠️ model 'no-such-adapter'" in answer_of(chat_0)
    assert answer_of(chat_1).strip() and "⚠️" not in answer_of(chat_1)


def test_empty_question_is_refused(ui_client: Client) -> None:
    with pytest.raises(AppError, match="Type a question first"):
        ask(ui_client, "  ", panel(), panel()).result(timeout=60)


def test_model_output_is_escaped(ui_client: Client) -> None:
    chat, *_ = ask(ui_client, "Repeat exactly: <b>bold</b>", panel(), panel()).result(timeout=120)
    assert "<b>" not in answer_of(chat) and "<b>" not in message_text(chat[-2]["content"])


def test_refresh_lists_models(ui_client: Client) -> None:
    status, *dropdowns = ui_client.predict(api_name="/refresh_models")
    assert "base model and 0 adapter(s)" in status
    assert [d["value"] for d in dropdowns] == ["base", "base"], dropdowns
    assert all(d["choices"] == [["base", "base"]] for d in dropdowns)


def test_multi_turn_keeps_history(ui_client: Client) -> None:
    first, other, *_ = ask(ui_client, "My name is Ada.", panel(tokens=16), panel(tokens=16)).result(timeout=120)
    second, _, *_ = ask(ui_client, "What did I just tell you?", panel(history=first), panel()).result(timeout=120)
    assert [t["role"] for t in second] == ["user", "assistant", "user", "assistant"]
    assert message_text(second[0]["content"]) == "My name is Ada."
    assert len(other) == 2


def test_rag_panel_answers_from_the_knowledge_base(ui_client: Client) -> None:
    question = "How much is Acme Unlimited per month?"
    chat, *_ = ask(ui_client, question, panel(tokens=48, rag=True), panel(tokens=48)).result(timeout=180)
    assert message_text(chat[-2]["content"]) == question, "the chat shows the question, not the retrieved context"
    assert "$45" in answer_of(chat)


def test_bad_knowledge_base_fails_in_that_panel_only(ui_client: Client) -> None:
    with pytest.raises(AppError, match="not in the list of choices"):
        ask(ui_client, "Hello", panel(rag=True, kb="../kb"), panel()).result(timeout=60)


def test_sources_are_listed_and_escaped() -> None:
    evil = Citation(
        title="<b>Plans</b>", source="Guide", path="support/plans.md", heading="Prices",
        score=0.8123, text="Unlimited is $45.\n<script>alert(1)</script> ![x](http://evil.example/x.png)",
    )  # fmt: skip
    listing, passages = sources_markdown([evil])
    assert "\\[1\\]" in listing and "Guide" in listing and "score 0.81" in listing
    assert "<b>" not in listing and "&lt;b&gt;Plans&lt;/b&gt;" in listing
    assert "<script>" not in passages and "&lt;script&gt;" in passages
    assert "![x](" not in passages and "\\!\\[x\\]\\(" in passages, "KB markdown must not load remote images"
    assert sources_markdown([]) == ("", "")
