"""Batch evaluation (app.eval), its report (app.report) and the Eval tab: pure parts on hand-made data, then the CLI
and the tab end to end against the real vLLM server (which serves the base model only, so adapter rows are skipped).
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from gradio_client import Client

from app import model_cards
from app.config import RAGSettings, Settings, load_settings
from app.content import Domain, EvalItem, Persona, load_content
from app.eval import report, targets
from app.eval.cli import main, write_outputs
from app.eval.run import (
    AnswerCache,
    EvalError,
    EvalRun,
    Job,
    answer_versions,
    by_domain,
    cache_key,
    evaluate,
    load_questions,
    prompt_text,
)
from app.eval.verdict import Summary, SummaryRow, decide_verdict, summarize
from app.inert import md_text
from app.playground import PanelAnswer, Playground
from app.rag import Citation, RAGStore
from app.scoring.judge import Judge
from app.serving import vllm_plugin
from app.serving.client import ModelInfo, ServingClient
from app.serving.process import VLLMServer
from app.setups import Setup
from tests.conftest import REPO, free_port
from tests.fake_openai import FakeOpenAI

RATES = ("terminology_accuracy", "hallucination_rate", "groundedness", "style_score")
ROW_KEYS = {"domain", "model", "persona", "rag", *RATES, "latency_s", "n"}
EVIL = "<script>alert(1)</script>"


# --- the verdict ------------------------------------------------------------------------------------------------------


def policy(domain: str) -> Domain:
    """A shipped domain's policy as its persona file states it (adapter, persona and KB named after it)."""
    return Domain(name=domain, persona=domain, adapter=domain, knowledge_base=domain,
                  facts_change_often=domain == "support", brand_voice=domain == "support")  # fmt: skip


def row(spec: str, terminology: float, hallucination: float, *, style: float | None = None, tokens_in: float = 200,
        domain: str = "legal") -> SummaryRow:  # fmt: skip
    """A summary row whose quality is the mean of `terminology`, 1 - `hallucination` (and `style`)."""
    config = Setup.parse(spec, policy(domain))
    return SummaryRow(
        domain=domain, model=config.adapter or "base", persona=bool(config.persona), rag=bool(config.rag),
        spec=spec, label=config.label, terminology_accuracy=terminology, hallucination_rate=hallucination,
        groundedness=0.5 if config.rag else None, style_score=style, latency_s=2.0, n=10, errors=0,
        forbidden_rate=0.0, unsupported_rate=hallucination, first_token_s=0.5,
        tokens_in=tokens_in + 600 * bool(config.rag), tokens_out=50,
    )  # fmt: skip


PROMPT_ROW = row("base+persona", 0.5, 0.5)  # quality 0.5


@pytest.mark.parametrize(
    ("rows", "volatile", "expected"),
    [
        pytest.param([row("adapter+persona", 0.54, 0.5), row("base+persona+rag", 0.58, 0.5)], False, "prompt",
                     id="gains 0.02 and 0.04 stay under the 0.05 margin"),
        pytest.param([row("adapter+persona", 0.62, 0.5), row("base+persona+rag", 0.58, 0.5)], False, "fine-tune",
                     id="adapter gains 0.06, RAG 0.04"),
        pytest.param([row("adapter+persona", 0.5, 0.5), row("base+persona+rag", 0.7, 0.3)], False, "RAG",
                     id="only RAG gains"),
        pytest.param([row("adapter+persona", 0.8, 0.3), row("base+persona+rag", 0.7, 0.3)], True, "RAG",
                     id="both gain, fast-changing facts"),
        pytest.param([row("adapter+persona", 0.8, 0.3), row("base+persona+rag", 0.7, 0.3)], False, "fine-tune",
                     id="both gain, adapter ahead on terminology by more than the margin"),
        pytest.param([row("adapter+persona", 0.8, 0.3), row("base+persona+rag", 0.77, 0.32)], False, "RAG",
                     id="both gain, RAG within the margin on every metric"),
        pytest.param([row("adapter+persona", 0.9, 0.6), row("base+persona+rag", 0.7, 0.1)], False, "RAG",
                     id="both gain, RAG better overall by the margin"),
        pytest.param([row("adapter+persona", 0.6, 0.4), row("base+persona+rag", 0.6, 0.4),
                      row("adapter+persona+rag", 0.8, 0.2)], False, "combine", id="adapter + RAG beats both alone"),
        pytest.param([row("adapter+persona", 0.6, 0.4), row("base+persona+rag", 0.6, 0.4),
                      row("adapter+persona+rag", 0.63, 0.37)], False, "RAG",
                     id="adapter + RAG ahead by less than the margin: no combine; RAG as good as the adapter"),
    ],
)  # fmt: skip
def test_verdict_rules(rows: list[dict[str, Any]], volatile: bool, expected: str) -> None:
    decision = decide_verdict([PROMPT_ROW, row("base", 0.1, 0.9), *rows], volatile=volatile)
    assert decision.verdict == expected, decision.reason
    assert decision.reason.endswith(".") and decision.margin == 0.05 and decision.volatile is volatile
    assert decision.numbers["base+persona"]["quality"] == 0.5
    assert set(decision.gains) == {r.spec for r in rows}


