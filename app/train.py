"""Fine-tune one LoRA adapter on adapters/<name>/ training data (train.yaml `data`) with PEFT and the transformers
Trainer.

The chat template of the base model renders each example; only the assistant turns (content and end-of-turn
token) carry loss, the system and user turns are masked with -100. A seeded share of the examples is held out for
eval loss. Checkpoints go to <paths.data>/train/<name> (`--resume` continues from the last one); the result is a
standard PEFT folder (adapter_config.json, adapter_model.safetensors in bfloat16) plus a model card README.md.
Hyper-parameters come from adapters/<name>/train.yaml (keys and defaults: `TrainConfig`, docs/adapters.md).

    python -m app.train legal [--hparams adapters/legal/train.yaml] [--resume] [--max-steps N] [--limit N] [--out DIR]

Exit status 2: bad adapter name, bad train.yaml, bad training data or missing base model (message on stderr).
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.config import ConfigError, Settings, load_settings
from app.content import NAME_PATTERN, TrainExample, load_jsonl
from app.hardware import describe
from app.model_cards import trained_card
from app.model_prep import DEFAULT_OUT

HUB_BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what `make model` converts into DEFAULT_OUT
HUB_ID_PATTERN = re.compile(r"^[\w.-]+/[\w.-]+$")
IGNORE_INDEX = -100  # label value the loss skips (transformers / PyTorch convention)
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class TrainError(Exception):
    """A reason to refuse training; the message is ready to show to a user as is."""


class TrainConfig(BaseModel):
    """Hyper-parameters from adapters/<name>/train.yaml; every key is optional."""

    model_config = ConfigDict(extra="forbid")

    rank: int = Field(16, ge=1, le=16, description="LoRA rank r (vLLM serves ranks up to 16 here)")
    alpha: int = Field(32, ge=1, description="LoRA alpha; the update is scaled by alpha / rank")
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: list(ALL_LINEAR), min_length=1)
    epochs: float = Field(2.0, gt=0)
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps (overrides epochs)")
    learning_rate: float = Field(3e-4, gt=0, le=1e-2)
    warmup: float = Field(0.05, ge=0, description="warm-up: a fraction of all steps if < 1, else a step count")
    max_length: int = Field(512, ge=32, le=4096, description="tokens per example; longer ones are cut")
    batch_size: int = Field(4, ge=1)
    grad_accumulation: int = Field(2, ge=1)
    keep_system_prompt: bool = Field(
        False,
        description="train with each example's system prompt; off, the adapter must carry the persona's voice on its"
        " own (what 'adapter vs persona prompt' compares) and training is about twice as fast",
    )
    seed: int = 42
    eval_fraction: float = Field(0.1, ge=0, lt=0.5, description="share of examples held out for eval loss")
    save_steps: int = Field(25, ge=1, description="checkpoint (and eval) every this many optimizer steps")
    logging_steps: int = Field(5, ge=1)
    data: list[str] = Field(
        default_factory=lambda: ["train.jsonl"],
        min_length=1,
        description="the adapter folder's training files to mix, e.g. [train.jsonl, train_kb.jsonl] (KB-grounded "
        "question-answer pairs, several phrasings per fact)",
    )
    neftune_noise_alpha: float | None = Field(
        None, gt=0, description="NEFTune: noise on the input embeddings while training (transformers); e.g. 5"
    )


@dataclass
class Encoded:
    """One tokenised example: ids and labels (-100 outside assistant turns)."""

    input_ids: list[int]
    labels: list[int]


def load_train_config(path: Path | None) -> TrainConfig:
    """Read and validate a train.yaml; a missing file means all defaults."""
    if path is None or not path.is_file():
        return TrainConfig()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise TrainError(f"{path}: cannot read YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise TrainError(f"{path}: expected a mapping of hyper-parameters (rank, alpha, epochs, ...)")
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        lines = [f"{path}: {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        raise TrainError("\n".join(lines)) from None


def check_name(name: str) -> str:
    if not re.fullmatch(NAME_PATTERN, name):
        raise TrainError(f"adapter name {name!r}: use only letters, digits, '-' and '_' (it names a folder)")
    return name


def check_base_model(path: str) -> str:
    """A local folder must exist; anything else must look like a hub id (org/name)."""
    if Path(path).is_dir() or (HUB_ID_PATTERN.fullmatch(path) and not Path(path).exists()):
        return path
    raise TrainError(f"base model folder {path} not found: run `make model` (or set model.path in config.yaml)")


def load_examples(path: Path) -> list[TrainExample]:
    if not path.is_file():
        raise TrainError(f"{path}: training data not found (format: docs/content.md)")
    examples, problems = load_jsonl(path, TrainExample)
    if problems:
        raise TrainError("\n".join(str(p) for p in problems) + f"\n{path}: fix the line(s) above, then train again")
    if len(examples) < 2:
        raise TrainError(f"{path}: need at least 2 examples to train and evaluate, found {len(examples)}")
    return examples


def split(examples: list[Any], eval_fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """Seeded shuffle, then hold out max(1, fraction) examples for eval (none if the fraction is 0)."""
    shuffled = list(examples)
    random.Random(seed).shuffle(shuffled)
    n_eval = max(1, round(len(shuffled) * eval_fraction)) if eval_fraction > 0 else 0
    return shuffled[n_eval:], shuffled[:n_eval]


def assistant_spans(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """Render the conversation and return the character spans of each assistant reply (with its end token).

    Each span starts after the rendered generation prompt that precedes the reply and ends where the rendering of
    the conversation up to and including the reply ends (trailing whitespace excluded).
    """
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        upto = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False).rstrip()
        if not (upto.startswith(prompt) and text.startswith(upto)):
            raise TrainError("the chat template does not render conversations incrementally; cannot mask labels")
        spans.append((len(prompt), len(upto)))
    return text, spans


def encode(tokenizer: Any, example: TrainExample, max_length: int, keep_system: bool = True) -> Encoded:
    """Tokenise one example; labels copy the ids inside assistant spans and are -100 elsewhere."""
    messages = [m.model_dump() for m in example.messages if keep_system or m.role != "system"]
    text, spans = assistant_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, truncation=True, max_length=max_length)
    labels = [
        token if any(lo <= start and end <= hi and end > start for lo, hi in spans) else IGNORE_INDEX
        for token, (start, end) in zip(enc["input_ids"], enc["offset_mapping"], strict=True)
    ]
    return Encoded(enc["input_ids"], labels)


def encode_all(tokenizer: Any, examples: list[TrainExample], config: TrainConfig) -> list[dict[str, list[int]]]:
    """Encode examples, dropping any whose assistant reply was cut off entirely by max_length."""
    rows = [encode(tokenizer, ex, config.max_length, config.keep_system_prompt) for ex in examples]
    kept = [{"input_ids": r.input_ids, "labels": r.labels} for r in rows if any(t != IGNORE_INDEX for t in r.labels)]
    if len(kept) < len(rows):
        print(f"note: {len(rows) - len(kept)} example(s) dropped: no reply left within max_length", file=sys.stderr)
    return kept


def portable_base(model_path: str) -> str:
    """The hub id for the local conversion of SmolLM2 made by `make model`; any other base is kept as given."""
    return HUB_BASE_MODEL if Path(model_path).resolve() == DEFAULT_OUT.resolve() else model_path


def train(
    name: str,
    settings: Settings,
    config: TrainConfig,
    out: Path,
    *,
    resume: bool = False,
    max_steps: int | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """Train adapter `name` into `out`; returns the facts written to the model card."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
        set_seed,
    )
    from transformers.trainer_utils import get_last_checkpoint

    check_name(name)
    base = check_base_model(settings.model.path)
    folder = settings.paths.adapters / name
    examples = [example for file in config.data for example in load_examples(folder / file)][:limit]
    checkpoints = settings.paths.data / "train" / name
    last = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    if resume and last is None:
        raise TrainError(f"--resume: no checkpoint under {checkpoints}; train without --resume first")
    if not resume and checkpoints.exists():
        shutil.rmtree(checkpoints)  # a fresh run must not mix with an older one's checkpoints

    set_seed(config.seed)
    from datasets import Dataset

    tokenizer = AutoTokenizer.from_pretrained(base)
    train_examples, eval_examples = split(examples, config.eval_fraction, config.seed)
    train_rows = encode_all(tokenizer, train_examples, config)
    eval_rows = encode_all(tokenizer, eval_examples, config)
    base_model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    lora = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=config.target_modules,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(base_model, lora)
    model.print_trainable_parameters()
    args = TrainingArguments(
        output_dir=str(checkpoints),
        num_train_epochs=config.epochs,
        max_steps=max_steps or config.max_steps or -1,
        learning_rate=config.learning_rate,
        warmup_steps=config.warmup,
        lr_scheduler_type="cosine",
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accumulation,
        train_sampling_strategy="group_by_length",
        eval_strategy="steps" if eval_rows else "no",
        eval_steps=config.save_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=2,
        logging_steps=config.logging_steps,
        logging_first_step=True,
        seed=config.seed,
        data_seed=config.seed,
        dataloader_pin_memory=torch.cuda.is_available(),
        report_to="none",
        neftune_noise_alpha=config.neftune_noise_alpha,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
        data_collator=DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE_INDEX, padding=True),
    )
    eval_before = trainer.evaluate()["eval_loss"] if eval_rows and not resume else float("nan")
    started = time.monotonic()
    result = trainer.train(resume_from_checkpoint=last if resume else None)
    minutes = (time.monotonic() - started) / 60
    eval_after = trainer.evaluate()["eval_loss"] if eval_rows else float("nan")
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]

    model.to(torch.bfloat16)
    model.peft_config["default"].base_model_name_or_path = portable_base(base)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), save_embedding_layers=False)  # embeddings are not trained; no hub lookup
    facts = {
        "base": portable_base(base),
        "local_base": base,
        "n_total": len(examples),
        "data": ", ".join(config.data),
        "n_train": len(train_rows),
        "n_eval": len(eval_rows),
        "eval_loss_before": eval_before,
        "eval_loss": eval_after,
        "train_loss": losses[-1] if losses else result.training_loss,
        "first_train_loss": losses[0] if losses else float("nan"),
        "steps": trainer.state.global_step,
        "minutes": minutes,
        "hardware": f"{describe()}; torch threads: {torch.get_num_threads()}",
        "date": dt.date.today().isoformat(),
    }
    (out / "README.md").write_text(trained_card(name, config.model_dump(), facts), encoding="utf-8")
    return facts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.train", description="Train a LoRA adapter (PEFT).")
    parser.add_argument("adapter", help="adapter name: a folder under adapters/ holding train.jsonl")
    parser.add_argument("--config", type=Path, help="YAML settings file (default: ./config.yaml if present)")
    parser.add_argument("--hparams", type=Path, help="hyper-parameters (default adapters/<adapter>/train.yaml)")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    parser.add_argument("--max-steps", type=int, help="stop after this many optimizer steps (overrides epochs)")
    parser.add_argument("--limit", type=int, help="use only the first N examples of the training data")
    parser.add_argument("--out", type=Path, help="output folder (default adapters/<adapter>)")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
        name = check_name(args.adapter)
        folder = settings.paths.adapters / name
        if args.hparams and not args.hparams.is_file():
            raise TrainError(f"{args.hparams}: hyper-parameter file not found")
        config = load_train_config(args.hparams or folder / "train.yaml")
        facts = train(
            name,
            settings,
            config,
            args.out or folder,
            resume=args.resume,
            max_steps=args.max_steps,
            limit=args.limit,
        )
    except (TrainError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"{name}: eval loss {facts['eval_loss_before']:.3f} -> {facts['eval_loss']:.3f}, "
        f"{facts['steps']} steps in {facts['minutes']:.1f} min; adapter written to {args.out or folder}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
