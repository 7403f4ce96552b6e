"""The real Gradio app against the real vLLM server, driven through gradio_client."""

from __future__ import annotations

from collections.abc import Iterator

import gradio as gr
import pytest
from gradio_client import Client

from app.config import Settings
from app.prompts import message_text
from app.serving import ServingClient, VLLMServer
from app.ui import build_app
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


def test_two_panels_stream_in_parallel(ui_client: Client) -> None:
    question = "What is a tort? Answer in one sentence."
    jobs = [ui_client.submit(question, "base", [], 0.0, 48, api_name=f"/answer_{i}") for i in range(2)]
    finals = [job.result(timeout=180) for job in jobs]
    for job, final in zip(jobs, finals, strict=True):
        assert len(job.outputs()) > 3, "each panel must stream several updates, not one final answer"
        assert answer_of(final).strip()
        assert message_text(final[-2]["content"]) == question
    assert answer_of(finals[0]) == answer_of(finals[1]), "same model, temperature 0: same answer in both panels"


def test_failing_panel_does_not_break_the_other(ui_client: Client) -> None:
    bad = ui_client.submit("Hello", "no-such-adapter", [], 0.0, 16, api_name="/answer_0")
    good = ui_client.submit("Hello", "base", [], 0.0, 16, api_name="/answer_1")
    assert "⚠️ model 'no-such-adapter'" in answer_of(bad.result(timeout=120))
    assert "⚠️" not in answer_of(good.result(timeout=120))


def test_model_output_is_escaped(ui_client: Client) -> None:
    final = ui_client.predict("Repeat exactly: <b>bold</b>", "base", [], 0.0, 24, api_name="/answer_0")
    assert "<b>" not in answer_of(final) and "<b>" not in message_text(final[-2]["content"])


def test_refresh_lists_models(ui_client: Client) -> None:
    status, *dropdowns = ui_client.predict(api_name="/refresh_models")
    assert "base model and 0 adapter(s)" in status
    assert [d["value"] for d in dropdowns] == ["base", "base"], dropdowns
    assert all(d["choices"] == [["base", "base"]] for d in dropdowns)


def test_multi_turn_keeps_history(ui_client: Client) -> None:
    first = ui_client.predict("My name is Ada.", "base", [], 0.0, 16, api_name="/answer_0")
    second = ui_client.predict("What did I just tell you?", "base", first, 0.0, 16, api_name="/answer_0")
    assert [t["role"] for t in second] == ["user", "assistant", "user", "assistant"]
