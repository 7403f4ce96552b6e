"""Batch evaluation: eval questions through the real vLLM server in a matrix of configurations, scored and summarised,
with a verdict per domain (fine-tune, RAG, prompt or combine) and an HTML / Markdown report.

    python -m app.eval --questions evals/*.jsonl --out .data/eval                 # the full matrix (`make eval`)
    python -m app.eval --questions evals/support.jsonl --out /tmp/ev --limit 2 --configs base+persona,adapter+persona
    python -m app.eval --questions evals/*.jsonl --out .data/eval --vllm-url http://gpu-box:8000/v1

For every domain of the question files it answers each question with each configuration (default: `base`,
`base+persona` and `adapter+persona`, each with RAG off and on, at temperature 0) through
`app.playground.answer_panel`, so the eval sends exactly the prompts the UI sends; `--concurrency` requests are in
flight at once and vLLM batches them. Answers are cached in OUT/cache.jsonl, so a re-run (or a run after Ctrl-C)
asks only for what is missing. Then every answer is scored (`app.scoring.score_answer`), summarised per domain and
configuration, and `decide_verdict` applies the rules of docs/fine-tune-or-not.md. Outputs and schema: docs/eval.md.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Collection, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tqdm import tqdm

from app.config import ConfigError, Settings, load_settings
from app.configuration import DEFAULT_MAX_TOKENS, Configuration
from app.content import EvalItem, Persona, load_jsonl, load_personas
from app.playground import PanelAnswer, answer_panels
from app.rag import Citation, RAGError, RAGStore, embeddings
from app.scoring import score_answer
from app.serving.client import ModelInfo, ServingClient, ServingError, server_is_up
from app.serving.process import VLLMServer

log = logging.getLogger(__name__)

# The configuration matrix, as specs for Configuration.for_domain: `base` or `adapter` (the domain's adapter), then
# optionally `+persona` (the domain's persona) and `+rag` (retrieval from kb/<domain>).
DEFAULT_SPECS = ("base", "base+rag", "base+persona", "base+persona+rag", "adapter+persona", "adapter+persona+rag")
PROMPT, ADAPTER, RAG, COMBINED = "base+persona", "adapter+persona", "base+persona+rag", "adapter+persona+rag"
VERDICTS = ("fine-tune", "RAG", "prompt", "combine")
VERDICT_MARGIN = 0.05  # a gain in mean quality (0-1) below this is noise, not a reason to train or retrieve
VOLATILE_DOMAINS = ("support",)  # facts (prices, policies) change faster than anyone would retrain an adapter
VOICE_DOMAINS = frozenset({"support"})  # domains whose persona's style rules are a brand voice to score
EVAL_TEMPERATURE = 0.0
DEFAULT_CONCURRENCY = 8
EVIDENCE_K = 4  # chunks the checker retrieves per question as evidence for the claim check


class EvalError(RuntimeError):
    """The evaluation cannot run as asked; the message says what to do."""


# --- inputs -----------------------------------------------------------------------------------------------------------


def spec_of(config: Configuration) -> str:
    """The spec a configuration was made from: "adapter+persona+rag", "base", ..."""
    parts = ["adapter" if config.adapter else "base"]
    parts += ["persona"] * bool(config.persona) + ["rag"] * bool(config.rag)
    return "+".join(parts)


def parse_specs(text: str) -> list[str]:
    """Comma-separated specs ("base,adapter+persona+rag") in canonical form, duplicates dropped; ValueError if bad."""
    specs: list[str] = []
    for raw in text.split(","):
        spec = spec_of(Configuration.for_domain(raw, "domain")) if raw.strip() else None
        if spec and spec not in specs:
            specs.append(spec)
    if not specs:
        raise ValueError("no configuration given: expected e.g. base,base+persona,adapter+persona")
    return specs


def load_questions(paths: Sequence[Path]) -> list[EvalItem]:
    """Every eval item of the given JSONL files; EvalError naming each file and line that is wrong."""
    items: list[EvalItem] = []
    problems: list[str] = []
    for path in paths:
        if not path.is_file():
            raise EvalError(f"{path}: question file not found; pass JSONL files such as evals/support.jsonl")
        found, trouble = load_jsonl(path, EvalItem)
        items += found
        problems += [str(problem) for problem in trouble]
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            problems.append(f"duplicate question id '{item.id}': ids must be unique across the files")
        seen.add(item.id)
    if problems:
        raise EvalError("bad question file(s), fix these lines (format: docs/content.md):\n" + "\n".join(problems))
    if not items:
        raise EvalError(f"no questions in {', '.join(map(str, paths))}")
    return items


def by_domain(
    items: Sequence[EvalItem], domains: Collection[str] | None = None, limit: int | None = None
) -> dict[str, list[EvalItem]]:
    """Items grouped by domain (sorted), the first `limit` of each in file order; only `domains` if given."""
    grouped: dict[str, list[EvalItem]] = {}
    for item in items:
        if domains is None or item.domain in domains:
            grouped.setdefault(item.domain, []).append(item)
    return {domain: grouped[domain][:limit] for domain in sorted(grouped)}


def personas_in(folder: Path) -> dict[str, Persona]:
    """The valid personas of a folder by name (a broken file is logged and left out)."""
    personas, problems = load_personas(folder)
    for problem in problems:
        log.warning("persona not loaded: %s", problem)
    return personas


@dataclass(frozen=True)
class Job:
    """One answer to get: an eval question and the configuration that answers it."""

    item: EvalItem
    config: Configuration


def plan_jobs(
    questions: Mapping[str, Sequence[EvalItem]],
    specs: Sequence[str],
    *,
    adapters: Collection[str],
    personas: Collection[str],
    kbs: Collection[str],
    max_tokens: int,
) -> tuple[list[Job], list[str]]:
    """Every (question, configuration) to answer, by domain then spec; a spec whose adapter, persona or knowledge
    base the domain lacks is skipped with a warning saying what to add."""
    available = {"adapter": adapters, "persona": personas, "rag": kbs}
    jobs: list[Job] = []
    warnings: list[str] = []
    for domain, items in questions.items():
        hints = {
            "adapter": f"the server has no adapter '{domain}' (train it and serve adapters/{domain}/)",
            "persona": f"no persona '{domain}' (add personas/{domain}.yaml)",
            "rag": f"no knowledge base '{domain}' (add kb/{domain}/)",
        }
        for spec in specs:
            config = Configuration.for_domain(spec, domain, temperature=EVAL_TEMPERATURE, max_tokens=max_tokens)
            missing = [hints[part] for part in hints if getattr(config, part) and domain not in available[part]]
            if missing:
                warnings.append(f"{domain}: skipping {spec}: {'; '.join(missing)}")
                continue
            jobs += [Job(item, config) for item in items]
    return jobs, warnings


# --- answers and their cache ------------------------------------------------------------------------------------------


def cache_key(config: Configuration, question: str, max_tokens: int, version: str) -> str:
    """What makes an answer reusable: the configuration, the question, the answer length and the `answer_versions`
    of what answered it."""
    payload = {
        "config": config.model_dump(mode="json"),
        "question": question,
        "max_tokens": max_tokens,
        "base_model": version,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def answer_versions(jobs: Sequence[Job], models: Sequence[ModelInfo], rag: RAGStore) -> list[str]:
    """Per job, what its answer depends on beyond configuration and question: the base model, the hash of the
    adapter's weights (its folder as the server names it, where they cannot be read) and the hash of the knowledge
    base's files, so that a retrained adapter or an edited knowledge base is asked again, not read from the cache."""
    base = next(model for model in models if not model.is_adapter)
    weights: dict[str, str] = {}
    for model in models:
        if model.is_adapter:
            path = Path(model.root or "") / "adapter_model.safetensors"
            weights[model.id] = _sha256(path.read_bytes()) if model.root and path.is_file() else model.root or model.id
    kbs = {job.config.rag for job in jobs} - {None}
    files = {kb: _sha256(json.dumps(rag.fingerprint(kb), sort_keys=True).encode()) for kb in kbs if kb}
    versions = []
    for job in jobs:
        parts = [base.root or base.id, weights.get(job.config.adapter or ""), files.get(job.config.rag or "")]
        versions.append("|".join(part for part in parts if part))
    return versions


