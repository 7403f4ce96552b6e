"""LoRA adapter management: validate an adapter folder, load/unload it in the running vLLM server, merge adapters.

    python -m app.adapters list                        # the base model and loaded adapters: base, rank, size, source
    python -m app.adapters validate PATH               # check an adapter folder without loading it
    python -m app.adapters load NAME PATH              # validate, then load into the running server as model NAME
    python -m app.adapters unload NAME
    python -m app.adapters merge NEW support=0.5 finance=0.5 --combination linear   # PEFT add_weighted_adapter

Every command takes --config, --vllm-url (the server) and --model (the served model's folder, used to check that an
adapter fits it). Anything unsafe or incompatible is refused with one `AdapterError` message before vLLM sees it;
the rules are in docs/adapters-management.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import re
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from app.config import ConfigError, Settings, load_settings
from app.serving.client import ServingClient, ServingError
from app.serving.process import discover_adapters

NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PICKLED_WEIGHTS = ("adapter_model.bin", "adapter_model.pt")
# PEFT add_weighted_adapter combination types we offer (see docs/adapters-management.md for why these).
COMBINATIONS = ("linear", "ties", "dare_linear", "cat")
NEEDS_DENSITY = frozenset({"ties", "dare_linear"})
# PEFT key of one LoRA factor: base_model.model.<module>.lora_A.weight (Linear) or .lora_embedding_A (Embedding).
_LORA_KEY = re.compile(r"(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<emb>embedding_)?(?P<ab>[AB])(?:\.weight)?")
TABLE_HEADERS = ["name", "kind", "base", "rank", "size", "source"]


class AdapterError(ValueError):
    """An adapter was refused or an adapter operation failed; the message says why and what to do."""


@dataclass(frozen=True)
class AdapterInfo:
    """A validated adapter folder."""

    name: str
    path: Path  # resolved, inside an allowed root
    base_model: str | None  # base_model_name_or_path from adapter_config.json
    rank: int
    size_bytes: int


@dataclass
class LoraPair:
    """Shapes of one module's LoRA factors: Linear A (r, in) and B (out, r); Embedding A (r, vocab), B (dim, r)."""

    embedding: bool = False
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # "A" and "B"

    @property
    def rank(self) -> int:
        return self.shapes["A"][0]

    @property
    def features(self) -> tuple[int, int]:
        """(in, out) features of the module the pair modifies."""
        return self.shapes["A"][1], self.shapes["B"][0]


def allowed_roots(settings: Settings) -> list[Path]:
    """Folders adapters may be loaded from: the shipped adapters and the app's own (merged ones go there)."""
    return [settings.paths.adapters, settings.paths.data / "adapters"]


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name or ""):
        raise AdapterError(f"adapter name {name!r} is not allowed: use 1-64 letters, digits, '-' or '_'")
    return name


def _inside(path: Path, roots: Sequence[Path]) -> Path:
    """`path` with symlinks resolved, which must lie strictly inside one of `roots` (after resolving them too)."""
    try:
        real = Path(path).resolve(strict=True)
    except (OSError, RuntimeError):
        raise AdapterError(f"{path}: no such adapter folder") from None
    real_roots = [Path(root).resolve() for root in roots]
    if not any(real != root and real.is_relative_to(root) for root in real_roots):
        allowed = ", ".join(str(root) for root in real_roots)
        raise AdapterError(f"{path}: resolves to {real}, outside the adapter folders ({allowed}); copy it there first")
    return real


def _file(folder: Path, name: str) -> Path | None:
    """`folder/name` if it is a file whose real location is inside `folder` (no symlink escapes), else None."""
    path = folder / name
    if not path.is_file():
        return None
    if not path.resolve().is_relative_to(folder):
        raise AdapterError(f"{path}: is a link to a file outside the adapter folder")
    return path


def read_lora_config(folder: Path) -> dict[str, Any]:
    """adapter_config.json of a PEFT LoRA adapter, checked just enough to trust its fields."""
    path = _file(folder, CONFIG_FILE)
    if path is None:
        raise AdapterError(f"{folder}: no {CONFIG_FILE}; is this a PEFT adapter folder?")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        found = config.get("peft_type") if isinstance(config, dict) else type(config).__name__
        raise AdapterError(f"{path}: not a LoRA adapter (peft_type is {found!r}, expected 'LORA')")
    ranks = [config.get("r"), *(config.get("rank_pattern") or {}).values()]
    if not all(isinstance(r, int) and r > 0 for r in ranks):
        raise AdapterError(f"{path}: 'r' and 'rank_pattern' must hold positive integers, got {ranks}")
    return config


