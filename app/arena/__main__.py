"""The arena from the command line: the leaderboard of stored votes, and their DPO preference export.

.venv/bin/python -m app.arena ratings [--domain legal] [--both-bad drop]   # leaderboard of stored votes
.venv/bin/python -m app.arena export prefs.jsonl [--domain legal] [--persona legal]   # TRL DPO data
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from app.arena.leaderboard import groups_of, interval_text, leaderboard, rating_text
from app.arena.ratings import Battle, BothBad
from app.arena.rounds import ArenaError, battles, preference_records, write_preferences
from app.arena.store import StoreError, VoteStore
from app.config import ConfigError, load_settings
from app.content import NAME_PATTERN, load_persona


def _system_prompt(personas_dir: Path, name: str) -> str:
    if not re.fullmatch(NAME_PATTERN, name):
        raise ArenaError(f"persona name {name!r}: expected letters, digits, '-' or '_' (a file in {personas_dir})")
    persona, problems = load_persona(personas_dir / f"{name}.yaml")
    if persona is None:
        raise ArenaError("; ".join(str(p) for p in problems))
    return persona.system_prompt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.arena", description="Arena votes: ratings and DPO export.")
    parser.add_argument("--config", type=Path, help="YAML settings file (default: ./config.yaml if present)")
    parser.add_argument("--db", help="votes database URL (default: arena.database_url, else arena.db in paths.data)")
    parser.add_argument("--domain", help="only votes cast in this domain")
    commands = parser.add_subparsers(dest="command", required=True)
    rate = commands.add_parser(
        "ratings",
        help="print the leaderboard (Bradley–Terry with 95%% interval, Elo; by group of configurations that met)",
    )
    rate.add_argument("--both-bad", choices=["tie", "drop"], default="tie", help="how 'both bad' votes count")
    export = commands.add_parser("export", help="write decisive votes as TRL preference JSONL")
    export.add_argument("out", type=Path, help="output .jsonl file")
    export.add_argument("--persona", help="put this persona's system prompt in every prompt (conversational rows)")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
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
    """The standings by group (a heading per group when there are several), as the Leaderboard tab shows them."""
    rows = leaderboard(played, both_bad=both_bad)
    if not rows:
        print("no usable votes yet")
        return
    groups = groups_of(rows)
    width = max(len(row.name) for row in rows)
    rating_width = max(len(rating_text(row)) for row in rows)
    interval_width = max(13, *(len(interval_text(row)) for row in rows))
    print(
        f"{'configuration':{width}}  rank  {'rating':>{rating_width}}  {'95% interval':{interval_width}}    elo   votes"
    )
    for row in rows:
        if groups > 1 and row.rank == 1:
            print(f"-- group {row.group} of {groups}: never met the other groups, so compare ratings only within it")
        print(
            f"{row.name:{width}}  {row.rank:4}  {rating_text(row):>{rating_width}}  "
            f"{interval_text(row):{interval_width}}  {row.elo:5.0f}  {row.votes:6}"
        )


if __name__ == "__main__":
    sys.exit(main())
