"""The batch evaluation from the command line: eval questions through vLLM with a matrix of named specs, scored by
the one judge, summarised with a verdict per domain, and written as results, summary, an HTML / Markdown report,
charts and the adapter-vs-base sections of the model cards.

    python -m app.eval --questions evals/*.jsonl --out .data/eval                 # the full matrix (`make eval`)
    python -m app.eval --questions evals/support.jsonl --out /tmp/ev --limit 2 --configs base+persona,adapter+persona
    python -m app.eval --questions evals/*.jsonl --out .data/eval --vllm-url http://gpu-box:8000/v1

Without --vllm-url (or vllm.url) it starts its own vLLM through `start_local_server`, like `python -m app`, and
stops it at the end; answers are cached in OUT/cache.jsonl, so a re-run (or a run after Ctrl-C) asks only for what
is missing. Outputs and schema: docs/eval.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app import model_cards as model_cards_module
from app.config import ConfigError, load_settings
from app.content import Content, EvalItem, load_content
from app.eval import report
from app.eval.run import (
    DEFAULT_CONCURRENCY,
    EVAL_TEMPERATURE,
    AnswerCache,
    EvalError,
    EvalRun,
    by_domain,
    evaluate,
    load_questions,
)
from app.eval.verdict import VERDICT_MARGIN, adapter_domains
from app.hardware import describe
from app.playground import Playground
from app.rag import RAGError, RAGStore
from app.scoring.judge import Judge
from app.serving.client import ServingClient, ServingError
from app.serving.process import start_local_server
from app.setups import DEFAULT_MAX_TOKENS, EVAL_MATRIX, SpecError, canonical_specs


def run_meta(
    args: argparse.Namespace, run: EvalRun, *, server: str, wall_s: float, argv: Sequence[str], volatile: list[str]
) -> dict[str, Any]:
    """run.json: how the results were made (command, date, machine, model, settings, counts)."""
    errors = sum(record["error"] is not None for record in run.results)
    partial = [] if args.limit is None else [
        f"a partial run (--limit {args.limit}): the first {args.limit} questions of each domain and split, so one "
        f"answer moves a rate by up to {1 / args.limit:.2f}"
    ]  # fmt: skip
    return {
        "command": shlex.join(["python", "-m", "app.eval", *argv]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "wall_s": round(wall_s, 1),
        "hardware": describe(),
        "server": server,
        "base_model": run.base_model,
        "adapters": run.adapters,
        "domains": sorted({record["domain"] for record in run.results}),
        "configs": list(args.configs),
        "questions": len({record["id"] for record in run.results}),
        "answers": len(run.results),
        "cached": run.cached,
        "errors": errors,
        "concurrency": args.concurrency,
        "max_tokens": args.max_tokens,
        "temperature": EVAL_TEMPERATURE,
        "margin": args.margin,
        "volatile_domains": volatile,
        "warnings": [*partial, *run.warnings],
    }


def write_outputs(
    out: Path,
    run: EvalRun,
    meta: Mapping[str, Any],
    results_md: Path | None = None,
    *,
    model_cards: Path | None = None,
    adapters_md: Path | None = None,
) -> list[Path]:
    """results.jsonl, summary.json, run.json, charts, report.html and report.md in `out` (and `results_md`); the
    adapter-vs-base section in the model cards `model_cards`/<domain>/README.md and in `adapters_md`."""

    out.mkdir(parents=True, exist_ok=True)
    results_text = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in run.results)
    (out / "results.jsonl").write_text(results_text, encoding="utf-8")
    (out / "summary.json").write_text(
        json.dumps(run.summary.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    (out / "run.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    charts = report.render_charts(run.summary)
    written = [out / "report.html", out / "report.md"]
    written[0].write_text(report.render_html(run.summary, run.results, meta, charts), encoding="utf-8")
    written[1].write_text(report.render_markdown(run.summary, run.results, meta, charts), encoding="utf-8")
    chart_dirs = [out]
    if results_md is not None:
        chart_dir = results_md.with_suffix("")  # docs/results.md -> its charts in docs/results/
        chart_dirs.append(chart_dir)
        text = report.render_markdown(
            run.summary, run.results, meta, charts,
            chart_prefix=f"{chart_dir.name}/", title=report.RESULTS_TITLE, note=report.RESULTS_NOTE,
        )  # fmt: skip
        chart_dir.mkdir(parents=True, exist_ok=True)
        results_md.write_text(text, encoding="utf-8")
        written.append(results_md)
    for folder in chart_dirs:
        for name, png in charts.items():
            (folder / name).write_bytes(png)
    compared = adapter_domains(run.summary)
    targets = [(model_cards / domain / "README.md", [domain]) for domain in compared] if model_cards else []
    targets += [(adapters_md, compared)] if adapters_md and compared else []
    for path, shown in targets:
        if path.is_file():
            model_cards_module.update_eval_section(path, model_cards_module.adapter_section(run.summary, shown, meta))
            written.append(path)
    return written


def _specs_arg(text: str) -> list[str]:
    try:
        return canonical_specs(text)
    except SpecError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m app.eval",
        description="Answer eval questions with a matrix of configurations through vLLM, score them, and say per "
        "domain whether fine-tuning, RAG, prompting or a combination wins (docs/eval.md).",
        epilog="Configuration specs: `base` (the base model) or `adapter` (the domain's LoRA adapter), then optionally "
        "`+persona` (the domain's persona as system prompt) and `+rag` (retrieval from its knowledge base), e.g. "
        "--configs base,base+persona,adapter+persona,adapter+persona+rag. All run at temperature 0. Which adapter and "
        "knowledge base belong to a domain, and whether its facts change often, is read from personas/<domain>.yaml.",
    )
    parser.add_argument(
        "--questions", nargs="+", type=Path, required=True, metavar="FILE",
        help="eval question files (JSONL, format in docs/content.md), e.g. evals/*.jsonl",
    )  # fmt: skip
    parser.add_argument(
        "--out", type=Path, required=True, metavar="DIR",
        help="output folder: cache.jsonl (answers, reused by the next run), results.jsonl, summary.json, run.json, "
        "report.html, report.md and chart PNGs",
    )  # fmt: skip
    parser.add_argument(
        "--configs", type=_specs_arg, default=list(EVAL_MATRIX), metavar="SPECS",
        help=f"comma-separated configuration specs (default: {','.join(EVAL_MATRIX)})",
    )  # fmt: skip
    parser.add_argument(
        "--limit", type=_positive, metavar="N", help="only the first N questions of each domain and split"
    )
    parser.add_argument(
        "--concurrency", type=_positive, default=DEFAULT_CONCURRENCY, metavar="N",
        help=f"requests in flight at once, batched by vLLM (default {DEFAULT_CONCURRENCY}; 1: repeats on any CPU)",
    )  # fmt: skip
    parser.add_argument(
        "--max-tokens", type=_positive, default=DEFAULT_MAX_TOKENS, metavar="N",
        help=f"answer length limit in tokens (default {DEFAULT_MAX_TOKENS})",
    )  # fmt: skip
    parser.add_argument(
        "--vllm-url", metavar="URL",
        help="OpenAI base URL of a running vLLM server to use (default: vllm.url from the settings; if unset, a "
        "server is started with every valid adapter in adapters/ and stopped at the end)",
    )  # fmt: skip
    parser.add_argument("--config", type=Path, metavar="FILE", help="YAML settings file (default: ./config.yaml)")
    parser.add_argument(
        "--margin", type=_fraction, default=VERDICT_MARGIN, metavar="X",
        help=f"smallest quality gain (0-1) that counts as a win in the verdict (default {VERDICT_MARGIN})",
    )  # fmt: skip
    parser.add_argument(
        "--results-md", type=Path, metavar="PATH",
        help="also write the Markdown report here, its charts in a folder beside it (make eval: docs/results.md)",
    )  # fmt: skip
    parser.add_argument(
        "--model-cards", type=Path, metavar="DIR",
        help="update the adapter-vs-base section of each measured adapter's model card, DIR/<domain>/README.md "
        "(make eval: adapters)",
    )  # fmt: skip
    parser.add_argument(
        "--adapters-md", type=Path, metavar="PATH",
        help="update the adapter-vs-base section of this document too (make eval: docs/adapters.md)",
    )  # fmt: skip
    return parser.parse_args(argv)


async def _evaluate_with_client(
    client: ServingClient, rag: RAGStore, content: Content, questions: Mapping[str, Sequence[EvalItem]],
    args: argparse.Namespace, *, mode: str,
) -> EvalRun:  # fmt: skip
    playground = Playground(client, rag, content.personas)
    judge = Judge(content, rag)
    try:
        return await evaluate(
            playground, judge, questions, args.configs, cache=AnswerCache(args.out / "cache.jsonl"),
            max_tokens=args.max_tokens, concurrency=args.concurrency, margin=args.margin, serving_mode=mode,
        )  # fmt: skip
    finally:
        await client.close()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    logging.basicConfig(format="%(levelname)s: %(message)s", level=logging.WARNING)
    started = time.monotonic()
    try:
        settings = load_settings(args.config, {"vllm.url": args.vllm_url})
        questions = by_domain(load_questions(args.questions), limit=args.limit)
    except (ConfigError, EvalError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        with ExitStack() as stack:
            server = None if settings.vllm.url else stack.enter_context(start_local_server(settings))
            rag = RAGStore(settings)
            content = load_content(settings.paths.personas, settings.paths.kb, settings.paths.adapters,
                                   settings.paths.evals)  # fmt: skip
            for name in questions:
                kb = content.domains[name].knowledge_base if name in content.domains else None
                if kb:
                    rag.ensure_index(kb)  # built (if stale) while vLLM loads
            if server is not None:
                server.wait_ready()
            client = ServingClient.from_settings(settings, api_key=server.api_key if server else None)
            # How the server computes: latencies and greedy answers depend on it (an external server's is not known).
            mode = f"torch.compile {'on' if settings.vllm.compile else 'off'} (vllm.compile)" if server else ""
            run = asyncio.run(_evaluate_with_client(client, rag, content, questions, args, mode=mode))
    except (EvalError, ServingError, RAGError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            f"interrupted: finished answers are kept in {args.out / 'cache.jsonl'}; run again to resume",
            file=sys.stderr,
        )
        return 130
    serving = f"started by this run, LoRA on, {mode}" if mode else "external: its serving mode is not known here"
    where = f"{settings.vllm.base_url} ({serving})"
    volatile = sorted(name for name, domain in content.domains.items() if domain.facts_change_often)
    meta = run_meta(args, run, server=where, wall_s=time.monotonic() - started, argv=argv, volatile=volatile)
    written = write_outputs(
        args.out, run, meta, args.results_md, model_cards=args.model_cards, adapters_md=args.adapters_md
    )
    for domain, decision in run.summary.verdict.items():
        print(f"{domain:10} {decision.verdict or 'no verdict':10} {decision.reason}")
    print(f"{meta['answers']} answers ({meta['cached']} cached, {meta['errors']} errors) in {meta['wall_s']:.0f} s")
    print("wrote " + ", ".join(str(path) for path in written))
    return 0