def test_verdict_margin_and_cost() -> None:
    rows = [PROMPT_ROW, row("adapter+persona", 0.8, 0.3), row("base+persona+rag", 0.7, 0.3)]
    decision = decide_verdict(rows)
    assert decision.gains == {"adapter+persona": 0.25, "base+persona+rag": 0.2}
    assert "600 fewer prompt tokens" in decision.reason, "fine-tuning is favoured by the context it saves"
    assert decide_verdict(rows, margin=0.3).verdict == "prompt", "a wider margin makes the same gains noise"
    voice = [row("base+persona", 0.5, 0.5, style=0.4), row("adapter+persona", 0.5, 0.5, style=0.9),
             row("base+persona+rag", 0.5, 0.5, style=0.4)]  # fmt: skip
    assert decide_verdict(voice).verdict == "fine-tune", "brand voice alone can justify an adapter"


def test_a_fast_changing_domain_gives_its_facts_to_rag() -> None:
    """RAG clearly best on terminology only, in a domain whose facts change fast: the facts go to RAG too, and the
    reason says why (it once read "RAG for terminology because they change fast")."""
    rows = [
        row("base+persona", 0.0, 0.5, style=0.4),
        row("adapter+persona", 0.0, 0.5, style=1.0),
        row("base+persona+rag", 0.3, 0.5, style=0.4),
        row("adapter+persona+rag", 0.2, 0.5, style=0.9),
    ]
    decision = decide_verdict(rows, volatile=True)
    assert decision.verdict == "combine", decision.reason
    assert decision.reason.startswith("use the adapter for voice and RAG for terminology and facts (its facts change")


@pytest.mark.parametrize("volatile", [False, True])
def test_verdict_names_what_each_part_does(volatile: bool) -> None:
    """The adapter clearly best on voice, RAG clearly best on facts, adapter + RAG as good as either: combine, saying
    who does what — though one quality number alone would have said fine-tune."""
    rows = [
        row("base+persona", 0.3, 0.5, style=0.4),
        row("adapter+persona", 0.5, 0.45, style=0.9),
        row("base+persona+rag", 0.35, 0.15, style=0.4),
        row("adapter+persona+rag", 0.5, 0.25, style=0.8),
    ]
    decision = decide_verdict(rows, volatile=volatile)
    assert decision.verdict == "combine", decision.reason
    assert decision.reason.startswith("use the adapter for voice and RAG for facts")
    assert ("(its facts change fast)" in decision.reason) is volatile
    axes = decision.axes
    assert (axes["voice"].winner, axes["voice"].clear) == ("adapter+persona", True)
    assert (axes["facts"].winner, axes["facts"].clear) == ("base+persona+rag", True)
    assert not axes["terminology"].clear, "adapter and adapter + RAG tie on terminology"
    assert axes["prompt tokens"].winner in ("base+persona", "adapter+persona"), "no retrieved context: cheaper"
    without_combined = decide_verdict(rows[:3], volatile=False)
    assert without_combined.verdict == "fine-tune", "no measured combination: no combine verdict"


def test_verdict_needs_the_baseline() -> None:
    decision = decide_verdict([row("adapter+persona", 0.9, 0.0), PROMPT_ROW.model_copy(update={"n": 0})])
    assert decision.verdict is None and "base+persona" in decision.reason


# --- summary schema ---------------------------------------------------------------------------------------------------


def assert_summary_schema(summary: Mapping[str, Any]) -> None:
    """summary.json as docs/eval.md documents it."""
    assert set(summary) == {"version", "rows", "verdict"} and summary["version"] == 3
    for r in summary["rows"]:
        assert set(r) >= ROW_KEYS, ROW_KEYS - set(r)
        assert r["model"] == "base" or r["model"] == r["domain"]
        assert isinstance(r["persona"], bool) and isinstance(r["rag"], bool)
        assert isinstance(r["n"], int) and r["n"] >= 0
        for key in RATES:
            assert r[key] is None or (isinstance(r[key], float) and 0.0 <= r[key] <= 1.0), (key, r[key])
        assert (r["style_score"] is None) == (r["domain"] != "support" or r["n"] == 0)
        if not r["rag"]:
            assert r["groundedness"] is None
        assert r["latency_s"] is None or r["latency_s"] >= 0
    assert set(summary["verdict"]) == {r["domain"] for r in summary["rows"]}
    for decision in summary["verdict"].values():
        assert decision["verdict"] in ("fine-tune", "RAG", "prompt", "combine", None)
        assert isinstance(decision["reason"], str) and decision["reason"]


