"""How many passages should RAG give the embedded model, and should it ask for one short sentence? The RAG
configurations of each domain answer its paraphrase questions with the top k passages, for each k asked, brief
(`Setup.brief`, the default: the prompt asks for one short sentence) or full (`--brief 1 0`), on one vLLM server
(temperature 0, the app's sampling); the one judge scores every answer. Prints a table and writes it as JSON to
bench/results/rag-passages-<date>[-<label>].json (docs/rag.md has the results).

    .venv/bin/python bench/rag_passages.py [--k 4 2] [--brief 1 0] [--domains finance support] [--label brief]

Each k is the app's own setting (`rag.passages`) on the app's store, so the prompt, the persona and everything else is
what a Compare panel sends. The checker's own evidence for hallucination stays at its 4 passages (`EVIDENCE_K`) for
every k, so the judge is the same across k.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from app.config import RAGSettings, Settings, load_settings
from app.content import Content, load_content
from app.hardware import describe
from app.playground import Playground
from app.rag import RAGStore
from app.scoring.judge import Judge
from app.serving.process import VLLMServer
from app.setups import RECOMMENDED, Setup
from bench.recipe_study import REPO, measure

DOMAINS = ("finance", "legal", "medical", "support")


def rag_setups(content: Content, domain: str, brief: bool = True) -> dict[str, Setup]:
    """The eval's RAG configurations with the domain's persona, at the app's sampling."""
    names = content.domains[domain]
    shared = {"persona": names.persona, "rag": names.knowledge_base, "temperature": 0.0, "max_tokens": 256,
              "brief": brief}  # fmt: skip
    return {
        "base+persona+rag": Setup(**shared, **RECOMMENDED),
        "adapter+persona+rag": Setup(adapter=names.adapter, **shared, **RECOMMENDED),
    }


async def measure_all(server: VLLMServer, settings: Settings, content: Content, *, ks: list[int], briefs: list[int],
                      domains: list[str]) -> dict[str, Any]:  # fmt: skip
    client = server.client(timeout_s=600)
    judge = Judge(content, RAGStore(settings))
    results: dict[str, Any] = {}
    for k in ks:
        store = RAGStore(settings.model_copy(update={"rag": RAGSettings(passages=k)}))
        playground = Playground(client, store, content.personas)
        for brief in briefs:
            for domain in domains:
                key = f"{domain} k={k}" + ("" if brief else " full")
                results[key] = await measure(playground, judge, domain, rag_setups(content, domain, bool(brief)))
                print(f"measured {key}", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--k", nargs="+", type=int, default=[4, 2], help="passages per question to compare")
    parser.add_argument("--brief", nargs="+", type=int, choices=[1, 0], default=[1],
                        help="1: ask for one short sentence (the default Setup); 0: a full answer")  # fmt: skip
    parser.add_argument("--domains", nargs="+", choices=DOMAINS, default=list(DOMAINS))
    parser.add_argument("--label", default="", help="appended to the JSON file's name")
    args = parser.parse_args()
    settings = load_settings()
    content = load_content(settings.paths.personas, settings.paths.kb, settings.paths.adapters, settings.paths.evals)
    adapters = {name: settings.paths.adapters / content.domains[name].adapter for name in args.domains}
    with VLLMServer(settings, adapters=adapters) as server:
        server.wait_ready()
        study = measure_all(server, settings, content, ks=args.k, briefs=args.brief, domains=args.domains)
        measured = asyncio.run(study)
    print(f"\n{'domain, k':19} {'configuration':20} {'terminology':>11} {'halluc.':>8} {'figures':>7} {'loops':>6}")
    for key, rows in measured.items():
        for name, row in rows.items():
            print(f"{key:19} {name:20} {row['terminology']!s:>11} {row['hallucination_rate']!s:>8} "
                  f"{row['figures_right']!s:>7} {row['loop_rate']!s:>6}")  # fmt: skip
    suffix = f"-{args.label}" if args.label else ""
    out = REPO / "bench" / "results" / f"rag-passages-{datetime.now(UTC):%Y-%m-%d}{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"date": f"{datetime.now(UTC):%Y-%m-%d}", "machine": describe(), "k": args.k, "brief": args.brief,
              "split": "paraphrase", "measured": measured}  # fmt: skip
    out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
