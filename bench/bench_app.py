"""App benchmark: what the app's own streaming path adds to raw vLLM, with four panels and with several users.

    .venv/bin/python bench/bench_app.py [--rounds 5] [--tokens 128] [--users 1,2,4,8] [--label app-latest]
    (or: make bench-app)

Starts our vLLM server as `make run` does (LoRA enabled, the shipped adapters, our plugin) and the app as a user runs
it against that server (`python -m app --vllm-url ...`, its own process), both on free loopback ports. Then asks the
same questions two ways, the cases of a round in a seeded shuffled order:
- raw: the OpenAI client straight to vLLM, every request of the case streamed at once;
- app: browser tabs asking through the Compare tab's `/answer_all` event, in Gradio's queue protocol (AppTab).
Same question and settings per panel (greedy, no persona, RAG off, the app's default repetition controls, at most
`--tokens` tokens). On a CPU whose matmuls round a row differently beside other rows (docs/eval.md), requests that
arrive a few milliseconds apart are batched differently and a near-tie token can flip, so answer lengths may differ
a little between the two ways: compare the per-token figures.
Cases: one user with four panels (base and the first three adapters); then N users at once (`--users`), two panels
each (base and an adapter). Per case: the median time to first token over panels, each answer's decoding speed
(tokens after the first / seconds after the first token, median), the time until every answer is done, throughput
(all answer tokens / that time), the p95 of an answer's completion time, and app/raw ratios. Table on stdout, JSON
(every sample, machine) in bench/results/<label>.json.

An app panel's first token and end are when the browser session receives them, so they include the app's update
interval (app.ui.compare_round.UPDATE_EVERY_S); the raw ones are when the stream delivers them.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import openai
import psutil
from gradio_client.utils import apply_diff
from openai.types.chat import ChatCompletionMessageParam

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from app.inert import md_table
from app.prompts import build_messages, message_text
from app.serving.process import VLLMServer
from app.setups import RECOMMENDED, Setup
from app.ui.compare import MAX_PANELS
from app.ui.panel import FIELDS, NO_PERSONA
from bench.bench_serving import (
    PROMPTS,
    bench_parser,
    client_for,
    free_port,
    machine,
    model_and_adapters,
    report,
    server_for,
    start,
)

REPO = Path(__file__).resolve().parent.parent
APP_START_S = 300
OUT_TOKENS = re.compile(r"\d+ tokens in / (\d+) out")
WAYS = ("raw", "app")


@dataclass(frozen=True)
class Case:
    name: str
    users: int
    panels: tuple[Setup, ...]  # each user's panels (greedy, at most --tokens, the app's repetition controls)
    question: str | None = None  # one question for every user; None: each user its own (question_of)


@dataclass
class Answer:
    """One panel's answer as its asker saw it: seconds from the question to the first token and to the end."""

    first_s: float | None = None
    end_s: float | None = None
    tokens: int | None = None


def cases(adapters: list[str], users: list[int]) -> list[Case]:
    four = (Setup(), *(Setup(adapter=name) for name in adapters[:3]))
    pair = (Setup(), Setup(adapter=adapters[0]))
    return [Case("four_panels", 1, four)] + [Case(f"users{n}", n, pair) for n in users]


def question_of(case: Case, user: int) -> str:
    return case.question or PROMPTS[user % len(PROMPTS)]


def model_of(setup: Setup) -> str:
    return setup.adapter or "base"


def panel_values(setup: Setup, tokens: int) -> list[Any]:
    """A Compare panel's inputs in app.ui.panel.FIELDS order (its conversation is session State: None here)."""
    values = {"model": model_of(setup), "history": None, "persona": setup.persona or NO_PERSONA, "system_prompt": "",
              "temperature": 0.0, "top_p": 1.0, "max_tokens": tokens, "seed": "", **RECOMMENDED,
              "use_rag": setup.rag is not None, "kb": setup.rag, "brief": setup.brief}  # fmt: skip
    return [values[name] for name in FIELDS]


