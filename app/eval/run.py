"""Running an evaluation: eval questions x named specs -> answers through the Playground (cached) -> judged records.

`evaluate` plans the jobs (a spec a domain cannot run is skipped with a warning saying what to add), answers them
through `app.playground.Playground` exactly as a Compare panel would, `concurrency` at a time (vLLM batches them),
keeps finished answers in an `AnswerCache`, scores every answer with the one `Judge`, and summarises
(`app.eval.verdict`). The command line is app.eval.cli; the Eval tab calls `evaluate` too.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from app.content import Domain, EvalItem, load_jsonl
from app.eval.verdict import VERDICT_MARGIN, Summary, summarize
from app.playground import PanelAnswer, Playground
from app.rag import Citation, RAGStore
from app.scoring.judge import Judge
from app.serving.client import ModelInfo
from app.serving.vllm_plugin import lora_ops_version
from app.setups import DEFAULT_MAX_TOKENS, EVAL_MATRIX, RECOMMENDED, Setup, SpecError

log = logging.getLogger(__name__)

EVAL_TEMPERATURE = 0.0
DEFAULT_CONCURRENCY = 8


class EvalError(RuntimeError):
    """The evaluation cannot run as asked; the message says what to do."""


def load_questions(paths: Sequence[Path]) -> list[EvalItem]:
    """Every eval item of the given JSONL files; EvalError naming each file and line that is wrong."""
    items: list[EvalItem] = []
    problems: list[str] = []
    for path in paths:
        if not path.is_file():
            raise EvalError(f"{path}: question file not found; pass JSONL files such as evals/support.jsonl")
        found, trouble = load_jsonl(path, EvalItem)
        split = "paraphrase" if path.parent.name == "paraphrase" else "eval"
        items += [item.model_copy(update={"split": split}) for item in found]
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
    """Items grouped by domain (sorted), in file order; only `domains` if given, and only the first `limit` of each
    domain's split (eval set, paraphrases), so that a short run still measures both."""
    grouped: dict[str, list[EvalItem]] = {}
    taken: Counter[tuple[str, str]] = Counter()
    for item in items:
        if (domains is None or item.domain in domains) and (limit is None or taken[item.domain, item.split] < limit):
            taken[item.domain, item.split] += 1
            grouped.setdefault(item.domain, []).append(item)
    return {domain: grouped[domain] for domain in sorted(grouped)}


@dataclass(frozen=True)
class Job:
    """One answer to get: an eval question, the named spec and the Setup it makes for the question's domain."""

    item: EvalItem
    spec: str
    setup: Setup


def plan_jobs(
    questions: Mapping[str, Sequence[EvalItem]],
    specs: Sequence[str],
    *,
    domains: Mapping[str, Domain],
    adapters: Collection[str],
    max_tokens: int,
) -> tuple[list[Job], list[str]]:
    """Every (question, spec) to answer, by domain then spec; a spec whose adapter, persona or knowledge base the
    domain lacks is skipped with a warning saying what to add."""
    jobs: list[Job] = []
    warnings: list[str] = []
    for name, items in questions.items():
        domain = domains.get(name)
        if domain is None:
            warnings.append(f"{name}: skipping every spec: no persona names this domain (add personas/{name}.yaml)")
            continue
        for spec in specs:
            try:
                setup = Setup.parse(spec, domain, temperature=EVAL_TEMPERATURE, max_tokens=max_tokens, **RECOMMENDED)
            except SpecError:
                warnings.append(f"{name}: skipping {spec}: no knowledge base '{name}' (add kb/{name}/)")
                continue
            if setup.adapter and setup.adapter not in adapters:
                warnings.append(
                    f"{name}: skipping {spec}: the server has no adapter '{setup.adapter}' "
                    f"(train it and serve adapters/{setup.adapter}/)"
                )
                continue
            jobs += [Job(item, spec, setup) for item in items]
    return jobs, warnings


def cache_key(setup: Setup, question: str, max_tokens: int, version: str) -> str:
    """What makes an answer reusable: the Setup, the question, the answer length and the `answer_versions` of what
    answered it."""
    payload = {"config": setup.record(), "question": question, "max_tokens": max_tokens, "base_model": version}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def answer_versions(
    jobs: Sequence[Job], models: Sequence[ModelInfo], rag: RAGStore, serving: str, prompts: Sequence[str]
) -> list[str]:
    """Per job, what its answer depends on beyond Setup and question: the base model, the server's vLLM version
    (`serving`), the hash of its prompt (`prompts`: the messages it sends, passages left out, so the persona's text
    and RAG's rules), for an adapter the hash of its weights (its folder as the server names it, where they cannot
    be read) and of the CPU LoRA ops' code, and the hash of the knowledge base's files and of how many passages a
    prompt gets, so that an edited persona or prompt, a retrained adapter, an edited knowledge base, another
    `rag.passages` or other serving arithmetic is asked again, not read from the cache."""
    base = next(model for model in models if not model.is_adapter)
    weights: dict[str, str] = {}
    for model in models:
        if model.is_adapter:
            path = Path(model.root or "") / "adapter_model.safetensors"
            weights[model.id] = _sha256(path.read_bytes()) if model.root and path.is_file() else model.root or model.id
    kbs = {job.setup.rag for job in jobs} - {None}
    passages = rag.settings.rag.passages
    files = {kb: _sha256(json.dumps([rag.fingerprint(kb), passages], sort_keys=True).encode()) for kb in kbs if kb}
    ops = lora_ops_version()  # reads and hashes files: once, not per job
    versions = []
    for job, prompt in zip(jobs, prompts, strict=True):
        adapter = job.setup.adapter or ""
        parts = [
            base.root or base.id,
            serving,
            _sha256(prompt.encode()),
            weights.get(adapter),
            ops if adapter else "",
            files.get(job.setup.rag or ""),
        ]
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


