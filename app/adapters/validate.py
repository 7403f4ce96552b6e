"""Validating a LoRA adapter folder before vLLM sees it: a safe name and path, a PEFT LoRA config, finite safetensors
weights (pickles refused), a rank the server takes, and shapes that fit the served model. The rules are in
docs/adapters-management.md; `servable_adapters` applies them to adapters/ at start-up.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from app.config import Settings
from app.content import NAME_PATTERN

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PICKLED_WEIGHTS = ("adapter_model.bin", "adapter_model.pt")
# PEFT key of one LoRA factor: base_model.model.<module>.lora_A.weight (Linear) or .lora_embedding_A (Embedding).
_LORA_KEY = re.compile(r"(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<emb>embedding_)?(?P<ab>[AB])(?:\.weight)?")


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
    if not re.fullmatch(NAME_PATTERN, name or ""):
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


def discover_adapters(adapters_dir: Path) -> dict[str, Path]:
    """Adapter folders (those holding a PEFT `adapter_config.json`) to load at server start, by name."""
    if not adapters_dir.is_dir():
        return {}
    return {
        folder.name: folder.resolve()
        for folder in sorted(adapters_dir.iterdir())
        if (folder / "adapter_config.json").is_file()
    }


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
