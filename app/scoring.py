"""Scoring: pure functions that judge one answer against an eval item, a glossary, evidence or a persona's style.

Used by the content tests, the batch evaluation (app.eval) and, live, by the UI; `score_answer` runs every check
that applies. Term matching is case-insensitive and word-boundary aware, where a "boundary" is any non-word
character, so "$45" and "24/7" match as whole tokens and "$45" does not match inside "$450".

- terminology: share of an eval item's expected-term groups in the answer; glossary terms used, and misuses.
- hallucination: a forbidden (known-false) claim of the item, or a claim the evidence does not support: a number,
  price, percentage, duration or multi-word name in the answer that appears in no evidence text (the question,
  the reference answer, the retrieved context, the persona's own facts). "$60/month" where the KB says $45 is one.
- groundedness: share of the answer's sentences that some retrieved sentence supports, by cosine similarity of
  all-MiniLM-L6-v2 embeddings at or above GROUNDED_THRESHOLD (calibrated on hand-labelled pairs in the tests).
- brand voice: each style rule of the persona separately, and `style_score`, the share of rules passed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any

import numpy as np
import textstat

from app.content import EvalItem, GlossaryEntry, Persona, StyleRules

Embed = Callable[[list[str]], Sequence[Sequence[float]]]  # texts -> unit-length vectors (e.g. embed_documents)
GROUNDED_THRESHOLD = 0.55  # cosine; midway between the hand-labelled pairs in tests/test_scoring.py (0.42 vs 0.66)
MIN_SENTENCE_WORDS = 4  # shorter sentences ("Happy to help!") carry no claim worth grounding


@lru_cache(maxsize=4096)
def _term_pattern(term: str) -> re.Pattern[str]:
    words = r"\s+".join(re.escape(part) for part in term.split())
    return re.compile(rf"(?<!\w){words}(?!\w)", re.IGNORECASE)


def contains_term(text: str, term: str) -> bool:
    """True if `term` occurs in `text` as a whole token sequence (any case, any run of whitespace between words)."""
    return bool(term.strip()) and _term_pattern(term.strip()).search(text) is not None


def contains_any(text: str, forms: list[str]) -> bool:
    return any(contains_term(text, form) for form in forms)


def terminology_accuracy(answer: str, item: EvalItem) -> float:
    """Share of the item's expected-term groups present in the answer (a group counts if any variant occurs)."""
    return sum(contains_any(answer, group) for group in item.expected_terms) / len(item.expected_terms)


def forbidden_hits(answer: str, forbidden: list[str]) -> list[str]:
    """The known-false claims the answer contains; any hit makes the answer a hallucination."""
    return [claim for claim in forbidden if contains_term(answer, claim)]


@dataclass(frozen=True)
class GlossaryHit:
    term: str
    form: str  # the form found in the text (the term or one of its variants / misuses)
    misuse: bool


def glossary_hits(text: str, glossary: list[GlossaryEntry]) -> list[GlossaryHit]:
    """Glossary terms used in `text`, and misuses (wrong words a glossary entry names) flagged as such."""
    hits = []
    for entry in glossary:
        found = next((form for form in entry.forms if contains_term(text, form)), None)
        if found:
            hits.append(GlossaryHit(entry.term, found, misuse=False))
        hits += [GlossaryHit(entry.term, wrong, misuse=True) for wrong in entry.misuses if contains_term(text, wrong)]
    return hits


def reading_grade(text: str) -> float:
    """Flesch–Kincaid grade level (textstat)."""
    return float(textstat.flesch_kincaid_grade(text))


def voice_checks(answer: str, style: StyleRules) -> dict[str, bool]:
    """Each style rule that applies to this persona, checked separately: {rule: passed}."""
    text = answer.strip()
    lowered = text.lower()
    words = len(text.split())
    checks = {"length": style.min_words <= words <= style.max_words}
    if style.opening_phrases:
        checks["acknowledgement"] = any(lowered.startswith(p.lower()) for p in style.opening_phrases)
    if style.next_step_phrases:
        checks["next_step"] = contains_any(text, style.next_step_phrases)
    if style.must_include:
        checks["must_include"] = all(contains_term(text, p) for p in style.must_include)
    if style.must_not_include:
        checks["no_banned_phrases"] = not contains_any(text, style.must_not_include)
    if style.sign_off:
        checks["sign_off"] = text.splitlines()[-1].strip() == style.sign_off if text else False
    if style.max_reading_grade is not None:
        checks["reading_level"] = reading_grade(text) <= style.max_reading_grade
    return checks