def record(domain: str, spec: str, number: int, *, error: str | None = None, answer: str = "An answer.",
           terminology: float = 0.5, hallucination: bool = False) -> dict[str, Any]:  # fmt: skip
    """A results.jsonl line as app.eval writes it."""
    config = Setup.parse(spec, policy(domain), temperature=0.0)
    scores = {
        "terminology": terminology, "forbidden": [], "unsupported": ["$60"] if hallucination else [],
        "hallucination": hallucination, "groundedness": 0.75 if config.rag else None,
        "voice": {"length": True, "sign_off": False} if domain == "support" else {},
        "style_score": 0.5 if domain == "support" else None, "glossary_terms": [], "misuses": [],
    }  # fmt: skip
    return {
        "id": f"{domain}-{number}", "domain": domain, "config": config.record(), "spec": spec,
        "label": config.label, "question": f"Question {number} {EVIL}?", "answer": answer, "error": error,
        "scores": None if error else scores, "sources": [], "latency_s": 1.5, "first_token_s": 0.2,
        "tokens_in": None if error else 100, "tokens_out": None if error else 50, "cached": False,
    }  # fmt: skip


@pytest.fixture(scope="module")
def results() -> list[dict[str, Any]]:
    specs = ("base", "base+persona", "base+persona+rag", "adapter+persona")
    made = [record(d, s, n, hallucination=n == 1) for d in ("legal", "support") for s in specs for n in (1, 2)]
    made.append(record("legal", "base", 3, error="model 'base': the model server timed out", terminology=0.0))
    made[0]["answer"] = f"Ignore this {EVIL} and <img src=x onerror=alert(1)> [link](http://evil.example)"
    return made


def test_summary_rates_over_answered_items(results: list[dict[str, Any]]) -> None:
    summary = summarize(results, volatile=["support"]).model_dump(mode="json")
    assert_summary_schema(summary)
    legal_base = next(r for r in summary["rows"] if r["domain"] == "legal" and r["spec"] == "base")
    assert legal_base["n"] == 2 and legal_base["errors"] == 1, "the error is counted apart, not as a 0"
    assert legal_base["terminology_accuracy"] == 0.5 and legal_base["hallucination_rate"] == 0.5
    assert legal_base["model"] == "base" and not legal_base["persona"] and not legal_base["rag"]
    assert [r["spec"] for r in summary["rows"][:4]] == ["base", "base+persona", "base+persona+rag", "adapter+persona"]
    assert summary["verdict"]["support"]["volatile"] and not summary["verdict"]["legal"]["volatile"]
    json.dumps(summary)  # plain JSON


# --- the report -------------------------------------------------------------------------------------------------------


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += attrs


def test_report_renders_charts_and_escapes(results: list[dict[str, Any]]) -> None:
    summary = summarize(results, volatile=["support"])
    charts = report.render_charts(summary)
    assert set(charts) == {"chart-legal.png", "chart-support.png", "chart-latency.png"}
    assert all(png.startswith(b"\x89PNG") for png in charts.values())
    meta = {"command": "python -m app.eval --out `x`", "hardware": EVIL, "answers": 17, "max_tokens": 64,
            "concurrency": 8, "wall_s": 12.5}  # fmt: skip
    page = report.render_html(summary, results, meta, charts)
    parser = Tags()
    parser.feed(page)
    parser.close()
    assert parser.tags.count("img") == 3 and "script" not in parser.tags
    assert "onerror" not in {name for name, _ in parser.attrs}
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;img src=x onerror" in page
    for decision in summary.verdict.values():
        assert html.escape(decision.reason) in page
    markdown = report.render_markdown(summary, results, meta, charts, chart_prefix="results/")
    assert "<script>" not in markdown and "<img" not in markdown and "](http://evil" not in markdown
    assert "![legal: metrics per configuration](results/chart-legal.png)" in markdown
    assert "- **Command**: `` python -m app.eval --out `x` ``" in markdown, "shown verbatim, backticks and all"
    assert "| eval | base | 2 | 1 | 0.50 | 0.50 | – | – | – | – | 0.00 | 1.50 | 100 | 50 |" in markdown


