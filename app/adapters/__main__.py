"""LoRA adapters from the command line: list, validate, load, unload and merge.

    python -m app.adapters list                        # the base model and loaded adapters: base, rank, size, source
    python -m app.adapters validate PATH               # check an adapter folder without loading it
    python -m app.adapters load NAME PATH              # validate, then load into the running server as model NAME
    python -m app.adapters unload NAME
    python -m app.adapters merge NEW support=0.5 finance=0.5 --combination linear   # PEFT add_weighted_adapter

Every command takes --config, --vllm-url (the server) and --model (the served model's folder, used to check that an
adapter fits it). Anything unsafe or incompatible is refused with one `AdapterError` message before vLLM sees it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from app.adapters.manage import (
    COMBINATIONS,
    TABLE_HEADERS,
    load,
    merge_adapters,
    merge_and_load,
    parse_parents,
    table,
    unload,
)
from app.adapters.validate import AdapterError, validate_for
from app.config import ConfigError, Settings, load_settings
from app.serving.client import ServingClient, ServingError


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m app.adapters", description="Manage LoRA adapters in vLLM.")
    parser.add_argument("--config", type=Path, help="YAML settings file (default: ./config.yaml if present)")
    parser.add_argument("--vllm-url", help="OpenAI base URL of the running vLLM server (default: from settings)")
    parser.add_argument("--model", help="local folder of the served base model, to check adapters against")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="list the base model and the loaded adapters")
    validate = commands.add_parser("validate", help="check an adapter folder without loading it")
    validate.add_argument("path", type=Path)
    load_cmd = commands.add_parser("load", help="validate an adapter folder and load it into the server")
    load_cmd.add_argument("name")
    load_cmd.add_argument("path", type=Path)
    commands.add_parser("unload", help="remove a loaded adapter from the server").add_argument("name")
    merge = commands.add_parser("merge", help="merge adapters into a new one (PEFT add_weighted_adapter) and load it")
    merge.add_argument("name", help="name of the new adapter")
    merge.add_argument("parents", nargs="+", help="NAME=WEIGHT (adapter folder name or path), two or more")
    merge.add_argument("--combination", choices=COMBINATIONS, default="linear")
    merge.add_argument("--density", type=float, help="share of weights kept, for ties and dare_linear (0-1]")
    merge.add_argument("--out", type=Path, help="paths.adapters or paths.data/adapters (the default)")
    merge.add_argument("--no-load", action="store_true", help="only write the folder; do not load it")
    return parser.parse_args(argv)


def _merge_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"combination": args.combination, "density": args.density, "out_root": args.out}


async def run(args: argparse.Namespace, settings: Settings) -> str:
    """Carry out one command; return what to print."""
    if args.command == "validate":
        info = validate_for(settings, args.path)
        size = f"{info.size_bytes / 2**20:.1f} MB"
        return f"OK: {info.name} at {info.path} (rank {info.rank}, {size}, base model {info.base_model})"
    if args.command == "merge" and args.no_load:
        info = merge_adapters(settings, parse_parents(args.parents), args.name, **_merge_options(args))
        return f"merged into {info.path} (not loaded)"
    client = ServingClient.from_settings(settings)
    try:
        if args.command == "list":
            rows = [TABLE_HEADERS, *await table(client)]
            widths = [max(len(row[col]) for row in rows) for col in range(len(TABLE_HEADERS))]
            return "\n".join(
                "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows
            )
        if args.command == "load":
            info = await load(client, settings, args.name, args.path)
            return f"loaded '{info.name}' from {info.path} (rank {info.rank})"
        if args.command == "unload":
            await unload(client, args.name)
            return f"unloaded '{args.name}'"
        parents = parse_parents(args.parents)
        info = await merge_and_load(client, settings, parents, args.name, **_merge_options(args))
        return f"merged into {info.path} and loaded as '{info.name}'"
    finally:
        await client.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = load_settings(args.config, {"vllm.url": args.vllm_url, "model.path": args.model})
        print(asyncio.run(run(args, settings)))
    except (ConfigError, AdapterError, ServingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