def style_score(checks: dict[str, bool]) -> float | None:
    """Share of style rules passed (None when the persona has no rules to check)."""
    return sum(checks.values()) / len(checks) if checks else None


_UNITS = (
    r"%|percent|business days?|days?|hours?|hrs?|minutes?|mins?|weeks?|months?|years?|GB|MB|TB|gigabytes?|"
    r"mg/dL|mmol/L|mmHg|mg|mcg|mL|bpm|beats per minute|dollars?|cents?"
)
_NUMBER = re.compile(
    rf"(?<![\w.])(?P<currency>\$)?(?P<value>\d{{1,3}}(?:,\d{{3}})+(?:\.\d+)?|\d+(?:\.\d+)?)(?:\s?(?P<unit>{_UNITS})(?!\w))?",
    re.IGNORECASE,
)
# Two or more capitalised words in a row: "Acme Premium", "American Heart Association", "Roth IRA".
_NAME = re.compile(r"(?<![\w-])[A-Z][\w&'’-]*(?:\s+[A-Z][\w&'’-]*)+")
# Capitalised only because a sentence starts with them; dropped from the front of a name.
_SENTENCE_STARTERS = frozenset(
    {
        "a",
        "an",
        "and",
        "as",
        "at",
        "but",
        "by",
        "for",
        "from",
        "good",
        "great",
        "happy",
        "how",
        "i",
        "i'm",
        "if",
        "in",
        "it",
        "its",
        "no",
        "not",
        "on",
        "or",
        "our",
        "so",
        "thanks",
        "that",
        "the",
        "then",
        "these",
        "this",
        "to",
        "we",
        "what",
        "when",
        "where",
        "which",
        "while",
        "why",
        "with",
        "yes",
        "you",
        "your",
    }
)


@dataclass(frozen=True)
class Claim:
    """A checkable fact in an answer: `text` as written, `kind` money/percent/number/name, `key` to compare by."""

    text: str
    kind: str
    key: str


def _number_key(value: str) -> str:
    try:
        return format(Decimal(value.replace(",", "")).normalize(), "f")
    except InvalidOperation:
        return value


def extract_claims(text: str) -> list[Claim]:
    """Numbers that carry a fact (with a currency or unit, or of two digits or more) and multi-word names."""
    claims = []
    for match in _NUMBER.finditer(text):
        unit = (match["unit"] or "").lower()
        if not (match["currency"] or unit or len(match["value"].replace(",", "")) >= 2 or "." in match["value"]):
            continue  # "step 1", "3 of them": too common to call a claim
        kind = "money" if match["currency"] or unit.startswith(("dollar", "cent")) else "number"
        kind = "percent" if unit in ("%", "percent") else kind
        claims.append(Claim(match.group(0).strip(), kind, _number_key(match["value"])))
    for match in _NAME.finditer(text):
        words = match.group(0).split()
        at_sentence_start = not text[: match.start()].strip() or text[: match.start()].rstrip()[-1] in ".!?:\n"
        if at_sentence_start and (len(words) > 2 or words[0].lower() in _SENTENCE_STARTERS):
            words = words[1:]  # "Try Acme Premium", "The Heart Association": the first word is capitalised anyway
        while words and words[0].lower() in _SENTENCE_STARTERS:
            words = words[1:]
        if len(words) >= 2:
            name = " ".join(words)
            claims.append(Claim(name, "name", name.lower()))
    return claims


def unsupported_claims(answer: str, evidence: Sequence[str]) -> list[str]:
    """The answer's claims that no evidence text supports (a price must appear as a price, a name as that name)."""
    known: set[tuple[str, str]] = set()
    names = " ".join(evidence).lower()
    for claim in extract_claims("\n".join(evidence)):
        known.add((claim.kind, claim.key))
        known.add(("number", claim.key))  # a plain number is supported by any mention of its value
    missing = []
    for claim in extract_claims(answer):
        supported = contains_term(names, claim.key) if claim.kind == "name" else (claim.kind, claim.key) in known
        if not supported and claim.text not in missing:
            missing.append(claim.text)
    return missing


def sentences(text: str, min_words: int = MIN_SENTENCE_WORDS) -> list[str]:
    """Sentences (split after . ! ? or a line break) with at least `min_words` words."""
    parts = re.split(r"(?<=[.!?])\s+|\n+", text)
    return [part.strip() for part in parts if len(part.split()) >= min_words]


