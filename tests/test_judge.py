"""One judge: the same answer to the same question in the same domain gets the same scores live (a Compare panel, an
Arena reveal) and in the batch eval. The answer comes from the scripted server so that both paths see the same text;
evidence and groundedness use the real knowledge base and embedding model."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from gradio_client import Client

from app.content import load_content
from app.eval.run import evaluate
from app.playground import Playground
from app.rag import RAGStore
from app.scoring.judge import Judge
from app.serving.client import ServingClient
from tests.fake_openai import FakeOpenAI
from tests.panels import panel

ANSWER = (
    "Thanks for asking! Acme Unlimited is $45/month, or $40/month with autopay. Some say it is $60/month, "
    "which is wrong. You can switch in the app.\nHappy to help! — Acme Mobile Support"
)


def test_live_and_batch_scores_are_the_same(fake_server: FakeOpenAI, fake_app: str, server_settings) -> None:
    content = load_content()
    item = content.evals["support"][0]
    persona = content.personas["support"]
    fake_server.script("base", ANSWER)
    client = Client(fake_app, verbose=False)
    inputs = panel(persona="support", system=persona.system_prompt, tokens=64, rag=True, kb="support")
    client.predict(item.question, "support", 2, *inputs * 4, api_name="/answer_all")
    update = client.predict(api_name="/export_json")
    live = json.loads(Path(update["value"]).read_text(encoding="utf-8"))["panels"][0]["scores"]

    rag = RAGStore(server_settings)
    playground = Playground(ServingClient(fake_server.base_url), rag, content.personas)
    run = asyncio.run(evaluate(playground, Judge(content, rag), {"support": [item]}, ["base+persona+rag"]))
    (batch,) = [record["scores"] for record in run.results]
    assert live == batch, "the Compare term check and the eval must judge the same answer the same way"
    assert live["unsupported"] == ["$60/month"] or "$60" in live["forbidden"], "the wrong price is caught"
    assert live["voice"]["sign_off"] is True and live["groundedness"] is not None, "voice and RAG checks applied"