def test_the_paraphrase_split_is_reported_beside_the_eval_set_and_decides(results: list[dict[str, Any]]) -> None:
    """The adapter learned our eval wording (1.0) but not the facts in new words (0.5): the report shows the gap and
    the verdict is decided on the paraphrases."""
    seen = [record("legal", spec, n, terminology=1.0 if spec == "adapter+persona" else 0.5) for spec in
            ("base+persona", "adapter+persona") for n in (1, 2)]  # fmt: skip
    new = [{**record("legal", spec, n, terminology=0.5), "split": "paraphrase", "id": f"legal-p{n}"}
           for spec in ("base+persona", "adapter+persona") for n in (1, 2)]  # fmt: skip
    summary = summarize(seen + new)
    assert summary.splits == ["eval", "paraphrase"]
    assert summary.verdict["legal"].split == "paraphrase" and summary.verdict["legal"].verdict == "prompt"
    assert summarize(seen).verdict["legal"].verdict == "fine-tune", "on our own wording it looked like a win"
    headers, rows = report.generalisation(summary, "legal")
    assert headers[1:] == ["terminology, eval set", "terminology, paraphrases", "difference"]
    assert ["adapter+persona", "1.00", "0.50", "-0.50"] in rows
    markdown = report.render_markdown(summary, seen + new, {}, {})
    assert "Generalisation (legal)" in markdown and "decided on the paraphrase split" in markdown


def test_targets_say_which_are_met_with_the_numbers() -> None:
    """Legal meets all three; finance misses each: a gain under 0.15, more made-up claims, a looping base model.
    Medical's gain is +0.15 as shown (0.35 - 0.20 is 0.1499... in floats) and meets it. Support (a brand voice) also
    has its own two: figures right in 70 % of figure questions, the sign-off in 95 %."""
    voice = {"style": 0.8}
    rows = [row("base+persona", 0.3, 0.2).model_copy(update={"loop_rate": 0.0}),
            row("adapter+persona", 0.5, 0.2).model_copy(update={"loop_rate": 0.05}),
            row("base+persona", 0.3, 0.2, domain="finance").model_copy(update={"loop_rate": 0.3}),
            row("adapter+persona", 0.4, 0.8, domain="finance").model_copy(update={"loop_rate": 0.0}),
            row("base+persona", 0.2, 0.2, domain="medical").model_copy(update={"loop_rate": 0.0}),
            row("adapter+persona", 0.35, 0.2, domain="medical").model_copy(update={"loop_rate": 0.0}),
            row("base+persona", 0.1, 0.3, domain="support", **voice).model_copy(update={"loop_rate": 0.0}),
            row("adapter+persona", 0.2, 0.2, domain="support", **voice).model_copy(
                update={"loop_rate": 0.0, "figures_right_rate": 0.7, "sign_off_rate": 0.9})]  # fmt: skip
    table = targets.targets_table(Summary(rows=rows, verdict={}))
    assert table == [
        ["finance", "eval", "+0.10: not met", "0.80 vs 0.20: not met", "worst 30% (base+persona): not met", "–", "–"],
        ["legal", "eval", "+0.20: met", "0.20 vs 0.20: met", "worst 5% (adapter+persona): met", "–", "–"],
        ["medical", "eval", "+0.15: met", "0.20 vs 0.20: met", "worst 0% (base+persona): met", "–", "–"],
        ["support", "eval", "+0.10: not met", "0.20 vs 0.30: met", "worst 0% (base+persona): met", "70%: met",
         "90%: not met"],
    ]  # fmt: skip
    no_adapter = targets.targets_table(Summary(rows=rows[:1], verdict={}))
    assert no_adapter == [["legal", "eval", "not measured", "not measured", "worst 0% (base+persona): met", "–", "–"]]
    missed = targets.missed(table, "SmolLM2-135M")
    assert missed.startswith(
        "Not met with base model SmolLM2-135M: terminology gain ≥ +0.15 in finance, support; adapter hallucination ≤ "
        "base in finance; loops ≤ 5% everywhere in finance; brand voice: sign-off ≥ 95% in support."
    ), "each missed target once, with the domains that miss it"
    assert targets.missed([row for row in table if row[0] in {"legal", "medical"}], "SmolLM2-135M") == ""
    markdown = report.render_markdown(Summary(rows=rows, verdict={}), [], {"base_model": "SmolLM2-135M"}, {})
    assert "## Targets" in markdown and md_text(missed) in markdown


