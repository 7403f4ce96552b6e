"""Serving benchmark: what a LoRA adapter request costs next to a base request, on real vLLM servers.

    .venv/bin/python bench/bench_serving.py [--tokens 96] [--rounds 5] [--label after]   (or: make bench)
    .venv/bin/python bench/bench_serving.py --servers nolora,ours --cpu-cores 0-1   (a thread-binding choice)

Starts three vLLM servers on free loopback ports, one after the other, and keeps them up:
- `nolora`: the embedded model without `--enable-lora` (the reference every ratio divides by);
- `ours`: LoRA enabled, the shipped adapters of adapters/, our vLLM plugin loaded, torch.compile off (`vllm.compile:
  false`, how `make run` served until 2026-12-07; the case names keep "ours" so older runs compare);
- `compiled`: the same with torch.compile kept on for LoRA (`vllm.compile`, the default: what `make run` starts).
Then runs every case once as a warm-up and `--rounds` times more, the cases of a round in a seeded shuffled order
(so the servers and all cases are measured interleaved, under the same machine load), each request forced to
exactly `--tokens` new tokens (ignore_eos + min_tokens), greedy. A case's figure is the median wall time until all
its requests are done; TTFT is the median time to the first streamed token. Prints a Markdown table and writes a
JSON file (figures, every sample, machine, load averages, versions) to bench/results/<label>.json.

Only one server computes at a time; the idle ones wait on their queues. Timings on a shared 2-core machine are noisy:
read the ratios (measured side by side), not the absolute seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from app import hardware
from app.adapters.validate import discover_adapters
from app.config import Settings, load_settings
from app.inert import md_table
from app.model_prep import DEFAULT_OUT, prepare
from app.serving.process import VLLMServer
from app.setups import RECOMMENDED

REPO = Path(__file__).resolve().parent.parent
PROMPTS = [
    "What should I check before signing a lease?",
    "Explain what a blood pressure reading means.",
    "How does compound interest work?",
    "My phone has no signal. What can I do?",
]
SERVERS = ("nolora", "ours", "compiled")
LORA_FLAGS_WITH_VALUE = {"--max-loras", "--max-lora-rank", "--max-cpu-loras"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class NoLoRAServer(VLLMServer):
    """The same server without LoRA: the plain-vLLM reference."""

    def command(self) -> list[str]:
        cmd, result, n = super().command(), [], 0
        while n < len(cmd):
            arg = cmd[n]
            n += 1
            if arg == "--enable-lora":
                continue
            if arg in LORA_FLAGS_WITH_VALUE:
                n += 1  # and its value
                continue
            if arg == "--lora-modules":
                while n < len(cmd) and not cmd[n].startswith("--"):
                    n += 1
                continue
            result.append(arg)
        return result


class ServerWithEnv(VLLMServer):
    """Our server with variables added to its environment (a library preloaded, another LoRA ops choice)."""

    def __init__(self, *args: Any, env: dict[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.extra_env = env

    def environment(self) -> dict[str, str]:
        return super().environment() | self.extra_env


@dataclass(frozen=True)
class Case:
    name: str
    server: str  # one of SERVERS
    models: tuple[str, ...]  # one request per model, all sent at once
    label: str
    penalties: dict[str, float] = field(default_factory=dict)  # sampling controls beyond greedy, e.g. RECOMMENDED


def cases(adapters: list[str]) -> list[Case]:
    first = adapters[0]
    penalty = ", ".join(f"{key} {value}" for key, value in RECOMMENDED.items()) + " (the app's default)"
    four = tuple((adapters * 4)[:4])
    return [
        Case("base_nolora", "nolora", ("base",), "base, server without --enable-lora"),
        Case("base4_nolora", "nolora", ("base",) * 4, "4 base at once, same server"),
        Case("base_ours", "ours", ("base",), "base, our server (LoRA enabled, adapters, plugin)"),
        Case("adapter1_ours", "ours", (first,), f"one adapter ({first}), our server"),
        Case("base4_ours", "ours", ("base",) * 4, "4 base at once, our server"),
        Case("adapters4_ours", "ours", four, "4 different adapters at once, our server"),
        Case("mixed4_ours", "ours", ("base", "base", *four[:2]), "2 base + 2 adapters at once, our server"),
        Case("adapters4_penalty_ours", "ours", four, f"4 different adapters at once, {penalty}", RECOMMENDED),
        Case("base_compiled", "compiled", ("base",), "base, our server compiled (vllm.compile)"),
        Case("adapter1_compiled", "compiled", (first,), f"one adapter ({first}), our server compiled"),
        Case("adapters4_compiled", "compiled", four, "4 different adapters at once, our server compiled"),
    ]


async def one_request(
    client: openai.AsyncOpenAI, model: str, prompt: str, tokens: int, penalties: dict[str, float]
) -> tuple[float, int]:
    """(seconds to the first token, tokens generated) of one streamed, greedy, forced-length chat completion."""
    started = time.perf_counter()
    first: float | None = None
    count = 0
    stream = await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        temperature=0.0,
        max_tokens=tokens,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True, "min_tokens": tokens, **penalties},
    )
    async with stream:
        async for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter() - started
            if chunk.usage:
                count = chunk.usage.completion_tokens
    return (first if first is not None else time.perf_counter() - started), count


async def run_case(client: openai.AsyncOpenAI, case: Case, tokens: int) -> dict[str, Any]:
    started = time.perf_counter()
    done = await asyncio.gather(
        *(
            one_request(client, model, PROMPTS[n % len(PROMPTS)], tokens, case.penalties)
            for n, model in enumerate(case.models)
        )
    )
    wall = time.perf_counter() - started
    counts = [count for _, count in done]
    if any(count != tokens for count in counts):
        raise RuntimeError(f"{case.name}: expected {tokens} tokens per request, got {counts}")
    return {"wall_s": wall, "ttft_s": statistics.median(t for t, _ in done), "tokens": sum(counts)}


def machine() -> dict[str, Any]:
    import torch
    import vllm

    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False)
    return {
        "description": hardware.describe(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "vllm": vllm.__version__,
        "torch": torch.__version__,
        "commit": commit.stdout.strip(),
        "loadavg_start": os.getloadavg(),
    }


def report(args: argparse.Namespace, info: dict[str, Any], figures: dict[str, Any], heading: str, *tables: str) -> int:
    """Write the run (options, machine with its load at the end, `figures`) to <--results>/<--label>.json, print the
    heading, the machine and how loaded it was, and the tables."""
    info["loadavg_end"] = os.getloadavg()
    result = {"label": args.label, "tokens": args.tokens, "rounds": args.rounds, "machine": info, **figures}
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"{args.label}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{heading}")
    print(f"{info['description']}; load average {info['loadavg_start'][0]:.2f} -> {info['loadavg_end'][0]:.2f}")
    for text in tables:
        print(text)
    print(f"\nwritten: {out}")
    return 0


def client_for(server: VLLMServer, timeout_s: float = 600) -> openai.AsyncOpenAI:
    """An OpenAI client on `server` that never retries: a failed request must show in the figures, not be hidden."""
    return openai.AsyncOpenAI(base_url=server.base_url, api_key=server.api_key, max_retries=0, timeout=timeout_s)


def start(server: VLLMServer, timeout_s: float) -> None:
    server.start()
    server.wait_ready(timeout_s=timeout_s, progress=False)


def settings_for(model_dir: Path, data: Path, overrides: dict[str, Any], extra_args: Sequence[str] = ()) -> Settings:
    """A benchmark server's settings: `model_dir` on a free loopback port, its files under `data`, plus `overrides`
    (dotted keys, e.g. {"vllm.kv_cache_gib": 1.0})."""
    fixed = {"model.path": str(model_dir), "vllm.port": free_port(), "vllm.extra_args": list(extra_args),
             "paths.data": str(data)}  # fmt: skip
    return load_settings(None, fixed | overrides)


def server_for(
    name: str,
    model_dir: Path,
    data: Path,
    kv_cache_gib: float,
    *,
    adapters: dict[str, Path],
    extra_args: Sequence[str] = (),
    cpu_cores: str | None = None,
) -> VLLMServer:
    """One of SERVERS, its files under data/name: the no-LoRA reference, ours uncompiled, or compiled (the default)."""
    overrides = {"vllm.kv_cache_gib": kv_cache_gib, "vllm.compile": name == "compiled", "vllm.cpu_cores": cpu_cores}
    settings = settings_for(model_dir, data / name, overrides, extra_args)
    if name == "nolora":
        return NoLoRAServer(settings, adapters={})
    return VLLMServer(settings, adapters=adapters)


async def measure(
    clients: dict[str, openai.AsyncOpenAI], all_cases: list[Case], rounds: int, tokens: int, seed: int
) -> dict[str, list[dict[str, Any]]]:
    samples: dict[str, list[dict[str, Any]]] = {case.name: [] for case in all_cases}
    for case in all_cases:  # warm-up: first requests pay for lazy initialisation
        await run_case(clients[case.server], case, tokens)
    rng = random.Random(seed)
    for number in range(rounds):
        order = list(all_cases)
        rng.shuffle(order)
        for case in order:
            await asyncio.sleep(0.5)  # let the other server's OpenMP threads stop spinning
            sample = await run_case(clients[case.server], case, tokens)
            sample.update(round=number, loadavg=os.getloadavg())
            samples[case.name].append(sample)
        print(f"round {number + 1}/{rounds} done (load {os.getloadavg()[0]:.2f})", file=sys.stderr, flush=True)
    return samples


def summarise(all_cases: list[Case], samples: dict[str, list[dict[str, Any]]], tokens: int) -> list[dict[str, Any]]:
    reference = statistics.median(s["wall_s"] for s in samples["base_nolora"])
    rows = []
    for case in all_cases:
        wall = statistics.median(s["wall_s"] for s in samples[case.name])
        rows.append(
            {
                "case": case.name,
                "label": case.label,
                "requests": len(case.models),
                "wall_s": round(wall, 3),
                "ttft_s": round(statistics.median(s["ttft_s"] for s in samples[case.name]), 3),
                "tokens_per_s": round(len(case.models) * tokens / wall, 1),
                "vs_base_nolora": round(wall / reference, 2),
            }
        )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    headers = ["request", "wall time (median)", "TTFT", "tokens/s", "vs base on a server without LoRA"]
    cells = [
        [r["label"], f"{r['wall_s']:.2f} s", f"{r['ttft_s']:.2f} s", f"{r['tokens_per_s']:.1f}",
         f"{r['vs_base_nolora']:.2f}×"]
        for r in rows
    ]  # fmt: skip
    return "\n".join(md_table(headers, cells))


def bench_parser(doc: str, *, label: str, kv_cache_gib: float) -> argparse.ArgumentParser:
    """The options every benchmark here shares: where its JSON goes, its servers' KV cache, the seed of its order."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--label", default=time.strftime(f"{label}%Y%m%d-%H%M%S"), help="name of the JSON in --results")
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "results", help="folder for the JSON")
    parser.add_argument("--kv-cache-gib", type=float, default=kv_cache_gib, help="KV cache of each vLLM server")
    parser.add_argument("--seed", type=int, default=0, help="seed of the case order")
    return parser