def read_lora_shapes(folder: Path) -> dict[str, LoraPair]:
    """The LoRA pairs in adapter_model.safetensors by module name, after checking that every tensor is finite.

    Pickled weights (adapter_model.bin / .pt) are refused, never opened: unpickling can run arbitrary code.
    """
    path = _file(folder, WEIGHTS_FILE)
    if path is None:
        pickled = [name for name in PICKLED_WEIGHTS if (folder / name).exists()]
        if pickled:
            raise AdapterError(
                f"{folder}: only pickled weights ({pickled[0]}), which are refused because loading a pickle can run "
                "code; re-save the adapter with PEFT's save_pretrained (safetensors is its default)"
            )
        raise AdapterError(f"{folder}: the weights file {WEIGHTS_FILE} is missing")
    pairs: dict[str, LoraPair] = {}
    try:
        with safe_open(path, framework="pt") as weights:
            for key in weights.keys():  # noqa: SIM118 - safe_open has no __iter__
                tensor = weights.get_tensor(key)
                if not torch.isfinite(tensor).all():
                    raise AdapterError(f"{path}: tensor {key} holds NaN or infinite values")
                match = _LORA_KEY.fullmatch(key)
                if match:
                    pair = pairs.setdefault(match["module"], LoraPair(embedding=bool(match["emb"])))
                    pair.shapes[match["ab"]] = tuple(tensor.shape)
    except (SafetensorError, OSError) as exc:
        raise AdapterError(f"{path}: not a readable safetensors file ({exc})") from None
    if not pairs:
        raise AdapterError(f"{path}: holds no LoRA tensors (lora_A / lora_B)")
    unpaired = sorted(module for module, pair in pairs.items() if set(pair.shapes) != {"A", "B"})
    if unpaired:
        raise AdapterError(f"{path}: LoRA factors come in A/B pairs, but {unpaired[0]} has only one")
    return pairs


def _served_config(served: Path | str | Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, tuple[int, ...]]]:
    """The served model's config.json and, when its folder holds safetensors weights, their shapes by name."""
    if isinstance(served, Mapping):
        return dict(served), {}
    path = Path(served)
    config_path = path / "config.json" if path.is_dir() else path
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise AdapterError(
            f"cannot check adapters against the served model: {config_path} is not a readable config.json ({exc}); "
            "pass the served model's local folder (--model / model.path)"
        ) from None
    shapes: dict[str, tuple[int, ...]] = {}
    for weights in sorted(path.glob("*.safetensors")) if path.is_dir() else []:
        with safe_open(weights, framework="pt") as model:
            shapes.update({key: tuple(model.get_slice(key).get_shape()) for key in model.keys()})  # noqa: SIM118
    return config, shapes


def _describe_model(config: Mapping[str, Any]) -> str:
    return f"{(config.get('architectures') or ['?'])[0]}, hidden size {config.get('hidden_size', '?')}"


def check_compatible(
    lora_config: Mapping[str, Any],
    pairs: Mapping[str, LoraPair],
    served: Path | str | Mapping[str, Any],
) -> None:
    """Raise AdapterError unless the adapter fits the served model.

    First the adapter's own base model config, when that folder is at hand (architecture and hidden size); then every
    LoRA pair against the served weight it modifies (in and out features), or, with only a config, the hidden size.
    """
    served_config, served_shapes = _served_config(served)
    base = lora_config.get("base_model_name_or_path")
    base_config_path = Path(base) / "config.json" if isinstance(base, str) and base else None
    if base_config_path and base_config_path.is_file():
        with contextlib.suppress(OSError, json.JSONDecodeError, AttributeError):  # unreadable: the shapes decide
            base_config = json.loads(base_config_path.read_text(encoding="utf-8"))
            keys = ("architectures", "hidden_size")
            if any(base_config.get(key) != served_config.get(key) for key in keys):
                raise AdapterError(
                    f"adapter was trained on {base} ({_describe_model(base_config)}) but the server runs "
                    f"{_describe_model(served_config)}: an adapter only works on the base model it was trained on"
                )
    hidden = served_config.get("hidden_size")
    for module, pair in sorted(pairs.items()):
        lora_in, lora_out = pair.features
        if served_shapes:
            weight = served_shapes.get(f"{module}.weight")
            if weight is None or len(weight) != 2:
                raise AdapterError(
                    f"adapter modifies {module}, which the served model ({_describe_model(served_config)}) lacks"
                )
            # Linear weights are (out, in); an embedding table is (vocab, dim), which its LoRA maps vocab -> dim.
            fits = (lora_in, lora_out) == (weight if pair.embedding else weight[::-1])
        else:
            fits = hidden in (lora_in, lora_out)
        if not fits:
            raise AdapterError(
                f"adapter does not fit the served model ({_describe_model(served_config)}): its {module} LoRA maps "
                f"{lora_in} -> {lora_out} features; it was trained on a different base model"
            )