def _answer_from_json(data: Mapping[str, Any]) -> PanelAnswer:
    return PanelAnswer(**{**data, "citations": [Citation(**c) for c in data.get("citations", [])]})


class AnswerCache:
    """Finished answers by `cache_key`, appended to a JSONL file as they arrive (None: in memory only).

    Only answers without an error are kept, so a re-run asks again for the ones that failed. A line that cannot be
    read (a run killed mid-write) is ignored and its answer asked for again.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._answers: dict[str, PanelAnswer] = {}
        if path is None or not path.is_file():
            return
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            try:
                record = json.loads(line)
                self._answers[record["key"]] = _answer_from_json(record["answer"])
            except (ValueError, KeyError, TypeError):
                log.warning("%s line %d: unreadable cache entry, its answer will be asked for again", path, number)

    def __len__(self) -> int:
        return len(self._answers)

    def get(self, key: str) -> PanelAnswer | None:
        return self._answers.get(key)

    def put(self, key: str, answer: PanelAnswer) -> None:
        if answer.error is not None:
            return
        self._answers[key] = answer
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as file:
                file.write(json.dumps({"key": key, "answer": asdict(answer)}, ensure_ascii=False) + "\n")


async def answer_one(
    client: ServingClient, rag: RAGStore, job: Job, personas: Mapping[str, Persona], base_model: str
) -> PanelAnswer:
    """One finished answer, through the same code path as a Compare panel (failures end up in `.error`)."""
    final = PanelAnswer()
    config = job.config.resolve(personas, base_model)
    async for panels in answer_panels(client, rag, [config], [[]], job.item.question):
        final = panels[0]
    return final


async def collect_answers(
    client: ServingClient,
    rag: RAGStore,
    jobs: Sequence[Job],
    *,
    personas: Mapping[str, Persona],
    base_model: str,
    versions: Sequence[str],
    cache: AnswerCache,
    concurrency: int,
) -> list[tuple[PanelAnswer, bool]]:
    """Every job's answer (same order), and whether it came from the cache; `concurrency` requests at a time.

    Requests for the base model and for adapters share batches; on CPU that is only correct with app.serving.vllm_plugin
    installed (`make install`), which a server started here loads.
    """
    keys = [
        cache_key(job.config, job.item.question, job.config.max_tokens, version)
        for job, version in zip(jobs, versions, strict=True)
    ]
    results: list[tuple[PanelAnswer, bool] | None] = [
        None if hit is None else (hit, True) for hit in map(cache.get, keys)
    ]
    semaphore = asyncio.Semaphore(concurrency)
    cached = len(jobs) - results.count(None)
    with tqdm(total=len(jobs), initial=cached, desc="answers", unit="answer") as bar:

        async def ask(index: int) -> None:
            async with semaphore:
                found = await answer_one(client, rag, jobs[index], personas, base_model)
            cache.put(keys[index], found)
            results[index] = (found, False)
            bar.update(1)

        await asyncio.gather(*(ask(index) for index, result in enumerate(results) if result is None))
    return [result for result in results if result is not None]


# --- scoring, summary, verdict (pure but for the embedding model) -----------------------------------------------------


def result_record(
    job: Job, answer: PanelAnswer, *, persona: Persona | None, evidence: Sequence[str], voice: bool, cached: bool
) -> dict[str, Any]:
    """One line of results.jsonl: the question, the configuration, the answer, its scores and its costs."""
    scores = None
    if answer.error is None:
        scores = score_answer(
            answer.text,
            question=job.item.question,
            item=job.item,
            persona=persona,
            context=[c.text for c in answer.citations],
            evidence=evidence,
            embed=embeddings().embed_documents,
            check_voice=voice,
        ).as_record()
    return {
        "id": job.item.id,
        "domain": job.item.domain,
        "config": job.config.model_dump(mode="json"),
        "spec": spec_of(job.config),
        "label": job.config.label,
        "question": job.item.question,
        "answer": answer.text,
        "error": answer.error,
        "scores": scores,
        "sources": [c.path for c in answer.citations],
        "latency_s": round(answer.elapsed_s, 3),
        "first_token_s": None if answer.first_token_s is None else round(answer.first_token_s, 3),
        "tokens_in": answer.prompt_tokens,
        "tokens_out": answer.completion_tokens,
        "cached": cached,
    }


def _mean(values: Sequence[float | None], digits: int = 4) -> float | None:
    present = [value for value in values if value is not None]
    return round(sum(present) / len(present), digits) if present else None


def summary_row(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One domain x configuration: rates and means over the answered (non-error) records; errors counted apart."""
    config, domain = records[0]["config"], records[0]["domain"]
    answered = [r for r in records if r["error"] is None]
    scores = [r["scores"] for r in answered]
    return {
        "domain": domain,
        "model": config["adapter"] or "base",
        "persona": bool(config["persona"]),
        "rag": bool(config["rag"]),
        "terminology_accuracy": _mean([s["terminology"] for s in scores]),
        "hallucination_rate": _mean([float(s["hallucination"]) for s in scores]),
        "groundedness": _mean([s["groundedness"] for s in scores]) if config["rag"] else None,
        "style_score": _mean([s["style_score"] for s in scores]),
        "latency_s": _mean([r["latency_s"] for r in answered], 3),
        "n": len(answered),
        "spec": records[0]["spec"],
        "label": records[0]["label"],
        "errors": len(records) - len(answered),
        "forbidden_rate": _mean([float(bool(s["forbidden"])) for s in scores]),
        "unsupported_rate": _mean([float(bool(s["unsupported"])) for s in scores]),
        "first_token_s": _mean([r["first_token_s"] for r in answered], 3),
        "tokens_in": _mean([r["tokens_in"] for r in answered], 1),
        "tokens_out": _mean([r["tokens_out"] for r in answered], 1),
    }


