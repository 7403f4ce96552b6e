"""Training recipe study: train one domain's adapter several ways and measure each on the paraphrase split.

Every recipe gets the same optimizer-step budget (`--max-steps`), so they compare at equal cost. Each trained adapter
is served by one vLLM server (with the base model) and answers the domain's paraphrase questions as adapter +
persona, RAG off, temperature 0, beside the base model with the persona; the one judge scores every answer. Prints a
table, and writes it as JSON to bench/results/recipes-<domain>-<date>[-<label>].json (docs/adapters.md has the
results).

    .venv/bin/python bench/recipe_study.py support --max-steps 80
    .venv/bin/python bench/recipe_study.py finance --recipes today kb kb-neftune
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
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
from app.setups import RECOMMENDED, Setup  # noqa: E402
from app.train import TrainConfig, load_train_config, train  # noqa: E402

KB_MIX = ["train.jsonl", "train_kb.jsonl"]
RECIPES: dict[str, dict[str, Any]] = {  # name -> changes to the domain's train.yaml
    "today": {},
    "kb": {"data": KB_MIX},
    "kb-neftune": {"data": KB_MIX, "neftune_noise_alpha": 5.0},
    "kb-attention-r8": {
        "data": KB_MIX,
        "rank": 8,
        "alpha": 16,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
    },
    "kb-lr1e-4": {"data": KB_MIX, "learning_rate": 1e-4},
    "persona": {"keep_system_prompt": True},  # trained with the persona's prompt, as the eval asks it
}


def mean(values: list[float]) -> float | None:
    return round(statistics.fmean(values), 3) if values else None


async def measure(
    playground: Playground, judge: Judge, domain: str, setups: dict[str, Setup], limit: int | None = None
) -> dict[str, Any]:
    """Each setup's answers to the paraphrase split (its first `limit` questions), judged: terminology,
    hallucination, loops, figures right, voice and its sign-off."""
    items = judge.content.paraphrases[domain][:limit]
    policy = judge.content.domains[domain]
    evidence = {item.id: judge.evidence(policy, item.question) for item in items}
    semaphore = asyncio.Semaphore(8)
    results: dict[str, Any] = {}

    async def one(setup: Setup, question: str) -> str:
        async with semaphore:
            final = ""
            async for answers in playground.answer([setup], [[]], question):
                final = answers[0].text if not answers[0].error else ""
            return final

    for name, setup in setups.items():
        answers = await asyncio.gather(*(one(setup, item.question) for item in items))
        scores = [judge.score(answer, domain=policy, question=item.question, item=item, evidence=evidence[item.id])
                  for answer, item in zip(answers, items, strict=True)]  # fmt: skip
        results[name] = {
            "terminology": mean([s.terminology or 0.0 for s in scores]),
            "hallucination_rate": mean([float(s.hallucination) for s in scores]),
            "loop_rate": mean([float(s.loops) for s in scores]),
            "figures_right": mean([float(s.figures_right) for s in scores if s.figures_right is not None]),
            "style": mean([s.style_score for s in scores if s.style_score is not None]),
            "sign_off": mean([float(s.voice["sign_off"]) for s in scores if "sign_off" in s.voice]),
            "answered": sum(bool(a) for a in answers),
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("domain")
    parser.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    parser.add_argument("--max-steps", type=int, default=80, help="optimizer steps per recipe (the same for all)")
    parser.add_argument("--out", type=Path, default=REPO / ".data" / "study")
    parser.add_argument("--limit", type=int, help="measure on the first N paraphrase questions only (default: all)")
    parser.add_argument("--reuse", action="store_true",
                        help="measure a recipe that an earlier run trained in --out as it is instead of training it "
                        "again (recipes not trained there yet are trained)")  # fmt: skip
    parser.add_argument("--label", help="added to the result file's name, for several studies of a domain in a day")
    args = parser.parse_args()
    settings = load_settings()
    shipped = load_train_config(settings.paths.adapters / args.domain / "train.yaml").model_dump()
    trained: dict[str, dict[str, Any]] = {}
    reused = [recipe for recipe in args.recipes if args.reuse and (args.out / args.domain / recipe).is_dir()]
    for recipe in [recipe for recipe in args.recipes if recipe not in reused]:
        config = TrainConfig.model_validate({**shipped, **RECIPES[recipe]})
        started = time.monotonic()
        facts = train(args.domain, settings, config, args.out / args.domain / recipe, max_steps=args.max_steps)
        trained[recipe] = {
            "eval_loss": round(facts["eval_loss"], 4),
            "minutes": round(facts["minutes"], 1),
            "wall_minutes": round((time.monotonic() - started) / 60, 1),
            "changes": RECIPES[recipe],
        }
        print(f"trained {recipe}: eval loss {facts['eval_loss']:.3f} in {facts['minutes']:.1f} min", flush=True)
    adapters = {f"{args.domain}-{recipe}": args.out / args.domain / recipe for recipe in args.recipes}
    adapters[args.domain] = settings.paths.adapters / args.domain  # the shipped adapter, trained in full, for scale
    content = load_content(settings.paths.personas, settings.paths.kb, settings.paths.adapters, settings.paths.evals)
    persona = content.domains[args.domain].persona
    sampling = {"temperature": 0.0, "max_tokens": 256, **RECOMMENDED}
    setups = {
        "base + persona": Setup(persona=persona, **sampling),
        "shipped": Setup(adapter=args.domain, persona=persona, **sampling),
    }
    setups |= {recipe: Setup(adapter=f"{args.domain}-{recipe}", persona=persona, **sampling) for recipe in args.recipes}
    rag = RAGStore(settings)
    with VLLMServer(settings, adapters=adapters) as server:
        server.wait_ready()
        playground = Playground(server.client(timeout_s=600), rag, content.personas)
        measured = asyncio.run(measure(playground, Judge(content, rag), args.domain, setups, args.limit))
    print(f"\n{'recipe':18} {'terminology':>11} {'halluc.':>8} {'loops':>6} {'figures':>7} {'style':>6} "
          f"{'sign-off':>8} {'eval loss':>9}")  # fmt: skip
    for name, row in measured.items():
        loss = trained.get(name, {}).get("eval_loss", "")
        print(f"{name:18} {row['terminology']!s:>11} {row['hallucination_rate']!s:>8} {row['loop_rate']!s:>6} "
              f"{row['figures_right']!s:>7} {row['style']!s:>6} {row['sign_off']!s:>8} {loss!s:>9}")  # fmt: skip
    results = REPO / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    date = datetime.now(UTC).date().isoformat()
    record = {"domain": args.domain, "date": date, "machine": describe(), "max_steps": args.max_steps,
              "questions": args.limit or "all",
              "split": "paraphrase", "sampling": sampling, "trained": trained, "reused": reused,
              "measured": measured}  # fmt: skip
    path = results / f"recipes-{args.domain}-{date}{f'-{args.label}' if args.label else ''}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
