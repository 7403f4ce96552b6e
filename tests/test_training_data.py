"""Training data, adapters/<domain>/train.jsonl and train_kb.jsonl: every figure and name an answer states comes from
the knowledge base, the KB-grounded mix is well formed and covers every KB document, and no training question is
close to a held-out eval question (see docs/content.md, "Figures only from the KB" and "train_kb.jsonl")."""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pytest
from rapidfuzz import fuzz, process

from app.content import (
    EvalItem,
    KBDocument,
    Persona,
    TrainExample,
    load_jsonl,
    load_kb_domain,
    load_persona,
    word_count,
)
from app.scoring.checks import forbidden_hits, reading_grade, voice_checks
from app.scoring.claims import extract_claims, persona_facts, unsupported_claims
from tests.test_eval_splits import MAX_RATIO, MAX_TOKEN_SET_RATIO, _normalise

REPO = Path(__file__).resolve().parent.parent
DOMAINS = ["legal", "medical", "finance", "support"]
TRAIN_FILES = ["train.jsonl", "train_kb.jsonl"]
MIN_KB_EXAMPLES = 150
MIN_EXAMPLES_PER_DOCUMENT = 3
KB_WORDS = (25, 70)  # train_kb.jsonl answers outside support: short, one fact each
NGRAM = 4  # coverage: an answer belongs to the KB document it shares the most distinct word 4-grams with

# Multi-word names an answer may use although no KB text or persona fact contains them: ordinary names such as a
# country or a month, never a program, product, law or organisation (those must be in the KB). Keep it small; an
# answer that needs anything else should be reworded. Empty today: every name the answers use is in the KB.
ALLOWED_NAMES: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Line:
    """One training example and where it is: `file:line` for assertion messages."""

    where: str
    example: TrainExample


@lru_cache
def _persona(domain: str) -> Persona:
    persona, problems = load_persona(REPO / "personas" / f"{domain}.yaml")
    assert persona is not None and not problems, "\n".join(map(str, problems))
    return persona


@lru_cache
def _documents(domain: str) -> tuple[KBDocument, ...]:
    docs, problems = load_kb_domain(REPO / "kb" / domain)
    assert docs and not problems, "\n".join(map(str, problems))
    return tuple(docs)


@lru_cache
def _evidence(domain: str) -> tuple[str, ...]:
    """What an answer may state: the KB bodies plus the persona's own facts (glossary definitions, sign-off)."""
    return (*(doc.text for doc in _documents(domain)), *persona_facts(_persona(domain)))


@lru_cache
def _lines(domain: str, name: str) -> tuple[Line, ...]:
    path = REPO / "adapters" / domain / name
    _, problems = load_jsonl(path, TrainExample)
    assert not problems, f"every line of adapters/{domain}/{name} must be a valid TrainExample:\n" + "\n".join(
        map(str, problems)
    )
    rows = path.read_text(encoding="utf-8").splitlines()
    return tuple(
        Line(f"adapters/{domain}/{name}:{number}", TrainExample.model_validate(json.loads(row)))
        for number, row in enumerate(rows, start=1)
        if row.strip()
    )


@lru_cache
def _eval_questions(domain: str) -> dict[str, list[str]]:
    pools = {}
    for label, path in (
        (f"evals/{domain}.jsonl", REPO / "evals" / f"{domain}.jsonl"),
        (f"evals/paraphrase/{domain}.jsonl", REPO / "evals" / "paraphrase" / f"{domain}.jsonl"),
    ):
        items, problems = load_jsonl(path, EvalItem)
        assert items and not problems, "\n".join(map(str, problems))
        pools[label] = [_normalise(item.question) for item in items]
    return pools


@lru_cache
def _eval_items(domain: str) -> tuple[EvalItem, ...]:
    items = []
    for path in (REPO / "evals" / f"{domain}.jsonl", REPO / "evals" / "paraphrase" / f"{domain}.jsonl"):
        items += load_jsonl(path, EvalItem)[0]
    return tuple(items)


def _ngrams(text: str) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text.lower())
    return {tuple(words[i : i + NGRAM]) for i in range(len(words) - NGRAM + 1)}


@pytest.mark.parametrize("name", TRAIN_FILES)
@pytest.mark.parametrize("domain", DOMAINS)
def test_answers_state_only_kb_figures_and_names(domain: str, name: str) -> None:
    evidence = list(_evidence(domain))
    lines = _lines(domain, name)
    if not unsupported_claims("\n\n".join(a for line in lines for a in line.example.texts("assistant")), evidence):
        return  # fast path: one check of all answers together; otherwise find the answers at fault one by one
    for line in lines:
        for answer in line.example.texts("assistant"):
            unsupported = [c for c in unsupported_claims(answer, evidence) if c.lower() not in ALLOWED_NAMES]
            assert not unsupported, (
                f"{line.where}: every figure and multi-word name in an answer must be stated in kb/{domain}/ or "
                f"personas/{domain}.yaml (glossary, sign-off); not found: {unsupported}"
            )