def _goodness(row: Mapping[str, Any]) -> dict[str, float]:
    """The quality metrics a row measured, each oriented so that higher is better."""
    rate = row["hallucination_rate"]
    values = {
        "terminology": row["terminology_accuracy"],
        "factuality (1 - hallucination rate)": None if rate is None else 1 - rate,
        "style": row["style_score"],
    }
    return {name: value for name, value in values.items() if value is not None}


def quality(row: Mapping[str, Any]) -> float | None:
    """One 0-1 number per row: the mean of terminology accuracy, 1 - hallucination rate and (where measured) the
    style score. None when the row has no answered item."""
    return _mean(list(_goodness(row).values()))


def decide_verdict(
    rows: Sequence[Mapping[str, Any]], *, volatile: bool = False, margin: float = VERDICT_MARGIN
) -> dict:
    """fine-tune, RAG, prompt or combine for one domain, from its summary rows (docs/fine-tune-or-not.md).

    Candidates are compared with base+persona (the prompt-engineering baseline) by `quality`; a gain counts when it
    is at least `margin`. In order: *combine* if adapter+persona+rag beats base+persona, the adapter alone and RAG
    alone by the margin; *prompt* if neither the adapter (adapter+persona) nor RAG (base+persona+rag) gains the
    margin; *RAG* if only RAG does; *fine-tune* if only the adapter does. If both do: *RAG* when the domain is
    `volatile` (its facts change faster than one would retrain), when RAG's quality beats the adapter's by the
    margin, or when RAG is within the margin of the adapter on every metric (RAG already answers as well, with no
    training); otherwise *fine-tune*: the adapter is better on some metric and cheaper per answer (no retrieved
    context in the prompt). Returns the verdict, a one-sentence reason and the numbers behind it.
    """
    by_spec = {row["spec"]: row for row in rows if row["n"]}
    numbers = {
        spec: {
            "quality": quality(row),
            **{key: row[key] for key in ("terminology_accuracy", "hallucination_rate", "style_score")},
            **{key: row[key] for key in ("tokens_in", "latency_s", "n")},
        }
        for spec, row in by_spec.items()
        if spec in (PROMPT, ADAPTER, RAG, COMBINED)
    }
    q = {spec: values["quality"] for spec, values in numbers.items() if values["quality"] is not None}
    decision: dict[str, Any] = {"margin": margin, "volatile": volatile, "numbers": numbers}
    if PROMPT not in q:
        return {**decision, "verdict": None, "gains": {}, "reason": "no answered base+persona rows to compare with"}
    gains = {spec: round(q[spec] - q[PROMPT], 4) for spec in (ADAPTER, RAG, COMBINED) if spec in q}
    verdict, reason = _verdict(q, gains, by_spec, volatile=volatile, margin=margin)
    return {**decision, "verdict": verdict, "gains": gains, "reason": reason}


