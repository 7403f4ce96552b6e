"""Arena core: configuration labels, pair drawing, votes → battles, TRL preference export, and the CLI."""

from __future__ import annotations

import datetime as dt
import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from datasets import Dataset
from pydantic import ValidationError

from app.arena.__main__ import main
from app.arena.ratings import Battle
from app.arena.rounds import (
    ArenaError,
    battles,
    config_label,
    draw_pair,
    preference_records,
    write_preferences,
)
from app.arena.store import Vote, VoteStore
from app.setups import Setup

LEGAL_FULL = Setup(adapter="legal", persona="legal", rag="legal")
BASE = Setup()
PERSONA_ONLY = Setup(persona="legal")
POOL = [LEGAL_FULL, BASE, PERSONA_ONLY, Setup(adapter="legal"), Setup(rag="legal")]


def make_vote(a: Setup, b: Setup, outcome: str, number: int = 1, **changes: Any) -> Vote:
    return Vote(
        **{
            "id": number,
            "created_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
            "session_id": "s",
            "domain": "legal",
            "prompt": f"question {number}",
            "config_a": a.model_dump(),
            "config_b": b.model_dump(),
            "answer_a": f"left answer {number}",
            "answer_b": f"right answer {number}",
            "outcome": outcome,
            **changes,
        }
    )


def test_labels() -> None:
    assert LEGAL_FULL.label == "legal adapter + legal persona + RAG(legal)"
    assert BASE.label == "base model"
    assert PERSONA_ONLY.label == "base model + legal persona"
    assert Setup(adapter="medical", temperature=0.2, max_tokens=128).label == "medical adapter (T=0.2, 128 tokens)"
    assert len({config.label for config in POOL}) == len(POOL)
    assert config_label(LEGAL_FULL.model_dump()) == LEGAL_FULL.label
    assert Setup.model_validate(json.loads(json.dumps(LEGAL_FULL.model_dump()))) == LEGAL_FULL


def test_config_validation() -> None:
    with pytest.raises(ValidationError):
        Setup(adapter="../etc")
    with pytest.raises(ValidationError):
        Setup(temperature=5)
    with pytest.raises(ArenaError, match="not an arena configuration"):
        config_label({"model": "legal"})


def test_draw_pair_distinct_reproducible_and_balanced() -> None:
    draws = [draw_pair(POOL, random.Random(seed)) for seed in range(400)]
    assert all(a != b for a, b in draws)
    assert draws == [draw_pair(POOL, random.Random(seed)) for seed in range(400)]
    rng = random.Random(3)
    sequence = [draw_pair(POOL, rng) for _ in range(50)]
    rng = random.Random(3)
    assert sequence == [draw_pair(POOL, rng) for _ in range(50)]
    left = Counter(a for a, _ in draws)
    right = Counter(b for _, b in draws)
    for config in POOL:  # every configuration shows up on both sides: the side gives nothing away
        assert left[config] > 40
        assert right[config] > 40
    assert len({(a, b) for a, b in draws}) == len(POOL) * (len(POOL) - 1)


def test_draw_pair_needs_two_different_configs() -> None:
    rng = random.Random(0)
    assert set(draw_pair([BASE, BASE, BASE, LEGAL_FULL], rng)) == {BASE, LEGAL_FULL}
    with pytest.raises(ArenaError, match="at least two different configurations"):
        draw_pair([BASE, Setup()], rng)
    with pytest.raises(ArenaError, match="at least two different configurations"):
        draw_pair([], rng)


def test_battles_from_votes() -> None:
    votes = [
        make_vote(LEGAL_FULL, BASE, "a", 1),
        make_vote(BASE, PERSONA_ONLY, "tie", 2, domain="finance"),
        make_vote(LEGAL_FULL, BASE, "b", 3, error_a="server down"),
        make_vote(BASE, BASE, "a", 4),
        make_vote(PERSONA_ONLY, LEGAL_FULL, "both_bad", 5, domain=None),
    ]
    assert battles(votes) == [
        Battle(LEGAL_FULL.label, BASE.label, "a"),
        Battle(BASE.label, PERSONA_ONLY.label, "tie"),
        Battle(PERSONA_ONLY.label, LEGAL_FULL.label, "both_bad"),
    ]
    assert battles(votes, domain="finance") == [Battle(BASE.label, PERSONA_ONLY.label, "tie")]


def test_preference_export(tmp_path: Path) -> None:
    votes = [
        make_vote(LEGAL_FULL, BASE, "a", 1),
        make_vote(LEGAL_FULL, BASE, "b", 2),
        make_vote(LEGAL_FULL, BASE, "tie", 3),
        make_vote(LEGAL_FULL, BASE, "both_bad", 4),
        make_vote(LEGAL_FULL, BASE, "a", 5, error_b="timed out"),
    ]
    records = preference_records(votes)
    assert records == [
        {
            "prompt": [{"role": "user", "content": "question 1"}],
            "chosen": [{"role": "assistant", "content": "left answer 1"}],
            "rejected": [{"role": "assistant", "content": "right answer 1"}],
        },
        {
            "prompt": [{"role": "user", "content": "question 2"}],
            "chosen": [{"role": "assistant", "content": "right answer 2"}],
            "rejected": [{"role": "assistant", "content": "left answer 2"}],
        },
    ]
    with_system = preference_records(votes, system_prompt="You are a lawyer.")
    assert [r["prompt"][0] for r in with_system] == [{"role": "system", "content": "You are a lawyer."}] * 2
    assert [r["chosen"] for r in with_system] == [r["chosen"] for r in records]

    out = tmp_path / "prefs.jsonl"
    assert write_preferences(out, with_system) == 2
    lines = out.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == with_system
    dataset = Dataset.from_json(str(out), cache_dir=str(tmp_path / "cache"))  # how TRL users load it
    assert dataset.column_names == ["prompt", "chosen", "rejected"]
    assert dataset[1]["chosen"] == [{"role": "assistant", "content": "right answer 2"}]


def test_cli_ratings_and_export(vote_store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = vote_store_url  # a SQLite file, then a fresh PostgreSQL database
    with VoteStore(url) as store:
        for number, outcome in enumerate(["a", "a", "a", "b", "tie", "both_bad"], 1):
            store.add_vote(
                session_id="s",
                prompt=f"q{number}",
                config_a=LEGAL_FULL.model_dump(),
                config_b=BASE.model_dump(),
                answer_a=f"legal {number}",
                answer_b=f"base {number}",
                outcome=outcome,
                domain="legal",
            )
        store.add_vote(
            session_id="s",
            prompt="q",
            config_a=BASE.model_dump(),
            config_b=PERSONA_ONLY.model_dump(),
            answer_a="x",
            answer_b="y",
            outcome="a",
            domain="finance",
        )
    assert main(["--db", url, "--domain", "legal", "ratings"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("configuration")
    assert table[1].startswith(LEGAL_FULL.label)
    assert table[2].startswith(BASE.label)
    assert len(table) == 3

    out = tmp_path / "prefs.jsonl"
    assert main(["--db", url, "--domain", "legal", "export", str(out), "--persona", "legal"]) == 0
    assert "wrote 4 preference pair(s)" in capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    system = yaml.safe_load(Path("personas/legal.yaml").read_text(encoding="utf-8"))["system_prompt"]
    assert [r["prompt"][0]["content"] for r in rows] == [system] * 4
    assert [r["chosen"][0]["content"] for r in rows] == ["legal 1", "legal 2", "legal 3", "base 4"]

    assert main(["--db", url, "export", str(out), "--persona", "../secrets"]) == 1
    assert "persona name '../secrets'" in capsys.readouterr().err