class AppTab:
    """One browser tab on the app, speaking Gradio's queue protocol as its JavaScript client does: join the queue,
    read the session's server-sent events, apply each update's diff. Not gradio_client: it polls its message queue
    every 50 ms (gradio_client/utils.py, stream_sse_v1plus), which would add 0-50 ms to every time recorded."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=f"{url}gradio_api/", timeout=APP_START_S)
        config = httpx.get(f"{url}config", timeout=60).raise_for_status().json()
        self.events = {dep["api_name"]: dep["id"] for dep in config["dependencies"] if dep.get("api_name")}
        self.session = ""

    def open(self) -> None:
        """A new page: a new session (no conversation yet), opened by the status tick a page runs. Gradio builds a
        session's state on its first event (~17 ms with every tab's components): a user pays it on loading the page,
        not on asking."""
        self.session = uuid.uuid4().hex
        for _ in self.run("status", []):
            pass

    def run(self, api_name: str, data: list[Any]) -> Iterator[list[Any]]:
        """Run the event `api_name` on `data` in this session; yield its outputs after each update."""
        body = {"data": data, "fn_index": self.events[api_name], "session_hash": self.session, "event_data": None}
        self.http.post("queue/join", json=body).raise_for_status()
        outputs: list[Any] | None = None
        with self.http.stream("GET", "queue/data", params={"session_hash": self.session}) as stream:
            for line in stream.iter_lines():
                message = json.loads(line[5:]) if line.startswith("data:") else {}
                if message.get("msg") == "process_generating":
                    new = message["output"]["data"]  # the first update whole, then the changes
                    outputs = new if outputs is None else [apply_diff(o, d) for o, d in zip(outputs, new, strict=True)]
                    yield outputs
                elif message.get("msg") == "process_completed":
                    if not message["success"]:
                        raise RuntimeError(f"{api_name} failed: {message['output']}")
                    return
                elif message.get("msg") == "unexpected_error":
                    raise RuntimeError(f"{api_name} failed: {message.get('message')}")
        raise RuntimeError(f"{api_name}: the event stream ended before the event completed")


async def raw_answer(client: openai.AsyncOpenAI, model: str, question: str, tokens: int, asked: float) -> Answer:
    """One streamed chat completion with the settings a panel sends (app.serving.client.ServingClient.stream_chat)."""
    answer = Answer()
    stream = await client.chat.completions.create(
        model=model, messages=[cast("ChatCompletionMessageParam", m) for m in build_messages(None, [], question)],
        temperature=0.0, top_p=1.0, max_tokens=tokens,
        frequency_penalty=RECOMMENDED["frequency_penalty"], presence_penalty=RECOMMENDED["presence_penalty"],
        stream=True, stream_options={"include_usage": True},
        extra_body={"repetition_penalty": RECOMMENDED["repetition_penalty"]},
    )  # fmt: skip
    async with stream:
        async for chunk in stream:
            if answer.first_s is None and chunk.choices and chunk.choices[0].delta.content:
                answer.first_s = time.perf_counter() - asked
            if chunk.usage:
                answer.tokens = chunk.usage.completion_tokens
    answer.end_s = time.perf_counter() - asked
    return answer


async def run_raw(server: VLLMServer, case: Case, tokens: int) -> list[Answer]:
    """Every request of the case at once, on a client of this event loop (each case runs its own)."""
    if any(setup.persona or setup.rag for setup in case.panels):
        raise ValueError(f"{case.name}: raw requests have no persona or RAG; measure such panels through the app")
    requests = [(model_of(setup), question_of(case, user)) for user in range(case.users) for setup in case.panels]
    async with client_for(server) as client:
        asked = time.perf_counter()
        return list(await asyncio.gather(*(raw_answer(client, m, q, tokens, asked) for m, q in requests)))


def app_user(tab: AppTab, case: Case, user: int, *, tokens: int, asked: float) -> list[Answer]:
    """Ask one question with the case's panels; when each panel's first text and its stats line (its end) arrive."""
    panels = [panel_values(setup, tokens) for setup in case.panels]
    panels += [panel_values(Setup(), tokens)] * (MAX_PANELS - len(panels))  # hidden panels: not asked
    values = [value for inputs in panels for value in inputs]
    answers = [Answer() for _ in case.panels]
    for update in tab.run("answer_all", [question_of(case, user), None, len(case.panels), *values]):
        now = time.perf_counter() - asked
        for index, answer in enumerate(answers):
            chat, stats = update[index], update[MAX_PANELS + index]
            text = message_text(chat[-1]["content"]) if chat and chat[-1]["role"] == "assistant" else ""
            if answer.first_s is None and text:
                answer.first_s = now
            if answer.end_s is None and stats:
                answer.end_s = now
                match = OUT_TOKENS.search(stats)
                answer.tokens = int(match[1]) if match else None
    return answers


def run_app(tabs: list[AppTab], case: Case, tokens: int) -> list[Answer]:
    """Every user of the case asks at once, each from a page of their own (a thread), opened beforehand: a new
    session, so no earlier turns go with the question (each panel keeps its conversation in session State)."""
    for tab in tabs[: case.users]:
        tab.open()
    asked = time.perf_counter()
    with ThreadPoolExecutor(case.users) as pool:
        asks = pool.map(lambda user: app_user(tabs[user], case, user, tokens=tokens, asked=asked), range(case.users))
        return [answer for answers in asks for answer in answers]


def figures(answers: list[Answer]) -> dict[str, Any]:
    if any(a.first_s is None or a.end_s is None or not a.tokens for a in answers):
        raise RuntimeError(f"an answer came back empty or unfinished: {answers}")
    ends = sorted(answer.end_s or 0.0 for answer in answers)
    tokens = [answer.tokens or 0 for answer in answers]
    return {
        "ttft_s": statistics.median(answer.first_s or 0.0 for answer in answers),
        "decode_tokens_per_s": statistics.median(
            ((a.tokens or 1) - 1) / max((a.end_s or 0.0) - (a.first_s or 0.0), 1e-3) for a in answers
        ),
        "wall_s": ends[-1],
        "p95_s": ends[min(len(ends) - 1, round(0.95 * (len(ends) - 1)))],
        "tokens_per_s": sum(tokens) / ends[-1],
        "tokens": tokens,
        "first_s_each": [round(answer.first_s or 0.0, 3) for answer in answers],
    }


def cpu_seconds(processes: dict[str, psutil.Process]) -> dict[str, float]:
    """CPU time used so far by each named process and its children (vLLM's engine core and workers are children;
    this script's own entry leaves its children, the servers, out)."""
    used = {}
    for name, process in processes.items():
        family = [process] if process.pid == os.getpid() else [process, *process.children(recursive=True)]
        times = [p.cpu_times() for p in family]
        used[name] = sum(t.user + t.system for t in times)
    return used


def measure(
    server: VLLMServer, tabs: list[AppTab], all_cases: list[Case], *, rounds: int, tokens: int, seed: int,
    processes: dict[str, psutil.Process],
) -> dict[str, list[dict[str, Any]]]:  # fmt: skip
    """Every case both ways in shuffled rounds; each sample with the CPU seconds each process used meanwhile."""
    runs = [(case, way) for case in all_cases for way in WAYS]
    samples: dict[str, list[dict[str, Any]]] = {f"{case.name}_{way}": [] for case, way in runs}
    rng = random.Random(seed)
    for number in range(rounds + 1):  # round 0 warms up (lazy initialisation, first-request costs)
        rng.shuffle(runs)
        for case, way in runs:
            time.sleep(0.5)
            before = cpu_seconds(processes)
            answers = asyncio.run(run_raw(server, case, tokens)) if way == "raw" else run_app(tabs, case, tokens)
            used = {name: round(cpu_seconds(processes)[name] - spent, 2) for name, spent in before.items()}
            if number:
                samples[f"{case.name}_{way}"].append({**figures(answers), "cpu_s": used})
        print(f"round {number}/{rounds} done (load {os.getloadavg()[0]:.2f})", file=sys.stderr, flush=True)
    return samples


def summarise(all_cases: list[Case], samples: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    rows = []
    for case in all_cases:
        row: dict[str, Any] = {"case": case.name, "users": case.users, "panels": len(case.panels)}
        for way in WAYS:
            for key in ("ttft_s", "decode_tokens_per_s", "wall_s", "p95_s", "tokens_per_s"):
                row[f"{way}_{key}"] = round(statistics.median(s[key] for s in samples[f"{case.name}_{way}"]), 3)
            for name in ("vllm", "app", "bench"):
                row[f"{way}_cpu_s_{name}"] = round(
                    statistics.median(s["cpu_s"][name] for s in samples[f"{case.name}_{way}"]), 2
                )
        row["app_extra_ttft_ms"] = round(1000 * (row["app_ttft_s"] - row["raw_ttft_s"]))
        raws, apps = (samples[f"{case.name}_{way}"] for way in WAYS)
        lengths = [(raw["tokens"], app["tokens"]) for raw, app in zip(raws, apps, strict=True)]
        row["answers_of_other_length"] = sum(r != a for raw, app in lengths for r, a in zip(raw, app, strict=True))
        row["app_decode_share"] = round(row["app_decode_tokens_per_s"] / row["raw_decode_tokens_per_s"], 3)
        row["app_tokens_per_s_share"] = round(row["app_tokens_per_s"] / row["raw_tokens_per_s"], 3)
        rows.append(row)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    headers = ["case", "TTFT raw / app", "app adds to TTFT", "answer tokens/s raw / app (app keeps)",
               "all done raw / app", "p95 answer raw / app", "throughput tokens/s raw / app (app keeps)"]  # fmt: skip
    cells = [
        [f"{r['users']} user(s) × {r['panels']} panels", f"{r['raw_ttft_s']:.2f} / {r['app_ttft_s']:.2f} s",
         f"{r['app_extra_ttft_ms']} ms",
         f"{r['raw_decode_tokens_per_s']:.1f} / {r['app_decode_tokens_per_s']:.1f} ({r['app_decode_share']:.0%})",
         f"{r['raw_wall_s']:.2f} / {r['app_wall_s']:.2f} s", f"{r['raw_p95_s']:.2f} / {r['app_p95_s']:.2f} s",
         f"{r['raw_tokens_per_s']:.1f} / {r['app_tokens_per_s']:.1f} ({r['app_tokens_per_s_share']:.0%})"]
        for r in rows
    ]  # fmt: skip
    return "\n".join(md_table(headers, cells))


def cpu_table(rows: list[dict[str, Any]]) -> str:
    """Where the CPU went during a case (median seconds), raw and through the app: the machine's two cores are
    shared by vLLM's processes, the app, and this script's clients (the browsers' stand-ins)."""
    headers = ["case", "vLLM raw / app", "app", "bench clients raw / app"]
    cells = [
        [f"{r['users']} user(s) × {r['panels']} panels", f"{r['raw_cpu_s_vllm']:.1f} / {r['app_cpu_s_vllm']:.1f} s",
         f"{r['app_cpu_s_app']:.1f} s", f"{r['raw_cpu_s_bench']:.1f} / {r['app_cpu_s_bench']:.1f} s"]
        for r in rows
    ]  # fmt: skip
    return "\n".join(md_table(headers, cells))


def start_app(vllm_url: str, api_key: str, data: Path, log: Path,
              settings: Mapping[str, str] | None = None) -> tuple[subprocess.Popen[bytes], str]:  # fmt: skip
    """`python -m app --vllm-url ...` on a free port, as a user runs it against a server of their own; `settings` are
    more ARENA_* variables for it."""
    port = free_port()
    env = {**os.environ, **(settings or {}), "ARENA_VLLM__API_KEY": api_key, "ARENA_PATHS__DATA": str(data)}
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "app", "--vllm-url", vllm_url, "--port", str(port)],
            cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url, deadline = f"http://127.0.0.1:{port}/", time.monotonic() + APP_START_S
    while True:
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"the app did not come up; its output ends:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(1)


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__ or "", label="app-", kv_cache_gib=2.0)
    parser.add_argument("--tokens", type=int, default=128, help="most tokens per answer (greedy, so the same each way)")
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds after one warm-up round")
    parser.add_argument("--users", default="1,2,4,8", help="numbers of users asking at once, two panels each")
    args = parser.parse_args(argv)
    users = [int(n) for n in args.users.split(",") if n.strip()]

    model_dir, adapters = model_and_adapters(parser)
    if len(adapters) < 3:
        parser.error("the four-panel case needs three adapters under adapters/")
    all_cases = cases(sorted(adapters), users)
    info = machine()
    with tempfile.TemporaryDirectory(prefix="bench-app-") as tmp:
        data = Path(tmp)
        server = server_for("ours", model_dir, data, args.kv_cache_gib, adapters=adapters)
        app = None
        try:
            start(server, 600)
            app, url = start_app(server.base_url, server.api_key or "", data / "app", data / "app.log")
            info["commands"] = {"vllm": server.command(), "app": app.args}
            tabs = [AppTab(url) for _ in range(max([*users, 1]))]
            processes = {"vllm": psutil.Process(server.pid), "app": psutil.Process(app.pid), "bench": psutil.Process()}
            samples = measure(server, tabs, all_cases, rounds=args.rounds, tokens=args.tokens, seed=args.seed,
                              processes=processes)  # fmt: skip
        finally:
            if app is not None:
                app.terminate()
                app.wait(30)
            server.stop()
    rows = summarise(all_cases, samples)
    heading = f"at most {args.tokens} tokens an answer, greedy, median of {args.rounds} interleaved rounds"
    cpu = f"\nCPU seconds used during a case (median)\n{cpu_table(rows)}"
    return report(args, info, {"rows": rows, "samples": samples}, heading, table(rows), cpu)


if __name__ == "__main__":
    sys.exit(main())
