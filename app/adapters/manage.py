"""Adapters in the running server: list, load and unload them through ServingClient, and merge adapters with PEFT's
`add_weighted_adapter` into a new folder that is then loaded. Every folder is validated (app.adapters.validate) first.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from app.adapters.validate import (
    CONFIG_FILE,
    AdapterError,
    AdapterInfo,
    allowed_roots,
    check_name,
    folder_size,
    read_lora_config,
    validate_for,
)
from app.config import Settings
from app.model_cards import merged_card
from app.serving.client import ServingClient, ServingError

# PEFT add_weighted_adapter combination types we offer (see docs/adapters-management.md for why these).
COMBINATIONS = ("linear", "ties", "dare_linear", "cat")
NEEDS_DENSITY = frozenset({"ties", "dare_linear"})
TABLE_HEADERS = ["name", "kind", "base", "rank", "size", "source"]


async def table(client: ServingClient) -> list[list[str]]:
    """Rows (TABLE_HEADERS) for the base model and each loaded adapter; details come from folders we can read."""
    rows = []
    for model in await client.list_models():
        rank, size = "", ""
        source = Path(model.root) if model.root else None
        if source and source.is_dir():
            size = f"{folder_size(source) / 2**20:.1f} MB"
            with contextlib.suppress(AdapterError):
                rank = str(read_lora_config(source)["r"]) if model.is_adapter else ""
        kind = "adapter" if model.is_adapter else "base model"
        rows.append([model.id, kind, model.parent or "", rank, size, model.root or ""])
    return rows


async def load(client: ServingClient, settings: Settings, name: str, path: Path | str) -> AdapterInfo:
    """Validate the folder, then load it into the server as model `name`. On failure nothing stays registered."""
    info = validate_for(settings, path, name)
    if name in {model.id for model in await client.list_models()}:
        raise AdapterError(f"the server already has a model named '{name}': unload it first or choose another name")
    try:
        await client.load_adapter(name, str(info.path))
    except ServingError as exc:
        with contextlib.suppress(ServingError):  # undo a half-registered adapter
            if name in {model.id for model in await client.list_models()}:
                await client.unload_adapter(name)
        raise AdapterError(f"vLLM refused adapter '{name}' from {info.path}: {exc}") from exc
    return info


async def unload(client: ServingClient, name: str) -> None:
    models = {model.id: model for model in await client.list_models()}
    if name not in models:
        loaded = ", ".join(m for m, info in models.items() if info.is_adapter) or "none"
        raise AdapterError(f"no adapter named '{name}' is loaded (loaded adapters: {loaded})")
    if not models[name].is_adapter:
        raise AdapterError(f"'{name}' is the base model; only adapters can be unloaded")
    await client.unload_adapter(name)


# --- merging ----------------------------------------------------------------------------------------------------------


def parse_parents(specs: Sequence[str]) -> list[tuple[str, float]]:
    """["support=0.6", "finance=0.4"] (or one "support=0.6, finance=0.4") -> [("support", 0.6), ("finance", 0.4)]."""
    parents = []
    for spec in (part.strip() for item in specs for part in item.split(",")):
        ref, sep, weight = spec.rpartition("=")
        try:
            value = float(weight)
        except ValueError:
            value = math.nan
        if not sep or not ref.strip() or not math.isfinite(value):
            raise AdapterError(f"'{spec}': write each parent as NAME=WEIGHT, e.g. support=0.6")
        parents.append((ref.strip(), value))
    return parents


def find_adapter(ref: str, roots: Sequence[Path]) -> Path:
    """An adapter given by folder name (looked up in `roots`, in order) or by path."""
    if "/" in ref or ref.startswith("."):
        return Path(ref)
    for root in roots:
        if (root / ref / CONFIG_FILE).is_file():
            return root / ref
    raise AdapterError(f"no adapter folder named '{ref}' in {', '.join(str(root) for root in roots)}")


def merge_adapters(
    settings: Settings,
    parents: Sequence[tuple[str, float]],
    new_name: str,
    *,
    combination: str = "linear",
    density: float | None = None,
    out_root: Path | None = None,
    seed: int = 0,
) -> AdapterInfo:
    """Merge two or more adapters into a new adapter folder `out_root/new_name` (default data/adapters); validate it.

    The folder appears complete or not at all: it is written beside its destination, then renamed into place.
    """
    check_name(new_name)
    roots = allowed_roots(settings)
    if len(parents) < 2:
        raise AdapterError("merging needs at least two parent adapters")
    if combination not in COMBINATIONS:
        raise AdapterError(f"combination type {combination!r} is not one of {', '.join(COMBINATIONS)}")
    if combination in NEEDS_DENSITY and not (density is not None and 0 < density <= 1):
        raise AdapterError(f"'{combination}' needs a density between 0 (exclusive) and 1, got {density}")
    infos = [validate_for(settings, find_adapter(ref, roots)) for ref, _ in parents]
    if len({info.path for info in infos}) < len(infos):
        raise AdapterError("each parent adapter may appear only once")
    ranks = [info.rank for info in infos]
    if combination != "cat" and len(set(ranks)) > 1:
        raise AdapterError(
            f"'{combination}' needs parents of equal rank, got "
            f"{', '.join(f'{info.name} r={info.rank}' for info in infos)}; "
            "use 'cat' (its rank is the sum) or retrain one parent"
        )
    new_rank = sum(ranks) if combination == "cat" else ranks[0]
    if new_rank > settings.vllm.max_lora_rank:
        raise AdapterError(
            f"the merged rank {new_rank} would exceed the server's maximum {settings.vllm.max_lora_rank}"
        )
    out_root = out_root or roots[1]
    if out_root.resolve() not in {root.resolve() for root in roots}:
        raise AdapterError(f"merged adapters go into {' or '.join(str(root) for root in roots)}, not {out_root}")
    destination = out_root / new_name
    if destination.exists():
        raise AdapterError(f"{destination} already exists: choose another name or delete it first")

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)  # dare_linear prunes at random
    base = AutoModelForCausalLM.from_pretrained(settings.model.path, dtype=torch.float32)
    names = [f"parent{index}" for index in range(len(infos))]
    model = PeftModel.from_pretrained(base, str(infos[0].path), adapter_name=names[0])
    for adapter_name, info in zip(names[1:], infos[1:], strict=True):
        model.load_adapter(str(info.path), adapter_name=adapter_name)
    weights = [weight for _, weight in parents]
    try:
        model.add_weighted_adapter(names, weights, new_name, combination_type=combination, density=density)
    except ValueError as exc:  # PEFT's own checks, e.g. parents modifying different module types
        raise AdapterError(f"PEFT could not merge these adapters: {exc}") from exc
    out_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{new_name}-", dir=out_root))
    try:
        # Embeddings are not trained here, so nothing to save of them; "auto" would look the base model up on the hub.
        model.save_pretrained(str(staging), selected_adapters=[new_name], save_embedding_layers=False)
        parent_weights = [(info.name, weight) for info, weight in zip(infos, weights, strict=True)]
        card = merged_card(new_name, infos[0].base_model, parent_weights, combination,
                           density if combination in NEEDS_DENSITY else None)  # fmt: skip
        (staging / new_name / "README.md").write_text(card, encoding="utf-8")
        (staging / new_name).rename(destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return validate_for(settings, destination)


async def merge_and_load(
    client: ServingClient,
    settings: Settings,
    parents: Sequence[tuple[str, float]],
    new_name: str,
    *,
    combination: str = "linear",
    density: float | None = None,
    out_root: Path | None = None,
) -> AdapterInfo:
    """merge_adapters (in a worker thread: it takes seconds of CPU), then load the result into the server."""
    if new_name in {model.id for model in await client.list_models()}:
        raise AdapterError(f"the server already has a model named '{new_name}': choose another name")
    info = await asyncio.to_thread(
        merge_adapters, settings, parents, new_name, combination=combination, density=density, out_root=out_root
    )
    return await load(client, settings, new_name, info.path)
