"""Domain policy is data: a fifth domain made of files only (persona + knowledge base + eval set, no code) gets presets
in Compare, a pool in the Arena, rows and a verdict in the eval. Run against the scripted OpenAI server, with the
real embedding model and FAISS for its knowledge base."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from gradio_client import Client

from app.arena.store import VoteStore
from app.config import Settings, load_settings
from app.content import load_content
from app.eval.run import evaluate
from app.playground import Playground
from app.rag import RAGStore
from app.services import Services
from app.serving.client import ServingClient
from app.ui import build_blocks
from tests.conftest import REPO, launched
from tests.fake_openai import FakeOpenAI

QUESTION = "How long is the garden's warranty on a tomato plant?"


def make_domain(root: Path) -> Settings:
    """personas/, kb/ and evals/ with the shipped support domain and a new `garden` domain written here."""
    (root / "personas").mkdir()
    for name in ("support", "generic"):
        (root / "personas" / f"{name}.yaml").write_text((REPO / "personas" / f"{name}.yaml").read_text())
    persona = {
        "name": "gardener", "display_name": "Garden centre helper (demo)", "domain": "garden",
        "adapter": "garden-lora", "knowledge_base": "garden", "facts_change_often": True,
        "disclaimer": "Demo persona for a test.", "system_prompt": "You are the Green Thumb garden centre helper.",
        "glossary": [{"term": "plant warranty", "definition": "Green Thumb replaces plants that die within 90 days."}],
    }  # fmt: skip
    (root / "personas" / "gardener.yaml").write_text(yaml.safe_dump(persona))
    (root / "kb" / "garden").mkdir(parents=True)
    (root / "kb" / "garden" / "warranty.md").write_text(
        "# Plant warranty\nSource: Green Thumb demo policies\n\n"
        "Green Thumb replaces any plant that dies within 90 days of purchase. Keep the receipt.\n"
    )
    (root / "evals").mkdir()
    item = {"id": "garden-001", "domain": "garden", "question": QUESTION, "expected_terms": [["90 days"]],
            "forbidden": ["30 days"], "reference": "Plants are covered for 90 days."}  # fmt: skip
    (root / "evals" / "garden.jsonl").write_text(json.dumps(item) + "\n")
    return load_settings(None, {"paths.personas": str(root / "personas"), "paths.kb": str(root / "kb"),
                                "paths.evals": str(root / "evals"), "paths.data": str(root / "data"),
                                "paths.adapters": str(root / "no-adapters")})  # fmt: skip


@pytest.fixture
def garden(tmp_path: Path) -> Iterator[tuple[Services, FakeOpenAI, str]]:
    settings = make_domain(tmp_path)
    with FakeOpenAI(adapters=["garden-lora"]) as fake, VoteStore.in_folder(tmp_path / "votes") as store:
        fake.script("garden-lora", "Green Thumb replaces a plant that dies within 90 days.")
        services = Services.build(settings, ServingClient(fake.base_url, timeout_s=10), RAGStore(settings), store)
        with launched(build_blocks(services)) as url:
            yield services, fake, url


def test_the_new_domain_is_read_from_its_files(tmp_path: Path) -> None:
    settings = make_domain(tmp_path)
    content = load_content(settings.paths.personas, settings.paths.kb, settings.paths.adapters, settings.paths.evals)
    garden = content.domains["garden"]
    assert (garden.persona, garden.adapter, garden.knowledge_base) == ("gardener", "garden-lora", "garden")
    assert garden.facts_change_often and not garden.brand_voice
    assert garden.examples == [QUESTION], "example questions default to the domain's eval questions"


def test_compare_arena_and_eval_serve_the_new_domain(garden: tuple[Services, FakeOpenAI, str]) -> None:
    services, fake, url = garden
    client = Client(url, verbose=False)
    _status, count, _examples, question, *fields = client.predict("garden", "classic four-way", "",
                                                                  api_name="/apply_preset")  # fmt: skip
    assert count == 4 and question == QUESTION
    assert [m["value"] for m in fields[0::5]] == ["base", "garden-lora", "base", "garden-lora"], "its adapter"
    assert fields[1::5] == ["gardener", "gardener", "gardener", "none"], "its persona"
    assert fields[3::5] == [False, False, True, True] and fields[4::5][2] == "garden", "its knowledge base"

    pool, examples = client.predict("garden", api_name="/arena_domain")
    assert [spec for _, spec in pool["choices"]] == ["base", "base+persona", "base+persona+rag", "adapter+persona",
                                                     "adapter", "adapter+persona+rag"]  # fmt: skip
    assert pool["choices"][3][0] == "garden-lora adapter + gardener persona"
    assert examples["choices"][0][0] == QUESTION

    questions = {"garden": services.content.evals["garden"]}
    playground = Playground(ServingClient(fake.base_url), services.rag, services.content.personas)  # this loop's
    run = asyncio.run(evaluate(playground, services.judge, questions, max_tokens=32))
    specs = [row.spec for row in run.summary.rows]
    assert specs == ["base", "base+rag", "base+persona", "base+persona+rag", "adapter+persona", "adapter+persona+rag"]
    decision = run.summary.verdict["garden"]
    assert decision.verdict is not None and decision.volatile, "facts_change_often comes from the persona file"
    adapter_row = next(row for row in run.summary.rows if row.spec == "adapter+persona")
    assert adapter_row.terminology_accuracy == 1.0, "the scripted adapter answer names the 90 days"
    assert any(request["model"] == "garden-lora" for request in fake.requests)