def folder_size(folder: Path) -> int:
    return sum(item.stat().st_size for item in folder.iterdir() if item.is_file())


def validate_adapter(
    path: Path | str,
    served: Path | str | Mapping[str, Any],
    max_lora_rank: int,
    roots: Sequence[Path],
    name: str | None = None,
) -> AdapterInfo:
    """Check an adapter folder before it goes anywhere near vLLM; raise AdapterError with the first problem.

    `served` is the served model's folder (or its config.json, or that config as a dict); `name` defaults to the
    folder's name.
    """
    name = check_name(Path(path).name if name is None else name)
    folder = _inside(Path(path), roots)
    if not folder.is_dir():
        raise AdapterError(f"{path}: not a folder (an adapter is a folder with {CONFIG_FILE} and {WEIGHTS_FILE})")
    config = read_lora_config(folder)
    pairs = read_lora_shapes(folder)
    rank = max(config["r"], *(config.get("rank_pattern") or {}).values(), *(pair.rank for pair in pairs.values()))
    if rank > max_lora_rank:
        raise AdapterError(
            f"{path}: LoRA rank {rank} is above the server's maximum {max_lora_rank} (vllm.max_lora_rank; the server "
            "must be restarted with a higher --max-lora-rank to take it)"
        )
    check_compatible(config, pairs, served)
    return AdapterInfo(name, folder, config.get("base_model_name_or_path"), rank, folder_size(folder))


def validate_for(settings: Settings, path: Path | str, name: str | None = None) -> AdapterInfo:
    """validate_adapter with the limits and folders of `settings`."""
    return validate_adapter(path, settings.model.path, settings.vllm.max_lora_rank, allowed_roots(settings), name)


def servable_adapters(settings: Settings) -> tuple[dict[str, Path], list[str]]:
    """The adapter folders under paths.adapters that pass validation, and one warning per folder that does not.

    Used at start-up: a broken folder must not stop vLLM from starting with the others.
    """
    good: dict[str, Path] = {}
    warnings = []
    for name, path in discover_adapters(settings.paths.adapters).items():
        try:
            good[name] = validate_for(settings, path, name).path
        except AdapterError as exc:
            warnings.append(f"adapter '{name}' not loaded: {exc}")
    return good, warnings


# --- the running server ---------------------------------------------------------------------------------------------


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


def model_card(
    name: str, base: str | None, parents: Sequence[tuple[str, float]], combination: str, density: float | None
) -> str:
    lines = "\n".join(f"| {parent} | {weight:g} |" for parent, weight in parents)
    density_line = f"- density: {density:g}\n" if combination in NEEDS_DENSITY else ""
    return (
        f"---\nbase_model: {base}\nlibrary_name: peft\ntags: [lora, merged, adapter-arena]\n---\n\n"
        f"# {name}\n\nA LoRA adapter made by Adapter Arena by merging other adapters with PEFT's "
        f"`add_weighted_adapter`.\n\n| Parent | Weight |\n|---|---|\n{lines}\n\n"
        f"- combination type: `{combination}`\n{density_line}\n"
        "Demo material made from demo adapters: not professional advice.\n"
    )


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
        model.save_pretrained(str(staging), selected_adapters=[new_name])
        card = model_card(new_name, infos[0].base_model, [(i.name, w) for i, w in zip(infos, weights, strict=True)],
                          combination, density)  # fmt: skip
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


# --- command line ---------------------------------------------------------------------------------------------------


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