def test_figures_right_and_sign_off_rates_come_from_the_answers() -> None:
    """Figures right counts only the questions that expect figures; the sign-off only where a voice was checked."""
    answers = [(True, True), (False, False), (None, True), (True, True)]  # (figures right, signed off)
    support = [record("support", "adapter+persona", n) for n in range(len(answers))]
    for made, (figures, signed) in zip(support, answers, strict=True):
        made["scores"].update(figures_right=figures, voice={"sign_off": signed})
    rates = summarize(support).rows[0]
    assert rates.figures_right_rate == pytest.approx(2 / 3, abs=1e-4) and rates.sign_off_rate == 0.75
    legal = summarize([record("legal", "base+persona", 1)]).rows[0]
    assert legal.figures_right_rate is None and legal.sign_off_rate is None


def test_model_cards_get_the_adapter_table(results: list[dict[str, Any]], tmp_path: Path) -> None:
    run = EvalRun(results, summarize(results, volatile=["support"]))
    cards = tmp_path / "adapters"
    for domain in ("legal", "support", "medical"):
        (cards / domain).mkdir(parents=True)
        (cards / domain / "README.md").write_text(f"# {domain} adapter\n\n## Data\n461 examples.\n")
    overview = tmp_path / "adapters.md"
    overview.write_text("# Training the LoRA adapters\n")
    meta = {"date": "2026-11-28T10:00:00+00:00", "max_tokens": 64}
    for _ in range(2):  # a second run replaces the section instead of adding another
        written = write_outputs(tmp_path / "out", run, meta, model_cards=cards, adapters_md=overview)
    assert {cards / "legal/README.md", cards / "support/README.md", overview} <= set(written)
    legal = (cards / "legal" / "README.md").read_text()
    assert legal.startswith("# legal adapter\n\n## Data\n461 examples.\n"), "the rest of the card is kept"
    assert legal.count(model_cards.CARD_START) == 1 and legal.count("## Evaluation: adapter vs base model") == 1
    assert "| base+persona | 0.50 | 0.00 | 0.50 | 0.50 | 1.50 | 2 |" in legal and "| adapter+persona |" in legal
    assert "terminology +0.00 [+0.00, +0.00], hallucination rate +0.00 [+0.00, +0.00]." in legal, "the spread"
    assert "brand-voice" not in legal and "brand-voice style" in (cards / "support" / "README.md").read_text()
    assert "Evaluation" not in (cards / "medical" / "README.md").read_text(), "medical was not measured"
    both = overview.read_text()
    assert "### legal" in both and "### support" in both and both.count(model_cards.CARD_END) == 1


# --- inputs and the cache ---------------------------------------------------------------------------------------------


def test_cache_key_is_stable() -> None:
    config = Setup.parse("base+persona+rag", policy("support"), temperature=0.0, max_tokens=64)
    key = cache_key(config, "How much is Acme Unlimited?", 64, "/models/SmolLM2")
    # Pinned: a change here silently throws away every cached answer of earlier runs.
    assert key == "b3fce46e9cd29e7256292cbef9ab146b04f4e343d3e861d53ab9b12ef977bafc"
    same = Setup.model_validate(json.loads(json.dumps(config.record())))
    assert cache_key(same, "How much is Acme Unlimited?", 64, "/models/SmolLM2") == key, "survives a JSON round trip"
    others = {
        cache_key(config, "How much is Acme Basic?", 64, "/models/SmolLM2"),
        cache_key(config, "How much is Acme Unlimited?", 128, "/models/SmolLM2"),
        cache_key(config, "How much is Acme Unlimited?", 64, "/models/other"),
        cache_key(config.model_copy(update={"rag": None}), "How much is Acme Unlimited?", 64, "/models/SmolLM2"),
    }
    assert key not in others and len(others) == 4