def _verdict(  # noqa: PLR0911 - one return per rule of the decision list, in order
    q: Mapping[str, float],
    gains: Mapping[str, float],
    rows: Mapping[str, Mapping[str, Any]],
    *,
    volatile: bool,
    margin: float,
) -> tuple[str, str]:
    adapter_wins = gains.get(ADAPTER, 0.0) >= margin
    rag_wins = gains.get(RAG, 0.0) >= margin
    if COMBINED in q and ADAPTER in q and RAG in q and gains[COMBINED] >= margin:
        lead = q[COMBINED] - max(q[ADAPTER], q[RAG])
        if lead >= margin:
            return "combine", (
                f"adapter + RAG ({q[COMBINED]:.2f}) beats the adapter alone ({q[ADAPTER]:.2f}) and RAG alone "
                f"({q[RAG]:.2f}) by {lead:.2f} (margin {margin:g})."
            )
    if not adapter_wins and not rag_wins:
        found = ", ".join(f"{spec} {gains[spec]:+.2f}" for spec in (ADAPTER, RAG) if spec in gains) or "none measured"
        return "prompt", f"neither the adapter nor RAG beats base + persona ({q[PROMPT]:.2f}) by {margin:g} ({found})."
    if not adapter_wins:
        return "RAG", f"RAG gains {gains[RAG]:+.2f} over base + persona and the adapter does not ({_gain(gains)})."
    if not rag_wins:
        return "fine-tune", (
            f"the adapter gains {gains[ADAPTER]:+.2f} over base + persona and RAG does not ({_gain(gains, RAG)})"
            + ("; keep the fast-changing facts out of its training data." if volatile else ".")
        )
    if volatile:
        return "RAG", (
            f"both beat base + persona (adapter {gains[ADAPTER]:+.2f}, RAG {gains[RAG]:+.2f}), but this domain's facts "
            "change fast, so update the knowledge base instead of retraining."
        )
    if q[RAG] - q[ADAPTER] >= margin:
        return "RAG", f"RAG ({q[RAG]:.2f}) beats the adapter ({q[ADAPTER]:.2f}) by at least {margin:g}."
    adapter_metrics, rag_metrics = _goodness(rows[ADAPTER]), _goodness(rows[RAG])
    ahead = [m for m in adapter_metrics if m in rag_metrics and adapter_metrics[m] - rag_metrics[m] > margin]
    if not ahead:
        return "RAG", (
            f"RAG is within {margin:g} of the adapter on every metric ({q[RAG]:.2f} vs {q[ADAPTER]:.2f}), so it "
            "answers as well without training."
        )
    saved = (rows[RAG]["tokens_in"] or 0) - (rows[ADAPTER]["tokens_in"] or 0)
    return "fine-tune", (
        f"the adapter beats RAG on {', '.join(ahead)} by more than {margin:g} and needs {saved:.0f} fewer prompt "
        f"tokens per answer (latency {rows[ADAPTER]['latency_s']:.2f} s vs {rows[RAG]['latency_s']:.2f} s)."
    )