def prompt_text(playground: Playground, job: Job) -> str:
    """The messages `job` sends, passages left out, as JSON; for an unknown persona (the answer will be an error
    naming it) the persona's name."""
    try:
        return json.dumps(playground.messages(job.setup, [], job.item.question, []), ensure_ascii=False)
    except ValueError:
        return f"unknown persona {job.setup.persona}"


async def answer_one(playground: Playground, job: Job) -> PanelAnswer:
    """One finished answer, through the same code path as a Compare panel (failures end up in `.error`)."""
    final = PanelAnswer()
    async for answers in playground.answer([job.setup], [[]], job.item.question):
        final = answers[0]
    return final


async def collect_answers(
    playground: Playground, jobs: Sequence[Job], *, versions: Sequence[str], cache: AnswerCache, concurrency: int
) -> list[tuple[PanelAnswer, bool]]:
    """Every job's answer (same order), and whether it came from the cache; `concurrency` requests at a time.

    Requests for the base model and for adapters share batches; on CPU that is only correct with
    app.serving.vllm_plugin installed (`make install`), which a server started here loads.
    """
    keys = [
        cache_key(job.setup, job.item.question, job.setup.max_tokens, version)
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
                found = await answer_one(playground, jobs[index])
            cache.put(keys[index], found)
            results[index] = (found, False)
            bar.update(1)

        await asyncio.gather(*(ask(index) for index, result in enumerate(results) if result is None))
    return [result for result in results if result is not None]


def result_record(job: Job, answer: PanelAnswer, *, judge: Judge, domain: Domain, evidence: Sequence[str],
                  cached: bool) -> dict[str, Any]:  # fmt: skip
    """One line of results.jsonl: the question, the Setup, the answer, its scores (the one judge) and its costs."""
    scores = None
    if answer.error is None:
        scores = judge.score(
            answer.text, domain=domain, question=job.item.question, citations=answer.citations, item=job.item,
            evidence=evidence,
        ).as_record()  # fmt: skip
    return {
        "id": job.item.id,
        "domain": job.item.domain,
        "split": job.item.split,
        "config": job.setup.record(),
        "spec": job.spec,
        "label": job.setup.label,
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


def score_all(jobs: Sequence[Job], answers: Sequence[tuple[PanelAnswer, bool]], judge: Judge) -> list[dict[str, Any]]:
    """results.jsonl records; the evidence of each question is gathered once, for every spec that answered it."""
    evidence: dict[str, list[str]] = {}
    records = []
    for job, (found, hit) in tqdm(list(zip(jobs, answers, strict=True)), desc="scoring", unit="answer"):
        domain = judge.content.domains[job.item.domain]
        if job.item.id not in evidence:
            evidence[job.item.id] = judge.evidence(domain, job.item.question)
        records.append(result_record(job, found, judge=judge, domain=domain, evidence=evidence[job.item.id],
                                     cached=hit))  # fmt: skip
    return records


@dataclass
class EvalRun:
    """What `evaluate` produced: results.jsonl lines, the summary, warnings and counts."""

    results: list[dict[str, Any]]
    summary: Summary
    warnings: list[str] = field(default_factory=list)
    base_model: str = ""
    adapters: list[str] = field(default_factory=list)
    cached: int = 0


async def evaluate(
    playground: Playground,
    judge: Judge,
    questions: Mapping[str, Sequence[EvalItem]],
    specs: Sequence[str] = EVAL_MATRIX,
    *,
    cache: AnswerCache | None = None,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    concurrency: int = DEFAULT_CONCURRENCY,
    margin: float = VERDICT_MARGIN,
    serving_mode: str = "",
) -> EvalRun:
    """Answer every question with every spec the server can serve, judge the answers and summarise them.
    `serving_mode` says how the server computes (e.g. "torch.compile on"), where known: it changes greedy answers'
    last bits, so cached answers of another mode are asked again.

    Raises ServingError when the server is unreachable and EvalError when nothing can be asked.
    """
    content, rag = judge.content, judge.rag
    models = await playground.client.list_models()
    base = next((model for model in models if not model.is_adapter), None)
    if base is None:
        raise EvalError(f"the server at {playground.client.base_url} serves no base model")
    adapters = sorted(model.id for model in models if model.is_adapter)
    jobs, warnings = plan_jobs(questions, specs, domains=content.domains, adapters=adapters, max_tokens=max_tokens)
    for warning in warnings:
        log.warning(warning)
    if not jobs:
        raise EvalError("nothing to ask: " + ("; ".join(warnings) or "no questions"))
    serving = " ".join(filter(None, [await playground.client.server_version(), serving_mode]))
    prompts = [prompt_text(playground, job) for job in jobs]
    versions = await asyncio.to_thread(answer_versions, jobs, models, rag, serving, prompts)
    cache = AnswerCache() if cache is None else cache
    answers = await collect_answers(playground, jobs, versions=versions, cache=cache, concurrency=concurrency)
    results = await asyncio.to_thread(score_all, jobs, answers, judge)
    volatile = [name for name, domain in content.domains.items() if domain.facts_change_often]
    summary = summarize(results, volatile=volatile, margin=margin)
    cached = sum(hit for _, hit in answers)
    return EvalRun(results, summary, warnings, base_model=base.root or base.id, adapters=adapters, cached=cached)
