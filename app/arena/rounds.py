"""Blind A/B arena core: drawing a pair of Setups, stored votes → battles between their labels, DPO export.

Two distinct Setups (app.setups) from the user's pool answer the same prompt as anonymous panels A (left) and B
(right); the user votes; `app.arena.store` keeps the vote with each Setup's record; `app.arena.ratings` rates the
labels.
No UI here (see docs/arena.md for the API a Gradio tab uses); the command line is `python -m app.arena`.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from app.arena.ratings import Battle
from app.arena.store import Vote
from app.setups import Setup


class ArenaError(ValueError):
    """The arena cannot do what was asked (e.g. a pool of fewer than two configurations); ready to show."""


def config_label(config: Mapping[str, Any]) -> str:
    """The label of a stored configuration dict."""
    try:
        return Setup.model_validate(config).label
    except ValidationError as exc:
        raise ArenaError(f"stored configuration {dict(config)!r} is not an arena configuration: {exc}") from exc


def draw_pair(pool: Sequence[Setup], rng: random.Random) -> tuple[Setup, Setup]:
    """Two different Setups from `pool`, in random order: the first is panel A (left).

    Duplicates in the pool count once, so every pair of distinct configurations is equally likely, and each
    configuration is as likely to be on the left as on the right. Pass a seeded `random.Random` to reproduce draws.
    """
    distinct = list(dict.fromkeys(pool))
    if len(distinct) < 2:
        raise ArenaError(f"the arena needs at least two different configurations in its pool; got {len(distinct)}")
    first, second = rng.sample(distinct, 2)
    return first, second


def usable_votes(votes: Iterable[Vote], domain: str | None = None) -> list[Vote]:
    """Votes that say something about the configurations: both panels answered (no error), the two configurations
    differ, and (when `domain` is given) the vote was cast in that domain."""
    return [
        vote
        for vote in votes
        if not vote.errored
        and config_label(vote.config_a) != config_label(vote.config_b)
        and (domain is None or vote.domain == domain)
    ]


def battles(votes: Iterable[Vote], domain: str | None = None) -> list[Battle]:
    """Usable votes as battles between configuration labels, for app.ratings."""
    return [
        Battle(config_label(vote.config_a), config_label(vote.config_b), vote.outcome)
        for vote in usable_votes(votes, domain)
    ]


def preference_records(votes: Iterable[Vote], system_prompt: str | None = None) -> list[dict[str, Any]]:
    """TRL preference rows from decisive votes ("a" or "b"): the winner's answer is `chosen`, the loser's `rejected`.

    Rows are in TRL's conversational format (lists of role/content messages), so the trainer applies the model's
    chat template exactly as the server did when answering. Ties, "both bad" and errored votes are skipped. The
    prompt is the user's question alone: the two answers may come from configurations with different personas and
    retrieved context, so neither side's system prompt is "the" prompt. To train an adapter that will run under one
    system prompt (e.g. its persona's), pass it as `system_prompt`: it becomes the first turn of every prompt.
    """
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    records = []
    for vote in usable_votes(votes):
        if vote.outcome not in ("a", "b"):
            continue
        chosen, rejected = (vote.answer_a, vote.answer_b) if vote.outcome == "a" else (vote.answer_b, vote.answer_a)
        records.append(
            {
                "prompt": [*system, {"role": "user", "content": vote.prompt}],
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
            }
        )
    return records


def write_preferences(path: Path, records: Iterable[Mapping[str, Any]]) -> int:
    """Write rows as JSONL (UTF-8, one JSON object a line) and return how many were written."""
    lines = [json.dumps(record, ensure_ascii=False) + "\n" for record in records]
    path.write_text("".join(lines), encoding="utf-8")
    return len(lines)
