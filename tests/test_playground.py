"""The Playground's base model: asked once, not before every question, and asked again when the server changed."""

from __future__ import annotations

from app.content import load_content
from app.playground import PanelAnswer, Playground
from app.rag import RAGStore
from app.serving.client import ServingClient
from app.setups import Setup
from tests.fake_openai import FakeOpenAI


async def answers(playground: Playground, *setups: Setup) -> list[PanelAnswer]:
    updates = [update async for update in playground.answer(list(setups), [[] for _ in setups], "Hello")]
    return updates[-1]


async def test_the_base_model_is_asked_once_and_again_after_a_base_answer_fails(
    fake_server: FakeOpenAI, server_settings
) -> None:
    fake_server.script("base", "From base.")
    playground = Playground(ServingClient(fake_server.base_url), RAGStore(server_settings), load_content().personas)
    for _ in range(3):
        base, adapter = await answers(playground, Setup(), Setup(adapter="support"))
        assert (base.text, base.error, adapter.error) == ("From base.", None, None)
    assert fake_server.model_lists == 1, "each question waited for a /v1/models round trip"

    fake_server.base = "other-base"  # the server was restarted on another model
    fake_server.script("other-base", "From the other base.")
    (failed,) = await answers(playground, Setup())
    assert failed.error and "does not exist" in failed.error
    (answered,) = await answers(playground, Setup())
    assert answered.text == "From the other base.", "the failed answer made the playground ask for the base again"
    assert fake_server.model_lists == 2