def model_and_adapters(parser: argparse.ArgumentParser) -> tuple[Path, dict[str, Path]]:
    """The embedded model (prepared if missing) and the shipped adapters; vLLM's processes will import this
    checkout's plugin (by its entry point), not an installed copy."""
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    model_dir = prepare(REPO / DEFAULT_OUT)
    adapters = discover_adapters(REPO / "adapters")
    if not adapters:
        parser.error("no adapters under adapters/")
    return model_dir, adapters


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__ or "", label="", kv_cache_gib=1.0)
    parser.add_argument("--tokens", type=int, default=96, help="new tokens per request (forced)")
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds after one warm-up round")
    parser.add_argument("--startup-timeout", type=float, default=600.0, help="seconds a server may take to start")
    parser.add_argument("--servers", default=",".join(SERVERS), help="which of them to start (nolora always)")
    parser.add_argument("--cpu-cores", help="vllm.cpu_cores of every server, e.g. 0-1 (default: vLLM's binding)")
    args = parser.parse_args(argv)
    chosen = {"nolora", *(name.strip() for name in args.servers.split(",") if name.strip())}
    if chosen - set(SERVERS):
        parser.error(f"--servers: unknown {sorted(chosen - set(SERVERS))}; choose from {', '.join(SERVERS)}")

    model_dir, adapters = model_and_adapters(parser)
    all_cases = [case for case in cases(sorted(adapters)) if case.server in chosen]
    info = machine() | {"cpu_cores": args.cpu_cores}
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        data = Path(tmp)
        servers = {
            name: server_for(name, model_dir, data, args.kv_cache_gib, adapters=adapters, cpu_cores=args.cpu_cores)
            for name in SERVERS
            if name in chosen
        }
        try:
            for name, server in servers.items():
                began = time.perf_counter()
                start(server, args.startup_timeout)
                info[f"startup_s_{name}"] = round(time.perf_counter() - began, 1)
                print(f"{name} server ready after {info[f'startup_s_{name}']} s", file=sys.stderr, flush=True)
            info["commands"] = {name: server.command() for name, server in servers.items()}
            clients = {name: client_for(server) for name, server in servers.items()}
            samples = asyncio.run(measure(clients, all_cases, args.rounds, args.tokens, args.seed))
            info["plugin_log"] = [
                line
                for server in servers.values()
                for line in server.log_tail(100_000).splitlines()
                if "adapter-arena" in line
            ][:3]
        finally:
            for server in servers.values():
                server.stop()
    rows = summarise(all_cases, samples, args.tokens)
    heading = f"{args.tokens} forced new tokens, greedy, median of {args.rounds} interleaved rounds"
    return report(args, info, {"rows": rows, "samples": samples}, heading, table(rows))


if __name__ == "__main__":
    sys.exit(main())
