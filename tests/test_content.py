"""The shipped domain content: it validates, is big enough, covers the required terms and keeps evals independent."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from rapidfuzz import fuzz

from app.content import Content, EvalItem, load_content, load_jsonl, load_kb_domain, load_persona, word_count
from app.scoring.checks import contains_term, forbidden_hits, reading_grade, voice_checks

DOMAINS = ["legal", "medical", "finance", "support"]

REQUIRED_TERMS = {
    "legal": [
        "tort", "negligence", "duty of care", "breach of duty", "causation", "damages", "breach of contract", "offer",
        "acceptance", "consideration", "statute of limitations", "plaintiff", "defendant", "burden of proof",
        "preponderance of the evidence", "beyond a reasonable doubt", "felony", "misdemeanor", "habeas corpus",
        "subpoena", "deposition", "discovery", "hearsay", "affidavit", "summary judgment", "injunction",
        "precedent", "stare decisis", "jurisdiction", "arbitration", "force majeure", "liquidated damages",
        "indemnification", "power of attorney", "fiduciary duty", "probate", "mens rea", "due process", "NDA",
    ],
    "medical": [
        "myocardial infarction", "coronary artery", "angina", "hypertension", "tachycardia", "bradycardia",
        "atrial fibrillation", "anticoagulant", "ischemic stroke", "hemorrhagic stroke", "anaphylaxis",
        "epinephrine", "sepsis", "pneumonia", "asthma", "COPD", "type 2 diabetes", "HbA1c", "hypoglycemia",
        "anemia", "hemoglobin", "deep vein thrombosis", "pulmonary embolism", "benign", "malignant", "metastasis",
        "edema", "contraindication", "differential diagnosis", "prognosis", "triage", "acute", "chronic",
        "comorbidity", "NSAID", "placebo", "double-blind trial",
    ],
    "finance": [
        "compound interest", "APR", "APY", "diversification", "ETF", "index fund", "expense ratio", "bond", "yield",
        "inflation", "CPI", "liquidity", "market capitalization", "P/E ratio", "earnings per share", "dividend",
        "capital gains", "dollar-cost averaging", "asset allocation", "rebalancing", "401(k)", "traditional IRA",
        "Roth IRA", "emergency fund", "credit score", "amortization", "debt-to-income ratio", "EBITDA",
        "balance sheet equation", "cash flow statement", "net present value", "volatility", "beta",
        "short selling", "call option", "put option", "yield curve inversion", "recession",
    ],
}  # fmt: skip

SUPPORT_FACTS = [
    "$45", "$25", "10 GB", "$8", "30 days", "5–7 business days", "6-digit", "24 hours", "60 days", "8am–10pm",
    "24/7", "no restocking fee", "early termination",
]  # fmt: skip


@pytest.fixture(scope="module")
def content() -> Content:
    return load_content()


def test_everything_loads_without_problems(content: Content) -> None:
    assert not content.problems, "\n".join(map(str, content.problems))
    assert set(content.personas) == {*DOMAINS, "generic"}
    assert list(content.domains) == sorted(DOMAINS)


@pytest.mark.parametrize(
    ("domain", "changes_often", "voice"),
    [("legal", False, False), ("medical", False, False), ("finance", False, False), ("support", True, True)],
)
def test_domain_policy_comes_from_the_persona_files(content: Content, domain: str, changes_often: bool,
                                                    voice: bool) -> None:  # fmt: skip
    policy = content.domains[domain]
    assert (policy.persona, policy.adapter, policy.knowledge_base) == (domain, domain, domain)
    assert (policy.facts_change_often, policy.brand_voice) == (changes_often, voice), "as personas/<domain>.yaml says"
    assert policy.examples == [item.question for item in content.evals[domain][:6]], "default: the first eval questions"


@pytest.mark.parametrize("domain", DOMAINS)
def test_sizes(content: Content, domain: str) -> None:
    docs = content.kb[domain]
    assert len(docs) >= 8
    assert sum(word_count(d.text) for d in docs) >= 4000
    assert all(d.title and d.source for d in docs), "every KB document has a title and a source line"
    assert len(content.training[domain]) >= 400
    assert len(content.evals[domain]) >= 25


@pytest.mark.parametrize("domain", sorted(REQUIRED_TERMS))
def test_required_terms_in_glossary_kb_and_training(content: Content, domain: str) -> None:
    glossary_forms = {form.lower() for entry in content.personas[domain].glossary for form in entry.forms}
    kb_text = "\n".join(d.text for d in content.kb[domain])
    train_text = "\n".join(m.content for ex in content.training[domain] for m in ex.messages if m.role != "system")
    for term in REQUIRED_TERMS[domain]:
        assert term.lower() in glossary_forms, f"{term!r} missing from personas/{domain}.yaml glossary"
        assert contains_term(kb_text, term), f"{term!r} missing from kb/{domain}/"
        assert contains_term(train_text, term), f"{term!r} missing from adapters/{domain}/train.jsonl"


def test_support_kb_states_the_facts(content: Content) -> None:
    kb_text = "\n".join(d.text for d in content.kb["support"])
    missing = [fact for fact in SUPPORT_FACTS if fact.lower() not in kb_text.lower()]
    assert not missing, f"kb/support/ lacks {missing}"


def _normalise(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


@pytest.mark.parametrize("domain", DOMAINS)
def test_eval_questions_are_not_in_training(content: Content, domain: str) -> None:
    train_questions = {_normalise(q) for ex in content.training[domain] for q in ex.texts("user")}
    for item in content.evals[domain]:
        question = _normalise(item.question)
        assert question not in train_questions, f"{item.id} is in the training data"
        closest = max(train_questions, key=lambda q: fuzz.ratio(question, q))
        assert fuzz.ratio(question, closest) < 85, f"{item.id} is a near paraphrase of training question {closest!r}"


@pytest.mark.parametrize("domain", DOMAINS)
def test_training_answers_keep_the_rules(content: Content, domain: str) -> None:
    forbidden = sorted({claim for item in content.evals[domain] for claim in item.forbidden})
    style = content.personas[domain].style
    for number, example in enumerate(content.training[domain], start=1):
        for answer in example.texts("assistant"):
            assert 40 <= word_count(answer) <= 180, f"example {number}: {word_count(answer)} words"
            assert not forbidden_hits(answer, forbidden), f"example {number} states an eval's forbidden claim"
            checks = voice_checks(answer, style.model_copy(update={"max_reading_grade": None}))
            failed = [rule for rule, ok in checks.items() if not ok]
            assert not failed, f"example {number} breaks {failed}: {answer[:80]!r}"


def test_support_answers_read_plainly(content: Content) -> None:
    grades = [reading_grade(a) for ex in content.training["support"] for a in ex.texts("assistant")]
    assert sum(grades) / len(grades) <= 8, "support answers must average grade 8 or below"
    assert max(grades) <= 10


# --- loading errors: each names the file and the place, and the rest still loads ----------------------------


def test_malformed_yaml_names_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: broken\nglossary: [\n  - term: x\n")
    persona, problems = load_persona(path)
    assert persona is None
    assert re.match(r".*broken\.yaml: line \d+: not valid YAML", str(problems[0]))


def test_missing_key_is_named(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("name: p\ndisplay_name: P\ndisclaimer: demo\n")
    _, problems = load_persona(path)
    assert [p.where for p in problems] == ["system_prompt"]


def test_persona_name_must_match_file(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    path.write_text("name: b\ndisplay_name: B\ndisclaimer: demo\nsystem_prompt: hi\n")
    _, problems = load_persona(path)
    assert "expected 'a' (the file name)" in str(problems[0])


def test_bad_jsonl_line_is_reported_and_others_load(tmp_path: Path) -> None:
    good = '{"id": "x-1", "domain": "x", "question": "q?", "expected_terms": [["a"]]}'
    path = tmp_path / "x.jsonl"
    path.write_text(f"{good}\n{{not json\n" + good.replace("x-1", "x-2").replace('[["a"]]', "[]") + "\n")
    items, problems = load_jsonl(path, EvalItem)
    assert [i.id for i in items] == ["x-1"]
    assert problems[0].where == "line 2"
    assert problems[1].where.startswith("line 3 expected_terms")


def test_kb_errors(tmp_path: Path) -> None:
    kb = tmp_path / "demo"
    kb.mkdir()
    (kb / "ok.md").write_text("# Title\nSource: us\n\nBody text.\n")
    (kb / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (kb / "empty.md").write_text("# Only a title\n")
    (kb / "huge.txt").write_text("x" * 2_000_001)
    docs, problems = load_kb_domain(kb)
    assert [(d.title, d.source, d.text) for d in docs] == [("Title", "us", "Body text.")]
    messages = sorted(f"{p.path.name}: {p.message}" for p in problems)
    assert messages == [
        "empty.md: empty document",
        "huge.txt: larger than 2 MB; split it up",
        "latin1.txt: not UTF-8 text; re-save it as UTF-8",
    ]
    assert load_kb_domain(tmp_path / "nope")[1][0].message == "knowledge-base folder not found"


def test_broken_file_does_not_hide_the_rest(tmp_path: Path) -> None:
    personas = tmp_path / "personas"
    personas.mkdir()
    (personas / "good.yaml").write_text("name: good\ndisplay_name: G\ndisclaimer: demo\nsystem_prompt: hi\n")
    (personas / "bad.yaml").write_text("name: [\n")
    content = load_content(personas, tmp_path / "kb", tmp_path / "adapters", tmp_path / "evals")
    assert list(content.personas) == ["good"]
    assert len(content.problems) == 1 and "bad.yaml" in str(content.problems[0])