def test_answers_are_asked_again_after_retraining_or_an_edit(tmp_path: Path) -> None:
    """A retrained adapter, an edited knowledge base or persona, another number of passages or another vLLM each
    re-ask exactly the answers that depend on them."""
    adapter, kb = tmp_path / "adapters" / "support", tmp_path / "kb" / "support"
    adapter.mkdir(parents=True)
    kb.mkdir(parents=True)
    (adapter / "adapter_model.safetensors").write_bytes(b"weights v1")
    (kb / "plans.md").write_text("# Plans\nAcme Unlimited is $45/month.\n")
    rag = RAGStore(load_settings(None, {"paths.kb": str(kb.parent), "paths.data": str(tmp_path / "data")}))
    persona = Persona(name="support", display_name="Acme", disclaimer="Demo.", system_prompt="You are Acme's agent.")
    playground = Playground(ServingClient("http://127.0.0.1:9/v1"), rag, {"support": persona})
    models = [ModelInfo("base", root="/models/SmolLM2"), ModelInfo("support", parent="base", root=str(adapter))]
    item = EvalItem(id="support-001", domain="support", question="How much?", expected_terms=[["$45"]])
    specs = ("base", "adapter", "base+rag", "base+persona")
    jobs = [Job(item, spec, Setup.parse(spec, policy("support"))) for spec in specs]

    def versions(store: RAGStore = rag, serving: str = "vllm:0.32.0") -> list[str]:
        return answer_versions(jobs, models, store, serving, [prompt_text(playground, job) for job in jobs])

    base, tuned, retrieved, prompted = first = versions()
    question = hashlib.sha256(json.dumps([{"role": "user", "content": "How much?"}]).encode()).hexdigest()
    assert base == f"/models/SmolLM2|vllm:0.32.0|{question}", "the base model's answer: model, server and prompt"
    (adapter / "adapter_model.safetensors").write_bytes(b"weights v2")  # retrained
    (kb / "plans.md").write_text("# Plans\nAcme Unlimited is $50/month.\n")  # the price changed
    again = versions()
    assert again[0] == base and again[3] == prompted
    assert again[1] != tuned and again[2] != retrieved, "new weights and new KB text make new cache keys"
    assert len(set(versions(serving="vllm:0.33.0")) & set(again)) == 0, "another vLLM re-asks all"
    more = versions(RAGStore(rag.settings.model_copy(update={"rag": RAGSettings(passages=4)})))
    assert [more[i] == again[i] for i in range(4)] == [True, True, False, True], "passages: RAG answers only"
    playground.personas["support"] = persona.model_copy(update={"system_prompt": "You are Acme's best agent."})
    edited = versions()
    assert [edited[i] == again[i] for i in range(4)] == [True, True, True, False], "an edited persona re-asks its own"
    assert first[0] == edited[0]
    playground.personas.clear()
    assert "unknown persona support" in prompt_text(playground, jobs[3]), "a missing persona still has a key"
    remote = [models[0], ModelInfo("support", parent="base", root="/srv/adapters/support")]  # weights not readable
    ops = vllm_plugin.lora_ops_version()
    assert answer_versions(jobs[1:2], remote, rag, "vllm:0.32.0", [prompt_text(playground, jobs[1])]) == [
        f"/models/SmolLM2|vllm:0.32.0|{question}|/srv/adapters/support|{ops}"
    ]


