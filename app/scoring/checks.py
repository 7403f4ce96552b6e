"""Pure checks of one answer: terms, glossary use, brand-voice rules, groundedness, and highlighting.

`app.scoring.judge` runs every check that applies to an answer; claims live in `app.scoring.claims`. Term matching
is case-insensitive and word-boundary aware, where a "boundary" is any non-word character, so "$45" and "24/7" match
as whole tokens and "$45" does not match inside "$450".

- terminology: share of an eval item's expected-term groups in the answer; glossary terms used, and misuses.
- figures right: for an item whose expected terms state figures (a price, a duration, an amount), whether the
  answer states every one of them and no known-false claim: the fact asked for, stated right.
- hallucination: a forbidden (known-false) claim of the item, or a claim the evidence does not support: a number,
  price, percentage, duration or multi-word name in the answer that appears in no evidence text (the question,
  the reference answer, the retrieved context, the persona's own facts). "$60/month" where the KB says $45 is one.
- groundedness: share of the answer's sentences that some retrieved sentence supports, by cosine similarity of
  all-MiniLM-L6-v2 embeddings at or above GROUNDED_THRESHOLD (calibrated on hand-labelled pairs in the tests).
- brand voice: each style rule of the persona separately, and `style_score`, the share of rules passed.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import textstat

from app.content import EvalItem, GlossaryEntry, StyleRules

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


def figure_groups(item: EvalItem) -> list[list[str]]:
    """The item's expected-term groups that state a figure: a variant with a digit ("$45", "14 days")."""
    return [group for group in item.expected_terms if any(char.isdigit() for form in group for char in form)]


def figures_right(answer: str, item: EvalItem) -> bool | None:
    """Whether the answer states every figure the item expects and none of its known-false claims; None for an
    item that expects no figure."""
    groups = figure_groups(item)
    if not groups:
        return None
    return all(contains_any(answer, group) for group in groups) and not forbidden_hits(answer, item.forbidden)


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


def sentences(text: str, min_words: int = MIN_SENTENCE_WORDS) -> list[str]:
    """Sentences (split after . ! ? or a line break) with at least `min_words` words."""
    parts = re.split(r"(?<=[.!?])\s+|\n+", text)
    return [part.strip() for part in parts if len(part.split()) >= min_words]


def groundedness(
    answer: str, context: Sequence[str], embed: Embed, threshold: float = GROUNDED_THRESHOLD
) -> float | None:
    """Share of answer sentences whose best cosine similarity to a context sentence reaches `threshold`.

    Context passages are split into sentences too: a whole 800-character chunk dilutes the one sentence that
    supports a claim. A sentence repeated counts once, so a loop of one grounded sentence does not score 100 %. None
    when there is no context or the answer has no sentence long enough to judge.
    """
    claims = list(dict.fromkeys(sentences(answer)))
    support = [s for passage in context for s in sentences(passage, min_words=3)]
    if not claims or not support:
        return None
    vectors = np.asarray(embed(claims + support), dtype=float)
    similarity = vectors[: len(claims)] @ vectors[len(claims) :].T
    return float((similarity.max(axis=1) >= threshold).mean())


LOOP_WORDS = 6  # a phrase this long ...
LOOP_REPEATS = 3  # ... said this many times is a loop ("No, no, no, ...", one sentence repeated to the token limit)


def repeats(text: str, words: int = LOOP_WORDS) -> int:
    """How many times the answer's most repeated run of `words` words occurs (case and punctuation aside)."""
    tokens = re.findall(r"\w+(?:['’]\w+)?", text.lower())
    counts = Counter(tuple(tokens[i : i + words]) for i in range(len(tokens) - words + 1))
    return max(counts.values(), default=0)


def loops(text: str) -> bool:
    """True when some phrase of LOOP_WORDS words comes LOOP_REPEATS times or more."""
    return repeats(text) >= LOOP_REPEATS


TERM, MISUSE, FALSE_CLAIM, UNSUPPORTED = "term", "misuse", "false claim", "unsupported"  # highlight labels


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
