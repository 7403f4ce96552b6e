"""Repetition study: which repetition controls curb loops without costing terminology (app.setups.RECOMMENDED).

Base + persona and adapter + persona answer each domain's paraphrase questions at temperature 0, RAG off, once per
setting (vLLM's repetition_penalty, OpenAI's frequency and presence penalties); the one judge scores every answer.
The neutral setting is answered twice, in separate batches, so the table also shows the run-to-run spread that
batching alone causes. Prints a table and writes it as JSON to bench/results/repetition-<date>.json
(docs/eval.md, "Repetition", has the results).

    .venv/bin/python bench/repetition_study.py --limit 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from app.config import load_settings  # noqa: E402 - after the path: run as a script
from app.content import load_content  # noqa: E402
from app.hardware import describe  # noqa: E402
from app.playground import Playground  # noqa: E402
from app.rag import RAGStore  # noqa: E402
from app.scoring.judge import Judge  # noqa: E402
from app.serving.process import VLLMServer  # noqa: E402
from app.setups import Setup  # noqa: E402
from bench.recipe_study import measure  # noqa: E402

SETTINGS: dict[str, dict[str, float]] = {  # name -> repetition controls; "neutral" twice for the spread
    "neutral": {},
    "neutral (again)": {},
    "rep 1.1": {"repetition_penalty": 1.1},
    "rep 1.2": {"repetition_penalty": 1.2},
    "rep 1.3": {"repetition_penalty": 1.3},
    "freq 0.5": {"frequency_penalty": 0.5},
    "freq 1.0": {"frequency_penalty": 1.0},
    "freq 1.5": {"frequency_penalty": 1.5},
    "freq 0.5 + pres 0.5": {"frequency_penalty": 0.5, "presence_penalty": 0.5},
    "freq 0.5 + rep 1.05": {"frequency_penalty": 0.5, "repetition_penalty": 1.05},
}


async def study(playground: Playground, judge: Judge, names: list[str], limit: int, max_tokens: int) -> list[Any]:
    """One row per domain x setting x spec, printed as it comes (the whole study takes a while on a CPU)."""
    rows: list[dict[str, Any]] = []
    for domain, policy in judge.content.domains.items():
        if not policy.adapter or not judge.content.paraphrases.get(domain):
            continue
        for name in names:
            sampling = {"temperature": 0.0, "max_tokens": max_tokens, **SETTINGS[name]}
            setups = {
                "base+persona": Setup(persona=policy.persona, **sampling),
                "adapter+persona": Setup(adapter=policy.adapter, persona=policy.persona, **sampling),
            }
            for spec, row in (await measure(playground, judge, domain, setups, limit=limit)).items():
                rows.append({"domain": domain, "setting": name, "spec": spec, **row})
                print(f"{domain:8} {name:16} {spec:16} terminology {row['terminology']!s:>6} "
                      f"hallucination {row['hallucination_rate']!s:>6} loops {row['loop_rate']!s:>6}",
                      flush=True)  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=8, help="paraphrase questions per domain")
    parser.add_argument("--max-tokens", type=int, default=192)
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    args = parser.parse_args()
    settings = load_settings()
    content = load_content(settings.paths.personas, settings.paths.kb, settings.paths.adapters, settings.paths.evals)
    rag = RAGStore(settings)
    with VLLMServer(settings) as server:
        server.wait_ready()
        playground = Playground(server.client(timeout_s=600), rag, content.personas)
        rows = asyncio.run(study(playground, Judge(content, rag), args.settings, args.limit, args.max_tokens))
    results = REPO / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    date = datetime.now(UTC).date().isoformat()
    chosen = {name: SETTINGS[name] for name in args.settings}
    record = {"date": date, "machine": describe(), "split": "paraphrase", "limit": args.limit,
              "max_tokens": args.max_tokens, "settings": chosen, "rows": rows}  # fmt: skip
    path = results / f"repetition-{date}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