def test_the_lora_ops_version_follows_their_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Adapter answers are asked again after a change to the CPU LoRA ops: their arithmetic alone changes answers."""
    copy = tmp_path / "serving"
    shutil.copytree(Path(vllm_plugin.__file__).parent, copy)
    monkeypatch.setattr(vllm_plugin, "__file__", str(copy / "vllm_plugin.py"))
    before = vllm_plugin.lora_ops_version()
    (copy / "cpu_lora.py").write_text((copy / "cpu_lora.py").read_text() + "\n# PROMPT_BLOCK = 64\n")
    assert vllm_plugin.lora_ops_version() != before


def test_answers_of_another_serving_mode_are_asked_again(
    fake_server: FakeOpenAI, server_settings: Settings, tmp_path: Path
) -> None:
    """A compiled server's greedy answers can differ from an eager one's in a near tie, so the cache keys on the
    mode the CLI passes (`torch.compile on` / `off` for a server it started)."""
    content = load_content()
    fake_server.script("base", "Acme Unlimited is $45/month.")
    rag = RAGStore(server_settings)
    playground = Playground(ServingClient(fake_server.base_url), rag, content.personas)
    cache = AnswerCache(tmp_path / "cache.jsonl")

    async def cached(modes: list[str]) -> list[int]:
        questions = {"support": content.evals["support"][:1]}
        judge = Judge(content, rag)
        runs = [await evaluate(playground, judge, questions, ["base"], cache=cache, serving_mode=m) for m in modes]
        return [run.cached for run in runs]

    on, off = "torch.compile on (vllm.compile)", "torch.compile off (vllm.compile)"
    assert asyncio.run(cached([on, on, off, off])) == [0, 1, 0, 1]


def test_answer_cache_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "cache.jsonl"
    cited = Citation(title="Plans", source="Guide", path="support/plans.md", heading="Prices", score=0.8, text="$45")
    good = PanelAnswer(text="It is $45.", citations=[cited], done=True, first_token_s=0.1, elapsed_s=1.0,
                       prompt_tokens=90, completion_tokens=5)  # fmt: skip
    cache = AnswerCache(path)
    cache.put("a", good)
    cache.put("b", PanelAnswer(error="server down", done=True))
    with path.open("a") as file:
        file.write('{"key": "c", "answer": {"text": \n')  # a run killed mid-write
    again = AnswerCache(path)
    assert again.get("a") == good and again.get("b") is None and again.get("c") is None and len(again) == 1


def test_a_limit_takes_the_first_questions_of_each_split() -> None:
    files = [REPO / "evals" / "support.jsonl", REPO / "evals" / "paraphrase" / "support.jsonl"]
    items = load_questions([*files, REPO / "evals" / "legal.jsonl"])
    chosen = by_domain(items, ["support"], limit=2)
    firsts = [[json.loads(line)["id"] for line in path.read_text().splitlines()[:2]] for path in files]
    assert [item.id for item in chosen["support"]] == firsts[0] + firsts[1], "a short run still measures both splits"
    assert [item.split for item in chosen["support"]] == ["eval", "eval", "paraphrase", "paraphrase"]
    assert list(chosen) == ["support"] and sum(map(len, by_domain(items).values())) == len(items), "no limit: all"


def test_bad_inputs_are_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(EvalError, match="not found"):
        load_questions([tmp_path / "missing.jsonl"])
    broken = tmp_path / "broken.jsonl"
    good = (REPO / "evals" / "legal.jsonl").read_text().splitlines()[0]
    broken.write_text(f"{good}\n{{not json\n")
    with pytest.raises(EvalError, match=r"broken.jsonl: line 2: not valid JSON"):
        load_questions([broken])
    assert main(["--questions", str(broken), "--out", str(tmp_path / "out")]) == 2
    assert "line 2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--questions", str(broken), "--out", str(tmp_path), "--configs", "lora"])
    assert "expected base or adapter" in capsys.readouterr().err
    config = tmp_path / "config.yaml"
    config.write_text(f"paths:\n  data: {tmp_path / 'data'}\n  kb: {tmp_path / 'no-kb'}\n")
    broken.write_text(good + "\n")
    nobody = f"http://127.0.0.1:{free_port()}/v1"
    assert (
        main(["--questions", str(broken), "--out", str(tmp_path), "--vllm-url", nobody, "--config", str(config)]) == 1
    )
    assert "the model server is not reachable" in capsys.readouterr().err


# --- end to end against the real server -------------------------------------------------------------------------------


def assert_answered_support_lines(lines: list[dict[str, Any]]) -> None:
    """results.jsonl lines of answered support questions: answer, costs, every score that applies."""
    for r in lines:
        assert r["error"] is None and r["answer"].strip() and r["config"]["temperature"] == 0.0
        assert r["tokens_in"] > 0 and 0 < r["tokens_out"] <= 48 and r["latency_s"] > 0
        assert set(r["scores"]) >= {"terminology", "forbidden", "unsupported", "hallucination", "groundedness",
                                    "voice", "style_score"}  # fmt: skip
        if r["config"]["rag"] is None:
            assert r["scores"]["groundedness"] is None
        assert bool(r["sources"]) == (r["config"]["rag"] == "support")
        assert r["scores"]["voice"] and 0 <= r["scores"]["style_score"] <= 1, "support answers get brand-voice checks"


def test_cli_starts_its_own_server_and_uses_its_key(server_settings: Settings, tmp_path: Path) -> None:
    """Without --vllm-url the eval starts its own vLLM, which answers only with that run's key (make eval's path)."""
    questions = tmp_path / "support.jsonl"
    questions.write_text((REPO / "evals" / "support.jsonl").read_text().splitlines()[0] + "\n")
    config = tmp_path / "config.yaml"
    config.write_text(
        f"model:\n  path: {server_settings.model.path}\npaths:\n  data: {server_settings.paths.data}\n"
        f"  adapters: {tmp_path / 'no-adapters'}\nvllm:\n  port: {free_port()}\n  kv_cache_gib: 1\n"
    )
    out = tmp_path / "out"
    args = ["--questions", str(questions), "--out", str(out), "--config", str(config), "--configs", "base",
            "--max-tokens", "8"]  # fmt: skip
    env = {key: value for key, value in os.environ.items() if "API_KEY" not in key}  # no key from elsewhere
    done = subprocess.run([sys.executable, "-m", "app.eval", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600, check=False, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["spec"], bool(r["answer"]), r.get("error")) for r in lines] == [("base", True, None)], lines
    server = json.loads((out / "run.json").read_text())["server"]
    assert "started by this run" in server and "torch.compile on" in server, "the serving mode the latencies measure"


async def test_answers_key_on_the_servers_vllm_version(vllm_server: VLLMServer) -> None:
    """The version comes from the real server's /version route; a server that cannot say gets one shared value."""
    import vllm

    client = ServingClient(vllm_server.base_url, api_key=vllm_server.api_key)
    assert await client.server_version() == f"vllm:{vllm.__version__}"
    await client.close()
    dead = ServingClient(f"http://127.0.0.1:{free_port()}/v1")
    assert await dead.server_version() == "vllm:unknown"
    await dead.close()


