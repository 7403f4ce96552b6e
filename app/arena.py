"""Blind A/B arena core: configurations and their labels, drawing a pair, stored votes → battles, DPO export.

A configuration (app.configuration.Configuration) is what answers in one panel: the base model or a LoRA adapter,
an optional persona, optional RAG over a knowledge base, and sampling. Two distinct configurations from the user's
pool answer the same prompt as anonymous panels A (left) and B (right); the user votes; `app.store` keeps the
vote; `app.ratings` rates the labels.
No UI here (see docs/arena.md for the API a Gradio tab uses). From the command line:

    .venv/bin/python -m app.arena ratings [--domain legal] [--both-bad drop]   # leaderboard of stored votes
    .venv/bin/python -m app.arena export prefs.jsonl [--domain legal] [--persona legal]   # TRL DPO data
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from app.config import ConfigError, load_settings
from app.configuration import Configuration
from app.content import NAME_PATTERN, load_persona
from app.ratings import Battle, BothBad, leaderboard
from app.store import StoreError, Vote, VoteStore


class ArenaError(ValueError):
    """The arena cannot do what was asked (e.g. a pool of fewer than two configurations); ready to show."""


def config_label(config: Mapping[str, Any]) -> str:
    """The label of a stored configuration dict."""
    try:
        return Configuration.model_validate(config).label
    except ValidationError as exc:
        raise ArenaError(f"stored configuration {dict(config)!r} is not an arena configuration: {exc}") from exc


def draw_pair(pool: Sequence[Configuration], rng: random.Random) -> tuple[Configuration, Configuration]:
    """Two different configurations from `pool`, in random order: the first is panel A (left).

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


def _system_prompt(personas_dir: Path, name: str) -> str:
    if not re.fullmatch(NAME_PATTERN, name):
        raise ArenaError(f"persona name {name!r}: expected letters, digits, '-' or '_' (a file in {personas_dir})")
    persona, problems = load_persona(personas_dir / f"{name}.yaml")
    if persona is None:
        raise ArenaError("; ".join(str(p) for p in problems))
    return persona.system_prompt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.arena", description="Arena votes: ratings and DPO export.")
    parser.add_argument("--db", help="votes database URL (default: arena.database_url, else arena.db in paths.data)")
    parser.add_argument("--domain", help="only votes cast in this domain")
    commands = parser.add_subparsers(dest="command", required=True)
    rate = commands.add_parser("ratings", help="print the leaderboard (Bradley–Terry with 95%% interval, Elo)")
    rate.add_argument("--both-bad", choices=["tie", "drop"], default="tie", help="how 'both bad' votes count")
    export = commands.add_parser("export", help="write decisive votes as TRL preference JSONL")
    export.add_argument("out", type=Path, help="output .jsonl file")
    export.add_argument("--persona", help="put this persona's system prompt in every prompt (conversational rows)")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
        with VoteStore(args.db) if args.db else VoteStore.from_settings(settings) as store:
            votes = store.votes(args.domain)
        if args.command == "ratings":
            _print_leaderboard(battles(votes), args.both_bad)
            return 0
        system = _system_prompt(settings.paths.personas, args.persona) if args.persona else None
        written = write_preferences(args.out, preference_records(votes, system))
    except (ConfigError, StoreError, ArenaError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {written} preference pair(s) to {args.out} (ties, both-bad and errored votes skipped)")
    return 0


def _print_leaderboard(played: list[Battle], both_bad: BothBad) -> None:
    rows = leaderboard(played, both_bad=both_bad)
    if not rows:
        print("no usable votes yet")
        return
    width = max(len(row.name) for row in rows)
    print(f"{'configuration':{width}}  rating  95% interval    elo   votes")
    for row in rows:
        interval = f"{row.interval.lower:5.0f} – {row.interval.upper:5.0f}" if row.interval else "n/a"
        print(f"{row.name:{width}}  {row.rating:6.0f}  {interval:13}  {row.elo:5.0f}  {row.votes:6}")


if __name__ == "__main__":
    sys.exit(main())