def _gain(gains: Mapping[str, float], spec: str = ADAPTER) -> str:
    return f"{gains[spec]:+.2f}" if spec in gains else "not measured"


def summarize(
    results: Sequence[Mapping[str, Any]],
    *,
    volatile_domains: Collection[str] = VOLATILE_DOMAINS,
    margin: float = VERDICT_MARGIN,
) -> dict[str, Any]:
    """summary.json: one row per domain x configuration (in results order) and a verdict per domain."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for record in results:
        groups.setdefault((record["domain"], record["spec"]), []).append(record)
    rows = [summary_row(records) for records in groups.values()]
    domains = sorted({row["domain"] for row in rows})
    return {
        "rows": rows,
        "verdict": {
            domain: decide_verdict(
                [row for row in rows if row["domain"] == domain], volatile=domain in volatile_domains, margin=margin
            )
            for domain in domains
        },
    }


# --- a whole run ------------------------------------------------------------------------------------------------------


@dataclass
class EvalRun:
    """What `evaluate` produced: results.jsonl lines, summary.json, warnings and counts."""

    results: list[dict[str, Any]]
    summary: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    base_model: str = ""
    adapters: list[str] = field(default_factory=list)
    cached: int = 0


def _evidence(rag: RAGStore, questions: Mapping[str, Sequence[EvalItem]]) -> dict[str, list[str]]:
    """The checker's own top-k chunks of kb/<domain> per question id (the same for every configuration)."""
    kbs = set(rag.names())
    return {
        item.id: [c.text for c in rag.retrieve(domain, item.question, EVIDENCE_K)] if domain in kbs else []
        for domain, items in questions.items()
        for item in items
    }


