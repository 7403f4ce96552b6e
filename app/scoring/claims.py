"""Claims: the numbers, prices, durations and names an answer states, and which of them no evidence supports.

"$60/month" where the knowledge base says $45 is an unsupported claim; "$45" does not match inside "$450".
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from app.content import Persona
from app.scoring.checks import contains_term

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
_SENTENCE_STARTERS = frozenset({
    "a", "an", "and", "as", "at", "but", "by", "for", "from", "good", "great", "happy", "how", "i", "i'm",
    "if", "in", "it", "its", "no", "not", "on", "or", "our", "so", "thanks", "that", "the", "then", "these",
    "this", "to", "we", "what", "when", "where", "which", "while", "why", "with", "yes", "you", "your",
})  # fmt: skip


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
        words = list(re.finditer(r"\S+", match.group(0)))  # with their places: the claim is quoted as written
        at_sentence_start = not text[: match.start()].strip() or text[: match.start()].rstrip()[-1] in ".!?:\n"
        if at_sentence_start and (len(words) > 2 or words[0].group(0).lower() in _SENTENCE_STARTERS):
            words = words[1:]  # "Try Acme Premium", "The Heart Association": the first word is capitalised anyway
        while words and words[0].group(0).lower() in _SENTENCE_STARTERS:
            words = words[1:]
        if len(words) >= 2:
            key = " ".join(word.group(0) for word in words).lower()
            claims.append(Claim(match.group(0)[words[0].start() :], "name", key))
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


def persona_facts(persona: Persona | None) -> list[str]:
    """What a persona itself states as true (glossary definitions, sign-off): evidence for claims."""
    if persona is None:
        return []
    return [*(f"{e.term}: {e.definition}" for e in persona.glossary), persona.style.sign_off or ""]
