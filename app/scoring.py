"""Scoring: pure functions that judge one answer against an eval item, a glossary or a persona's style rules.

Used by the content tests, the batch evaluation and (live) by the UI. Term matching is case-insensitive and
word-boundary aware, where a "boundary" is any non-word character, so "$45" and "24/7" match as whole tokens and
"$45" does not match inside "$450".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import textstat

from app.content import EvalItem, GlossaryEntry, StyleRules


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
