"""The one judge: an answer in its context -> `AnswerScores`, the same for a Compare panel, an Arena answer and an
Eval row, so a user never sees one score live and another in the report for the same text.

`score_answer` is pure: it runs every check that applies to what is known about the answer. `Judge` gathers that
context the same way on every path: the domain's persona (its glossary, facts and, where the domain has a brand
voice, its style rules), the eval item asked (found by the question's text when not given), and the evidence the
checker itself retrieves from the domain's knowledge base for the question.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from app.content import Content, Domain, EvalItem, Persona
from app.embeddings import embeddings
from app.rag import Citation, RAGStore
from app.scoring.checks import (
    FALSE_CLAIM,
    LOOP_REPEATS,
    MISUSE,
    TERM,
    UNSUPPORTED,
    Embed,
    GlossaryHit,
    figures_right,
    forbidden_hits,
    glossary_hits,
    groundedness,
    repeats,
    style_score,
    terminology_accuracy,
    voice_checks,
)
from app.scoring.claims import persona_facts, unsupported_claims

EVIDENCE_K = 4  # chunks the checker retrieves per question as evidence for the claim check


@dataclass(frozen=True)
class AnswerScores:
    """Every check that applied to one answer; None where a check did not apply."""

    terminology: float | None = None  # share of the eval item's expected-term groups present
    figures_right: bool | None = None  # every figure the item expects, and no known-false claim (None: no figure)
    glossary: list[GlossaryHit] = field(default_factory=list)
    forbidden: list[str] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)
    groundedness: float | None = None
    voice: dict[str, bool] = field(default_factory=dict)
    repeats: int = 0  # occurrences of the answer's most repeated 6-word phrase (3 or more: it loops)

    @property
    def loops(self) -> bool:
        return self.repeats >= LOOP_REPEATS

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
            "figures_right": self.figures_right,
            "forbidden": self.forbidden,
            "unsupported": self.unsupported,
            "hallucination": self.hallucination,
            "groundedness": self.groundedness,
            "voice": self.voice,
            "style_score": self.style_score,
            "repeats": self.repeats,
            "loops": self.loops,
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
        figures_right=figures_right(answer, item) if item else None,
        glossary=glossary_hits(answer, persona.glossary) if persona else [],
        forbidden=forbidden_hits(answer, item.forbidden) if item else [],
        unsupported=unsupported_claims(answer, known) if has_evidence else [],
        groundedness=groundedness(answer, context, embed) if context and embed else None,
        voice=voice_checks(answer, persona.style) if persona and check_voice else {},
        repeats=repeats(answer),
    )


def normalised(question: str) -> str:
    """A question as the judge looks it up: lower case, single spaces."""
    return " ".join(question.lower().split())


@dataclass
class Judge:
    """Scores answers with the context of their domain; one per app (or eval run), shared by every path.

    `evidence` is the checker's own top EVIDENCE_K passages of the domain's knowledge base for the question: the
    same for every setup that answers it, whether or not that setup used RAG.
    """

    content: Content
    rag: RAGStore
    _items: dict[str, EvalItem] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        splits = [*self.content.evals.values(), *self.content.paraphrases.values()]
        self._items = {normalised(item.question): item for items in splits for item in items}

    def item_for(self, question: str) -> EvalItem | None:
        """The eval item asking exactly this question (any case and spacing), if there is one."""
        return self._items.get(normalised(question))

    def evidence(self, domain: Domain | None, question: str) -> list[str]:
        """Passages of the domain's knowledge base that count as known facts for claims about `question`."""
        if domain is None or domain.knowledge_base is None or not question.strip():
            return []
        return [c.text for c in self.rag.retrieve(domain.knowledge_base, question, EVIDENCE_K)]

    def score(
        self,
        answer: str,
        *,
        domain: Domain | None,
        question: str,
        citations: Sequence[Citation] = (),
        item: EvalItem | None = None,
        evidence: Sequence[str] | None = None,
    ) -> AnswerScores:
        """The scores of one answer to `question` in `domain`; `citations` are what the answering setup retrieved.

        Pass `evidence` when it was already gathered for this domain and question (`evidence(domain, question)`).
        """
        persona = self.content.personas.get(domain.persona) if domain else None
        context = [c.text for c in citations]
        return score_answer(
            answer,
            question=question,
            item=item or self.item_for(question),
            persona=persona,
            context=context,
            evidence=self.evidence(domain, question) if evidence is None else evidence,
            embed=embeddings().embed_documents if context else None,
            check_voice=bool(domain and domain.brand_voice),
        )