def test_cli_end_to_end_and_resume(
    vllm_server: VLLMServer, server_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    questions = tmp_path / "support.jsonl"
    questions.write_text("\n".join((REPO / "evals" / "support.jsonl").read_text().splitlines()[:2]) + "\n")
    config = tmp_path / "config.yaml"
    config.write_text(f"paths:\n  data: {server_settings.paths.data}\n")  # the session's RAG indexes
    out = tmp_path / "out"
    args = ["--questions", str(questions), "--out", str(out), "--vllm-url", vllm_server.base_url,
            "--config", str(config), "--max-tokens", "48", "--concurrency", "4"]  # fmt: skip
    monkeypatch.setenv("ARENA_VLLM__API_KEY", vllm_server.api_key)  # for the run below and the one in this process
    done = subprocess.run([sys.executable, "-m", "app.eval", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "support: skipping adapter+persona: the server has no adapter 'support'" in done.stderr

    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(lines) == 8, "2 questions x base, base+rag, base+persona, base+persona+rag"
    assert {(r["id"], r["spec"]) for r in lines} == {
        (f"support-00{n}", s) for n in (1, 2) for s in ("base", "base+rag", "base+persona", "base+persona+rag")
    }
    assert_answered_support_lines(lines)
    rag_tokens = {r["spec"]: r["tokens_in"] for r in lines if r["id"] == "support-001"}
    assert rag_tokens["base+rag"] > rag_tokens["base"] + 200, "RAG puts the retrieved passages into the prompt"

    summary = json.loads((out / "summary.json").read_text())
    assert_summary_schema(summary)
    assert [r["spec"] for r in summary["rows"]] == ["base", "base+rag", "base+persona", "base+persona+rag"]
    assert all(r["n"] == 2 and r["domain"] == "support" for r in summary["rows"])
    assert summary["verdict"]["support"]["verdict"] in ("RAG", "prompt"), "no adapter: never fine-tune or combine"
    page = (out / "report.html").read_text()
    parser = Tags()
    parser.feed(page)
    assert parser.tags.count("img") == 2 and "script" not in parser.tags
    assert "chart-support.png" in (out / "report.md").read_text()
    assert (out / "chart-support.png").is_file() and (out / "chart-latency.png").is_file()
    cached_lines = (out / "cache.jsonl").read_text()
    assert len(cached_lines.splitlines()) == 8

    # Again, in this process, with the model server's streaming replaced by a failure: all answers from the cache.
    async def no_requests(*_: object, **__: object) -> AsyncIterator[None]:
        raise AssertionError("a cached answer was asked for again")
        yield

    monkeypatch.setattr(ServingClient, "stream_chat", no_requests)
    results_md = tmp_path / "docs" / "results.md"
    assert main([*args, "--results-md", str(results_md), "--limit", "2"]) == 0
    assert (out / "cache.jsonl").read_text() == cached_lines, "nothing new to cache"
    run = json.loads((out / "run.json").read_text())
    assert run["cached"] == 8 and run["errors"] == 0 and run["answers"] == 8
    again = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["answer"] for r in again] == [r["answer"] for r in lines] and all(r["cached"] for r in again)
    published = results_md.read_text()
    assert published.startswith("# Eval results\n\nWritten by `make eval`")
    assert "- **Command**: `python -m app.eval --questions" in published and "- **Hardware**: " in published
    assert "](results/chart-support.png)" in published and (tmp_path / "docs/results/chart-support.png").is_file()
    assert "- **Warning**: a partial run \\(\\-\\-limit 2\\)" in published, "a limited run says so in the report"


def test_eval_tab_runs_one_question(ui_client: Client) -> None:
    job = ui_client.submit(
        ["support"], ["base+persona", "base+persona+rag"], 1, 32, "terminology_accuracy", api_name="/eval_run"
    )
    progress = set()
    while not job.done():
        progress |= {(unit.desc, unit.unit, unit.length) for unit in job.status().progress_data or []}
        time.sleep(0.05)
    table, verdicts, chart = job.result()
    assert ("answers", "answer", 2) in progress, f"the tqdm bar shows as Gradio progress: {progress}"
    assert table["headers"][:3] == ["domain", "split", "configuration"]
    assert [row[:4] for row in table["data"]] == [
        ["support", "eval", "base+persona", "1"],
        ["support", "eval", "base+persona+rag", "1"],
    ]
    assert verdicts.startswith("- **support: ")
    assert chart["mark"] == "bar" and [bar[2] for bar in chart["data"]] == ["base+persona", "base+persona+rag"]
    assert all(0 <= bar[3] <= 1 for bar in chart["data"]), "terminology accuracy per configuration"
