"""The Compare tab's "classic four-way" preset through the app as it is against the app before the serving work.

    .venv/bin/python bench/classic_four_way.py [--rounds 3] [--tokens 256] [--label classic-latest]
    (or: make bench-classic)

Issue #14's target: the classic four-way (base + persona, adapter + persona, base + persona + RAG, adapter + RAG)
done in at most half the wall time it took before the serving work. Starts two vLLM servers as `make run` does,
one with our CPU LoRA ops and one with vLLM's own (`ADAPTER_ARENA_LORA_OPS=vllm`, the ops the app used before,
with the -1 fix), and three apps (`python -m app --vllm-url`), one a side (SIDES): "before" (vLLM's ops, 4 RAG
passages, as the app was), "ours, 4 passages" (our ops alone) and "ours" (our ops, the app's `rag.passages`). Then
asks each domain's first example question
with the preset's four panels through the app (bench_app.AppTab, a browser tab's protocol: the Compare tab's
`/answer_all`, a new session per question), greedy, the app's repetition controls, at most `--tokens` tokens, both
servers in seeded shuffled rounds after a warm-up. A sample is the time until the fourth answer's stats line
arrives; answers are the same length both ways when the ops give the same tokens (the JSON keeps every panel's token
count to check). The app's own streaming changes are in both runs: `make bench-app` measures those against raw vLLM.
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from app.content import load_content
from app.inert import md_table
from app.serving.process import VLLMServer
from app.serving.vllm_plugin import OPS_ENV
from app.setups import PRESETS
from app.ui.presets import preset_setup
from bench.bench_app import AppTab, Case, figures, run_app, start_app
from bench.bench_serving import (
    ServerWithEnv,
    bench_parser,
    machine,
    model_and_adapters,
    report,
    settings_for,
    start,
)

REPO = Path(__file__).resolve().parent.parent
PRESET = "classic four-way"
OPS = {"ours": {}, "vllm": {OPS_ENV: "vllm"}}  # the server's environment per LoRA ops choice
BEFORE_PASSAGES = {"ARENA_RAG__PASSAGES": "4"}  # what a RAG panel got before `rag.passages` (2026-12-07)
SIDES = {  # side -> (its server's LoRA ops, its app's settings)
    "vllm": ("vllm", BEFORE_PASSAGES),
    "ours4": ("ours", BEFORE_PASSAGES),
    "ours": ("ours", {}),
}


def classic_cases(adapters: dict[str, Path]) -> list[Case]:
    """One case a domain that has an adapter, a knowledge base and an example question: the preset's four panels."""
    content = load_content(REPO / "personas", REPO / "kb", REPO / "adapters", REPO / "evals")
    return [
        Case(name, 1, tuple(preset_setup(spec, domain) for spec in PRESETS[PRESET]), question=domain.examples[0])
        for name, domain in sorted(content.domains.items())
        if name in adapters and domain.knowledge_base and domain.examples
    ]


def measure(tabs: dict[str, AppTab], all_cases: list[Case], *, rounds: int, tokens: int,
            seed: int) -> dict[str, list[dict[str, Any]]]:  # fmt: skip
    """Every case on every side's app, in shuffled rounds after a warm-up round (round 0)."""
    runs = [(case, side) for case in all_cases for side in SIDES]
    samples: dict[str, list[dict[str, Any]]] = {f"{case.name}_{side}": [] for case, side in runs}
    rng = random.Random(seed)
    for number in range(rounds + 1):
        rng.shuffle(runs)
        for case, side in runs:
            time.sleep(0.5)
            sample = figures(run_app([tabs[side]], case, tokens))
            if number:
                samples[f"{case.name}_{side}"].append(sample)
        print(f"round {number}/{rounds} done (load {os.getloadavg()[0]:.2f})", file=sys.stderr, flush=True)
    return samples


def summarise(all_cases: list[Case], samples: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    rows = []
    for case in all_cases:
        row: dict[str, Any] = {"domain": case.name, "question": case.question}
        for side in SIDES:
            row[f"{side}_wall_s"] = round(statistics.median(s["wall_s"] for s in samples[f"{case.name}_{side}"]), 2)
            row[f"{side}_tokens"] = samples[f"{case.name}_{side}"][0]["tokens"]
        row["ratio"] = round(row["ours_wall_s"] / row["vllm_wall_s"], 2)
        row["ratio_ops"] = round(row["ours4_wall_s"] / row["vllm_wall_s"], 2)
        rows.append(row)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    headers = ["domain", "before (vLLM's LoRA ops, 4 passages)", "our ops, 4 passages", "our ops, rag.passages",
               "ours / before (ops alone)", "answer tokens before / ours, 4 / ours"]  # fmt: skip

    def cells(r: dict[str, Any]) -> list[str]:
        return [r["domain"], f"{r['vllm_wall_s']:.2f} s", f"{r['ours4_wall_s']:.2f} s", f"{r['ours_wall_s']:.2f} s",
                f"{r['ratio']:.2f} ({r['ratio_ops']:.2f})",
                f"{r['vllm_tokens']} / {r['ours4_tokens']} / {r['ours_tokens']}"]  # fmt: skip

    return "\n".join(md_table(headers, [cells(r) for r in rows]))


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__ or "", label="classic-", kv_cache_gib=1.0)
    parser.add_argument("--tokens", type=int, default=256, help="most tokens per answer (the app's default)")
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds after one warm-up round")
    args = parser.parse_args(argv)
    model_dir, adapters = model_and_adapters(parser)
    all_cases = classic_cases(adapters)
    if not all_cases:
        parser.error("no domain has an adapter, a knowledge base and an example question")
    info = machine()
    with tempfile.TemporaryDirectory(prefix="bench-classic-") as tmp:
        data = Path(tmp)
        servers: dict[str, VLLMServer] = {
            ops: ServerWithEnv(settings_for(model_dir, data / ops, {"vllm.kv_cache_gib": args.kv_cache_gib}),
                               adapters=adapters, env=env)
            for ops, env in OPS.items()
        }  # fmt: skip
        apps = []
        try:
            tabs = {}
            for server in servers.values():
                start(server, 600)
            for side, (ops, app_settings) in SIDES.items():
                server = servers[ops]
                app, url = start_app(server.base_url, server.api_key or "", data / f"app-{side}", data / f"{side}.log",
                                     app_settings)  # fmt: skip
                apps.append(app)
                tabs[side] = AppTab(url)
            samples = measure(tabs, all_cases, rounds=args.rounds, tokens=args.tokens, seed=args.seed)
        finally:
            for app in apps:
                app.terminate()
                app.wait(30)
            for server in servers.values():
                server.stop()
    rows = summarise(all_cases, samples)
    heading = (f"{PRESET}, each domain's first example question, greedy, at most {args.tokens} tokens, "
               f"median of {args.rounds} rounds: time until all four answers are done")  # fmt: skip
    return report(args, info, {"rows": rows, "samples": samples}, heading, table(rows))


if __name__ == "__main__":
    sys.exit(main())