def test_allowed_names_are_names_the_kb_lacks() -> None:
    """An allow-list entry that the KB already contains, or that is not a name the checker extracts, is dead weight."""
    kb = " ".join(text for domain in DOMAINS for text in _evidence(domain)).lower()
    for name in ALLOWED_NAMES:
        claims = extract_claims(name.title())
        assert [c.kind for c in claims] == ["name"], f"ALLOWED_NAMES entry {name!r} must be one multi-word name"
        assert name not in kb, f"ALLOWED_NAMES entry {name!r} is in the KB already; remove it from the allow-list"


@pytest.mark.parametrize("domain", DOMAINS)
def test_kb_mix_is_well_formed(domain: str) -> None:
    lines = _lines(domain, "train_kb.jsonl")
    assert len(lines) >= MIN_KB_EXAMPLES, (
        f"adapters/{domain}/train_kb.jsonl must have at least {MIN_KB_EXAMPLES} examples, has {len(lines)}"
    )
    persona = _persona(domain)
    for line in lines:
        assert line.example.system == persona.system_prompt, (
            f"{line.where}: the system message must equal personas/{domain}.yaml system_prompt exactly"
        )


@pytest.mark.parametrize("domain", DOMAINS)
def test_kb_mix_answers_are_short_and_in_voice(domain: str) -> None:
    style = _persona(domain).style
    forbidden = sorted({claim for pool in _eval_items(domain) for claim in pool.forbidden})
    low, high = (style.min_words, style.max_words) if domain == "support" else KB_WORDS
    rules = style.model_copy(update={"min_words": low, "max_words": high})
    for line in _lines(domain, "train_kb.jsonl"):
        for answer in line.example.texts("assistant"):
            failed = [rule for rule, ok in voice_checks(answer, rules).items() if not ok]
            assert not failed, (
                f"{line.where}: a train_kb answer must keep the {domain} style rules ({low}-{high} words"
                f"{', reading grade <= ' + str(style.max_reading_grade) if style.max_reading_grade else ''}); "
                f"breaks {failed} ({word_count(answer)} words, grade {reading_grade(answer):.1f})"
            )
            hits = forbidden_hits(answer, forbidden)
            assert not hits, f"{line.where}: answers must not state an eval item's forbidden claim: {hits}"


@pytest.mark.parametrize("domain", DOMAINS)
def test_kb_mix_covers_every_document(domain: str) -> None:
    """Coverage: each train_kb answer is attributed to the KB document with which it shares the most distinct word
    4-grams (lowercased words); every document must be attributed at least MIN_EXAMPLES_PER_DOCUMENT examples."""
    docs = _documents(domain)
    doc_grams = {doc.path.name: _ngrams(doc.text) for doc in docs}
    attributed: Counter[str] = Counter()
    for line in _lines(domain, "train_kb.jsonl"):
        grams = _ngrams(" ".join(line.example.texts("assistant")))
        best, shared = max(((name, len(grams & g)) for name, g in doc_grams.items()), key=lambda pair: pair[1])
        assert shared, f"{line.where}: a train_kb answer must share wording (a word 4-gram) with some kb/{domain}/ file"
        attributed[best] += 1
    for doc in docs:
        assert attributed[doc.path.name] >= MIN_EXAMPLES_PER_DOCUMENT, (
            f"kb/{domain}/{doc.path.name} must be the closest document of at least {MIN_EXAMPLES_PER_DOCUMENT} "
            f"examples in adapters/{domain}/train_kb.jsonl, has {attributed[doc.path.name]}"
        )


@pytest.mark.parametrize("name", TRAIN_FILES)
@pytest.mark.parametrize("domain", DOMAINS)
def test_user_turns_are_far_from_eval_questions(domain: str, name: str) -> None:
    pools = _eval_questions(domain)
    for line in _lines(domain, name):
        for question in line.example.texts("user"):
            text = _normalise(question)
            for label, pool in pools.items():
                for scorer, limit in ((fuzz.ratio, MAX_RATIO), (fuzz.token_set_ratio, MAX_TOKEN_SET_RATIO)):
                    closest, score, _ = process.extractOne(text, pool, scorer=scorer)
                    assert score < limit, (
                        f"{line.where}: a training user turn must score below {limit} on {scorer.__name__} against "
                        f"every {label} question, but {question!r} scores {score:.0f} against {closest!r}"
                    )


@pytest.mark.parametrize("name", TRAIN_FILES)
def test_support_answers_keep_the_sign_off(name: str) -> None:
    sign_off = _persona("support").style.sign_off
    assert sign_off
    for line in _lines("support", name):
        for answer in line.example.texts("assistant"):
            last = answer.strip().splitlines()[-1].strip()
            assert last == sign_off, f"{line.where}: a support answer's last line must be {sign_off!r}, not {last!r}"
