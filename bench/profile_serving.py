"""Where a decoding step's time goes: vLLM's own torch profiler around one case of the serving benchmark per run.

    .venv/bin/python bench/profile_serving.py [--tokens 32] [--label profile]   (or: make profile)

Starts the servers of bench/bench_serving.py (`nolora`, `ours`, `compiled`), one at a time, with `--profiler-config`
(torch profiler, CPU activities, no stacks), warms each case up, then for each profiled case calls vLLM's
`/start_profile`, runs the case once and calls `/stop_profile`. vLLM writes the table of operators sorted by self
CPU time; this script keeps the top rows of each case and prints, per case, the self CPU time of the operator groups
that matter for issue #14 (matrix products, index and copy ops, attention/norm/activations, the rest). The tables
and that summary go to bench/results/<label>.json; docs/performance.md has the reading. Profiler overhead inflates
small ops, so compare the cases with each other, not with the benchmark's seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from app.adapters.validate import discover_adapters
from app.model_prep import DEFAULT_OUT, prepare
from app.serving.process import VLLMServer
from bench import bench_serving as bench

PROFILED = ("base_nolora", "base_ours", "adapter1_ours", "adapters4_ours", "base_compiled", "adapter1_compiled")
GROUPS = {  # operator name pattern -> what it is (first match wins)
    "matrix products": r"aten::(mm|addmm|bmm|matmul|linear|einsum|baddbmm)$",
    "index, copy, cat": r"aten::(index_select|index|index_put_|copy_|cat|gather|scatter.*|to|_to_copy|contiguous)$",
    "attention, norm, activations": r"(_C::.*|aten::(silu|mul|add|rsqrt|mean|pow|softmax|_softmax).*)$",
}


def self_cpu_us(table: str) -> dict[str, float]:
    """Operator name -> self CPU time in microseconds, from a torch profiler table (its 'Self CPU' column)."""
    rows = [re.split(r"\s{2,}", line.strip()) for line in table.splitlines() if line.strip() and line[0] != "-"]
    header = next((row for row in rows if "Self CPU" in row), None)
    if header is None:
        raise RuntimeError("not a torch profiler table: no 'Self CPU' column")
    column = header.index("Self CPU")
    result: dict[str, float] = {}
    for row in rows:
        match = re.fullmatch(r"([\d.]+)(us|ms|s)", row[column]) if len(row) == len(header) else None
        if match:
            result[row[0]] = result.get(row[0], 0.0) + float(match[1]) * {"us": 1.0, "ms": 1e3, "s": 1e6}[match[2]]
    return result


def grouped(ops: dict[str, float]) -> dict[str, float]:
    """Self CPU milliseconds per group of GROUPS, the rest as 'other'."""
    totals = {group: 0.0 for group in [*GROUPS, "other"]}
    for name, micros in ops.items():
        group = next((g for g, pattern in GROUPS.items() if re.match(pattern, name)), "other")
        totals[group] += micros / 1e3
    return {group: round(ms, 1) for group, ms in totals.items()}


async def profile_cases(server: VLLMServer, chosen: list[bench.Case], tokens: int, folder: Path) -> dict[str, str]:
    """Case name -> the table vLLM wrote for one run of it between /start_profile and /stop_profile."""
    client = bench.client_for(server, timeout_s=900)
    root = server.base_url.removesuffix("/v1")
    tables = {}
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {server.api_key}"}, timeout=900) as http:
        for case in chosen:
            await bench.run_case(client, case, tokens)  # warm-up, not profiled
            for old in folder.glob("*.profiler_out.txt"):
                old.unlink()
            (await http.post(f"{root}/start_profile", json={"profile_prefix": case.name})).raise_for_status()
            await bench.run_case(client, case, tokens)
            (await http.post(f"{root}/stop_profile")).raise_for_status()
            tables[case.name] = await written_table(folder, case.name)
    await client.close()
    return tables


async def written_table(folder: Path, name: str) -> str:
    """The worker may still be writing the table when the stop call returns."""
    size = -1
    for _ in range(300):
        found = list(folder.glob("*.profiler_out.txt"))
        if found and found[0].stat().st_size == size and size > 0:  # no longer growing
            return found[0].read_text()
        size = found[0].stat().st_size if found else -1
        await asyncio.sleep(2)
    raise RuntimeError(f"no profiler table appeared in {folder} for {name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per request (forced)")
    parser.add_argument("--label", default="profile-" + time.strftime("%Y-%m-%d"), help="name of the JSON")
    parser.add_argument("--results", type=Path, default=bench.REPO / "bench" / "results", help="folder for the JSON")
    parser.add_argument(
        "--servers", nargs="+", choices=bench.SERVERS, default=list(bench.SERVERS), help="servers to profile"
    )
    args = parser.parse_args(argv)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(bench.REPO), os.environ.get("PYTHONPATH")]))
    model_dir = prepare(bench.REPO / DEFAULT_OUT)
    adapters = discover_adapters(bench.REPO / "adapters")
    chosen = [case for case in bench.cases(sorted(adapters)) if case.name in PROFILED]
    result: dict[str, Any] = {"label": args.label, "tokens": args.tokens, "machine": bench.machine(), "cases": {}}
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp:
        for name in args.servers:
            traces = Path(tmp) / name / "traces"
            config = {"profiler": "torch", "torch_profiler_dir": str(traces), "torch_profiler_with_stack": False}
            profiling = ["--profiler-config", json.dumps(config)]
            server = bench.server_for(name, model_dir, Path(tmp), 1.0, adapters=adapters, extra_args=profiling)
            mine = [case for case in chosen if case.server == name]
            try:
                bench.start(server, 900)
                tables = asyncio.run(profile_cases(server, mine, args.tokens, traces))
            finally:
                server.stop()
            for case in mine:
                try:
                    groups: dict[str, float] | str = grouped(self_cpu_us(tables[case.name]))
                except RuntimeError as exc:  # keep the raw table to read by hand
                    groups = str(exc)
                result["cases"][case.name] = {"label": case.label, "groups_ms": groups,
                                              "top": tables[case.name].splitlines()[:60]}  # fmt: skip
                print(f"{case.label}: self CPU ms {groups}", flush=True)
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"{args.label}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
