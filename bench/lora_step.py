"""One step's LoRA work at the served model's shapes: our grouped ops against vLLM's own CPU ops.

    .venv/bin/python bench/lora_step.py [--rounds 7] [--steps 20] [--label NAME]   (or: make bench-lora-step)

No server: the wrapped linear layers of one step (every layer's q/k/v, o, gate/up and down, at the shapes of the
base model in the settings, rank 16, four adapter slots, random bfloat16 weights) are called as vLLM calls them,
through `GroupedPunicaWrapperCPU` (app/serving/cpu_lora.py) and through vLLM's `PunicaWrapperCPU`, on one thread (what
vLLM's binding gives a 2-core machine). Cases are decoding steps (one adapter with one token, one adapter with two
tokens: two panels on one adapter, four adapters with one token each: four panels) and one prompt's prefill. Each
round times `--steps` steps of every case and both ops, in a shuffled order; the figure is the median over rounds, in
ms a step. It isolates the LoRA arithmetic that `make bench` measures inside whole requests (docs/performance.md), in
minutes instead of tens of minutes.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch
from vllm.lora.layers.utils import LoRAMapping
from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from app.config import load_settings
from app.serving.cpu_lora import GroupedPunicaWrapperCPU
from bench.bench_serving import REPO, machine, report

RANK, SLOTS = 16, 4
SLOT_IDS = [1, 2, 3, 4]  # LoRA ids in slots 0..3
PROMPT = 512  # tokens of the prefill case (a RAG prompt is ~900); it runs PROMPT_STEPS steps a round, not --steps
PROMPT_STEPS = 2
CASES = {  # case -> the LoRA id of each request in the step, and how many tokens each request has in it
    "one adapter, 1 token": ([2], 1),
    "one adapter, 2 tokens": ([2, 2], 1),
    "4 adapters, 1 token each": ([1, 2, 3, 4], 1),
    f"one adapter, a {PROMPT}-token prompt (prefill)": ([2], PROMPT),
}
OPS = {"vLLM's ops": PunicaWrapperCPU, "ours": GroupedPunicaWrapperCPU}
Layer = tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...], tuple[int, ...]]


def layers(config: dict[str, int], rng: torch.Generator) -> list[Layer]:
    """Every wrapped linear of one forward pass: (A stacked per slice, B stacked per slice, output slices)."""
    hidden, inner = config["hidden_size"], config["intermediate_size"]
    kv = hidden // config["num_attention_heads"] * config["num_key_value_heads"]
    shapes = [((hidden, kv, kv), hidden), ((hidden,), hidden), ((inner, inner), hidden), ((hidden,), inner)]
    made = []
    for _ in range(config["num_hidden_layers"]):
        for outs, width in shapes:
            a = tuple(torch.randn(SLOTS, 1, RANK, width, generator=rng).to(torch.bfloat16) * 0.05 for _ in outs)
            b = tuple(torch.randn(SLOTS, 1, out, RANK, generator=rng).to(torch.bfloat16) * 0.05 for out in outs)
            made.append((a, b, outs))
    return made


def step_ms(wrapper: PunicaWrapperCPU, model: list[Layer], tokens: int, steps: int) -> float:
    inputs = {a[0].shape[-1]: torch.randn(tokens, a[0].shape[-1]).to(torch.bfloat16) for a, _, _ in model}
    outputs = [torch.zeros(tokens, sum(outs), dtype=torch.bfloat16) for _, _, outs in model]
    started = time.perf_counter()
    for _ in range(steps):
        for (a, b, outs), y in zip(model, outputs, strict=True):
            wrapper.add_lora_linear(y, inputs[a[0].shape[-1]], a, b, 1.0, outs)
    return (time.perf_counter() - started) / steps * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7, help="measured rounds after one warm-up round")
    parser.add_argument("--steps", type=int, default=20, help="decoding steps per case and round")
    parser.add_argument("--label", default=time.strftime("lora-step-%Y%m%d-%H%M%S"), help="name of the JSON")
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "results", help="folder for the JSON")
    parser.set_defaults(tokens=1)  # each request decodes one token a step
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    model_dir = Path(load_settings().model.path)
    config = json.loads((model_dir / "config.json").read_text())
    model = layers(config, torch.Generator().manual_seed(0))
    wrappers = {}
    for case, (requests, length) in CASES.items():
        ids = tuple(lora_id for lora_id in requests for _ in range(length))
        mapping = LoRAMapping(index_mapping=ids, prompt_mapping=ids, is_prefill=length > 1)
        for ops, kind in OPS.items():
            wrapper = kind(2 * PROMPT, 16, "cpu")
            wrapper.update_metadata(mapping, list(SLOT_IDS), SLOTS, 1000)
            if isinstance(wrapper, GroupedPunicaWrapperCPU) and length > 1:  # as the plugin marks a prompt's tokens
                wrapper.mark_prompt_tokens(torch.ones(len(ids), dtype=torch.bool))
            wrappers[case, ops] = wrapper
    info = machine()
    order = list(wrappers)
    samples: dict[str, list[float]] = {f"{case} | {ops}": [] for case, ops in wrappers}
    rng = random.Random(0)
    for number in range(args.rounds + 1):
        rng.shuffle(order)
        for case, ops in order:
            requests, length = CASES[case]
            steps = PROMPT_STEPS if length > 1 else args.steps
            took = step_ms(wrappers[case, ops], model, length * len(requests), steps)
            if number:  # round 0 warms up (the fused weights are built on first use)
                samples[f"{case} | {ops}"].append(took)
    rows = ["| case | vLLM's ops | ours | ours / vLLM's |", "| --- | --- | --- | --- |"]
    figures = {}
    for case in CASES:
        theirs, ours = (statistics.median(samples[f"{case} | {ops}"]) for ops in OPS)
        figures[case] = {"vllm_ms": theirs, "ours_ms": ours}
        rows.append(f"| {case} | {theirs:.2f} ms | {ours:.2f} ms | {ours / theirs:.2f} |")
    heading = (
        f"LoRA work of one step, {config['num_hidden_layers']} layers x 4 wrapped linears of "
        f"{model_dir.name}, rank {RANK}, one thread, median of {args.rounds} rounds of {args.steps} steps "
        f"({PROMPT_STEPS} for the prompt)"
    )
    return report(args, info, {"figures": figures, "samples": samples}, heading, "\n".join(rows))


if __name__ == "__main__":
    sys.exit(main())