def groundedness(
    answer: str, context: Sequence[str], embed: Embed, threshold: float = GROUNDED_THRESHOLD
) -> float | None:
    """Share of answer sentences whose best cosine similarity to a context sentence reaches `threshold`.

    Context passages are split into sentences too: a whole 800-character chunk dilutes the one sentence that
    supports a claim. None when there is no context or the answer has no sentence long enough to judge.
    """
    claims = sentences(answer)
    support = [s for passage in context for s in sentences(passage, min_words=3)]
    if not claims or not support:
        return None
    vectors = np.asarray(embed(claims + support), dtype=float)
    similarity = vectors[: len(claims)] @ vectors[len(claims) :].T
    return float((similarity.max(axis=1) >= threshold).mean())


def persona_facts(persona: Persona | None) -> list[str]:
    """What a persona itself states as true (glossary definitions, sign-off): evidence for claims."""
    if persona is None:
        return []
    return [*(f"{e.term}: {e.definition}" for e in persona.glossary), persona.style.sign_off or ""]


TERM, MISUSE, FALSE_CLAIM, UNSUPPORTED = "term", "misuse", "false claim", "unsupported"  # highlight labels


@dataclass(frozen=True)
class AnswerScores:
    """Every check that applied to one answer; None where a check did not apply."""

    terminology: float | None = None  # share of the eval item's expected-term groups present
    glossary: list[GlossaryHit] = field(default_factory=list)
    forbidden: list[str] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)
    groundedness: float | None = None
    voice: dict[str, bool] = field(default_factory=dict)

    @property
    def hallucination(self) -> bool:
        """A known-false claim, or a claim that no evidence supports."""
        return bool(self.forbidden or self.unsupported)

    @property
    def style_score(self) -> float | None:
        return style_score(self.voice)

    def as_record(self) -> dict[str, Any]:
        """The scores as plain JSON (eval results, comparison exports)."""
        return {
            "terminology": self.terminology,
            "forbidden": self.forbidden,
            "unsupported": self.unsupported,
            "hallucination": self.hallucination,
            "groundedness": self.groundedness,
            "voice": self.voice,
            "style_score": self.style_score,
            "glossary_terms": sorted({hit.term for hit in self.glossary if not hit.misuse}),
            "misuses": sorted({hit.form for hit in self.glossary if hit.misuse}),
        }

    def marks(self) -> list[tuple[str, str]]:
        """(text as found in the answer, label) for highlighting: false claims and misuses first, terms last."""
        return [
            *((claim, FALSE_CLAIM) for claim in self.forbidden),
            *((hit.form, MISUSE) for hit in self.glossary if hit.misuse),
            *((claim, UNSUPPORTED) for claim in self.unsupported),
            *((hit.form, TERM) for hit in self.glossary if not hit.misuse),
        ]


def highlight(text: str, marks: Sequence[tuple[str, str]]) -> list[tuple[str, str | None]]:
    """`text` cut into (segment, label or None) with every occurrence of each mark's text labelled.

    Occurrences are found like terms (case-insensitive, whole tokens); where two overlap, the earlier mark wins.
    """
    spans: list[tuple[int, int, str]] = []
    for form, label in marks:
        for match in _term_pattern(form.strip()).finditer(text):
            if all(match.end() <= start or match.start() >= end for start, end, _ in spans):
                spans.append((match.start(), match.end(), label))
    pieces: list[tuple[str, str | None]] = []
    position = 0
    for start, end, label in sorted(spans):
        pieces += [(text[position:start], None), (text[start:end], label)]
        position = end
    pieces.append((text[position:], None))
    return [(piece, label) for piece, label in pieces if piece]


def score_answer(
    answer: str,
    *,
    question: str = "",
    item: EvalItem | None = None,
    persona: Persona | None = None,
    context: Sequence[str] = (),
    evidence: Sequence[str] = (),
    embed: Embed | None = None,
    check_voice: bool = False,
) -> AnswerScores:
    """Score one answer with what is known about it.

    `context` is what the answering model retrieved (for groundedness); `evidence` is any further text that counts
    as support for claims (e.g. passages the checker retrieved itself). Claims are checked only when a reference,
    context or evidence exists: the question and the persona's facts alone are too little to judge by.
    `check_voice` applies the persona's style rules (brand voice).
    """
    known = [question, *context, *evidence, *persona_facts(persona)]
    if item:
        known += [item.question, item.reference]
    has_evidence = bool(item and item.reference) or any(text.strip() for text in [*context, *evidence])
    return AnswerScores(
        terminology=terminology_accuracy(answer, item) if item else None,
        glossary=glossary_hits(answer, persona.glossary) if persona else [],
        forbidden=forbidden_hits(answer, item.forbidden) if item else [],
        unsupported=unsupported_claims(answer, known) if has_evidence else [],
        groundedness=groundedness(answer, context, embed) if context and embed else None,
        voice=voice_checks(answer, persona.style) if persona and check_voice else {},
    )