def score_all(
    jobs: Sequence[Job],
    answers: Sequence[tuple[PanelAnswer, bool]],
    *,
    rag: RAGStore,
    personas: Mapping[str, Persona],
    questions: Mapping[str, Sequence[EvalItem]],
) -> list[dict[str, Any]]:
    """results.jsonl records; the persona scored against is always the domain's own (its facts, its voice)."""
    evidence = _evidence(rag, questions)
    return [
        result_record(
            job,
            found,
            persona=personas.get(job.item.domain),
            evidence=evidence[job.item.id],
            voice=job.item.domain in VOICE_DOMAINS,
            cached=hit,
        )
        for job, (found, hit) in tqdm(list(zip(jobs, answers, strict=True)), desc="scoring", unit="answer")
    ]


async def evaluate(
    client: ServingClient,
    rag: RAGStore,
    questions: Mapping[str, Sequence[EvalItem]],
    specs: Sequence[str] = DEFAULT_SPECS,
    *,
    personas: Mapping[str, Persona],
    cache: AnswerCache | None = None,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    concurrency: int = DEFAULT_CONCURRENCY,
    volatile_domains: Collection[str] = VOLATILE_DOMAINS,
    margin: float = VERDICT_MARGIN,
) -> EvalRun:
    """Answer every question with every spec the server can serve, score the answers and summarise them.

    Raises ServingError when the server is unreachable and EvalError when nothing can be asked.
    """
    models = await client.list_models()
    base = next((model for model in models if not model.is_adapter), None)
    if base is None:
        raise EvalError(f"the server at {client.base_url} serves no base model")
    adapters = sorted(model.id for model in models if model.is_adapter)
    jobs, warnings = plan_jobs(
        questions, specs, adapters=adapters, personas=personas, kbs=rag.names(), max_tokens=max_tokens
    )
    for warning in warnings:
        log.warning(warning)
    if not jobs:
        raise EvalError("nothing to ask: " + ("; ".join(warnings) or "no questions"))
    cache = AnswerCache() if cache is None else cache
    identity = base.root or base.id
    versions = await asyncio.to_thread(answer_versions, jobs, models, rag)
    answers = await collect_answers(
        client, rag, jobs, personas=personas, base_model=base.id, versions=versions, cache=cache,
        concurrency=concurrency,
    )  # fmt: skip
    results = await asyncio.to_thread(score_all, jobs, answers, rag=rag, personas=personas, questions=questions)
    summary = summarize(results, volatile_domains=volatile_domains, margin=margin)
    cached = sum(hit for _, hit in answers)
    return EvalRun(results, summary, warnings, base_model=identity, adapters=adapters, cached=cached)


# --- the command line -------------------------------------------------------------------------------------------------


def hardware() -> str:
    """This machine in one line: CPU model and cores, memory, and its NVIDIA GPUs or "no GPU"."""
    cpu = platform.processor() or platform.machine()
    memory = ""
    try:
        cpu = next(
            (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
             if line.startswith("model name")),
            cpu,
        )  # fmt: skip
        memory = f", {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM"
    except (OSError, ValueError):  # not Linux
        pass
    gpus = ""
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"]
        done = subprocess.run(query, capture_output=True, text=True, timeout=30, check=False)
        gpus = ", ".join(line.strip() for line in done.stdout.splitlines() if line.strip())
    return f"{cpu}, {os.cpu_count()} cores{memory}, {gpus or 'no GPU'}"


def run_meta(args: argparse.Namespace, run: EvalRun, *, server: str, wall_s: float, argv: Sequence[str]) -> dict:
    """run.json: how the results were made (command, date, machine, model, settings, counts)."""
    errors = sum(record["error"] is not None for record in run.results)
    return {
        "command": shlex.join(["python", "-m", "app.eval", *argv]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "wall_s": round(wall_s, 1),
        "hardware": hardware(),
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
        "volatile_domains": args.volatile_domains,
        "warnings": run.warnings,
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
    from app import report  # matplotlib: only once there is something to draw

    out.mkdir(parents=True, exist_ok=True)
    results_text = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in run.results)
    (out / "results.jsonl").write_text(results_text, encoding="utf-8")
    (out / "summary.json").write_text(json.dumps(run.summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
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
            section = report.adapter_section(run.summary, shown, meta)
            path.write_text(report.with_section(path.read_text(encoding="utf-8"), section), encoding="utf-8")
            written.append(path)
    return written


def adapter_domains(summary: Mapping[str, Any]) -> list[str]:
    """The domains whose adapter was measured against the persona-prompted base model."""
    answered = {(row["domain"], row["spec"]) for row in summary["rows"] if row["n"]}
    return sorted(domain for domain, spec in answered if spec == ADAPTER and (domain, PROMPT) in answered)


def _specs_arg(text: str) -> list[str]:
    try:
        return parse_specs(text)
    except ValueError as exc:
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
        epilog="Configuration specs: `base` (the base model) or `adapter` (the LoRA adapter named after the domain), "
        "then optionally `+persona` (the domain's persona as system prompt) and `+rag` (retrieval from kb/<domain>), "
        "e.g. --configs base,base+persona,adapter+persona,adapter+persona+rag. All run at temperature 0.",
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
        "--configs", type=_specs_arg, default=list(DEFAULT_SPECS), metavar="SPECS",
        help=f"comma-separated configuration specs (default: {','.join(DEFAULT_SPECS)})",
    )  # fmt: skip
    parser.add_argument("--limit", type=_positive, metavar="N", help="only the first N questions of each domain")
    parser.add_argument(
        "--concurrency", type=_positive, default=DEFAULT_CONCURRENCY, metavar="N",
        help=f"requests in flight at once; vLLM batches them (default {DEFAULT_CONCURRENCY})",
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
        "--volatile-domains", nargs="*", default=list(VOLATILE_DOMAINS), metavar="DOMAIN",
        help="domains whose facts (prices, policies) change fast, which favours RAG over fine-tuning; give the flag "
        f"alone to treat every domain as stable (default: {' '.join(VOLATILE_DOMAINS)})",
    )  # fmt: skip
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


def _start_server(settings: Settings, stack: ExitStack) -> VLLMServer:
    """Our own vLLM child process with every valid adapter in paths.adapters; stopped when `stack` closes."""
    url = settings.vllm.base_url
    if server_is_up(url, settings.vllm.api_key):
        raise EvalError(f"a server already answers at {url}: pass --vllm-url {url} to use it, or set vllm.port")
    from app.__main__ import ensure_model
    from app.adapters import servable_adapters

    ensure_model(settings)
    adapters, warnings = servable_adapters(settings)
    for warning in warnings:
        log.warning(warning)
    return stack.enter_context(VLLMServer(settings, adapters=adapters))


async def _evaluate_with_client(
    settings: Settings, rag: RAGStore, questions: Mapping[str, Sequence[EvalItem]], args: argparse.Namespace
) -> EvalRun:
    client = ServingClient.from_settings(settings)
    try:
        return await evaluate(
            client, rag, questions, args.configs,
            personas=personas_in(settings.paths.personas), cache=AnswerCache(args.out / "cache.jsonl"),
            max_tokens=args.max_tokens, concurrency=args.concurrency,
            volatile_domains=args.volatile_domains, margin=args.margin,
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
            server = None if settings.vllm.url else _start_server(settings, stack)
            rag = RAGStore(settings)
            for domain in questions:
                if domain in rag.names():
                    rag.ensure_index(domain)  # built (if stale) while vLLM loads
            if server is not None:
                server.wait_ready()
            run = asyncio.run(_evaluate_with_client(settings, rag, questions, args))
    except (EvalError, ServingError, RAGError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            f"interrupted: finished answers are kept in {args.out / 'cache.jsonl'}; run again to resume",
            file=sys.stderr,
        )
        return 130
    where = f"{settings.vllm.base_url} ({'started by this run' if server else 'external'})"
    meta = run_meta(args, run, server=where, wall_s=time.monotonic() - started, argv=argv)
    written = write_outputs(
        args.out, run, meta, args.results_md, model_cards=args.model_cards, adapters_md=args.adapters_md
    )
    for domain, decision in run.summary["verdict"].items():
        print(f"{domain:10} {decision['verdict'] or 'no verdict':10} {decision['reason']}")
    print(f"{meta['answers']} answers ({meta['cached']} cached, {meta['errors']} errors) in {meta['wall_s']:.0f} s")
    print("wrote " + ", ".join(str(path) for path in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
