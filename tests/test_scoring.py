"""Scoring functions on hand-made answers: each rule has a passing and a failing case."""

from __future__ import annotations

import pytest

from app.content import EvalItem, GlossaryEntry, StyleRules, load_content
from app.embeddings import embeddings
from app.scoring.checks import (
    TERM,
    UNSUPPORTED,
    contains_term,
    figures_right,
    forbidden_hits,
    glossary_hits,
    groundedness,
    highlight,
    style_score,
    terminology_accuracy,
    voice_checks,
)
from app.scoring.claims import extract_claims, unsupported_claims
from app.scoring.judge import score_answer


@pytest.mark.parametrize(
    ("text", "term", "found"),
    [
        ("Acme Unlimited is $45/month.", "$45", True),
        ("That costs $450.", "$45", False),
        ("Chat is open 24/7.", "24/7", True),
        ("A TORT is a civil wrong.", "tort", True),
        ("Tortoise", "tort", False),
        ("an ischemic\n stroke", "ischemic stroke", True),
        ("Roth IRAs", "Roth IRA", False),
        ("", "x", False),
    ],
)
def test_contains_term(text: str, term: str, found: bool) -> None:
    assert contains_term(text, term) is found


def test_terminology_accuracy_and_forbidden() -> None:
    item = EvalItem(
        id="m-1", domain="medical", question="?", expected_terms=[["myocardial infarction", "MI"], ["coronary artery"]],
        forbidden=["upper chambers"],
    )  # fmt: skip
    assert terminology_accuracy("An MI blocks a coronary artery.", item) == 1.0
    assert terminology_accuracy("A heart attack blocks an artery.", item) == 0.0
    assert terminology_accuracy("A myocardial infarction is serious.", item) == 0.5
    assert forbidden_hits("It is a blockage in the upper chambers.", item.forbidden) == ["upper chambers"]
    assert forbidden_hits("A blockage in a coronary artery.", item.forbidden) == []


def test_figures_right_needs_every_expected_figure_and_no_false_one() -> None:
    item = EvalItem(
        id="s-1", domain="support", question="?", expected_terms=[["$80", "eighty dollars"], ["$40"], ["autopay"]],
        forbidden=["$90"],
    )  # fmt: skip
    assert figures_right("Two lines with autopay are $80: $40 each.", item) is True
    assert figures_right("Two lines are eighty dollars, $40 a line.", item) is True, "any variant; words need not"
    assert figures_right("Two lines are $80.", item) is False, "the $40 per line is missing"
    assert figures_right("It is $80, or $90 without... no, $40 a line.", item) is False, "a known-false figure"
    words_only = EvalItem(id="s-2", domain="support", question="?", expected_terms=[["autopay"]])
    assert figures_right("Use autopay.", words_only) is None, "a question that expects no figure is not counted"


def test_glossary_hits_flag_misuses() -> None:
    glossary = [
        GlossaryEntry(term="statute of limitations", variants=["limitation period"], definition="d",
                      misuses=["statue of limitations"]),
    ]  # fmt: skip
    hits = glossary_hits("The limitation period, or statue of limitations, is two years.", glossary)
    assert [(h.form, h.misuse) for h in hits] == [("limitation period", False), ("statue of limitations", True)]


SUPPORT = StyleRules(
    min_words=5, max_words=60, opening_phrases=["Thanks for reaching out"], next_step_phrases=["you can"],
    must_not_include=["unfortunately"], sign_off="Happy to help! — Acme Mobile Support", max_reading_grade=8,
)  # fmt: skip


def test_voice_all_rules_pass() -> None:
    answer = "Thanks for reaching out! You can return the phone within 30 days.\nHappy to help! — Acme Mobile Support"
    assert voice_checks(answer, SUPPORT) == {
        "length": True, "acknowledgement": True, "next_step": True, "no_banned_phrases": True, "sign_off": True,
        "reading_level": True,
    }  # fmt: skip


def test_voice_each_rule_fails_on_its_own() -> None:
    answer = (
        "Unfortunately the aforementioned contractual stipulations necessitate comprehensive institutional "
        "documentation verification procedures prior to reimbursement authorization."
    )
    checks = voice_checks(answer, SUPPORT)
    assert checks == {
        "length": True, "acknowledgement": False, "next_step": False, "no_banned_phrases": False,
        "sign_off": False, "reading_level": False,
    }  # fmt: skip


def test_style_score_is_the_share_of_rules_passed() -> None:
    assert style_score({"a": True, "b": False, "c": True, "d": True}) == 0.75
    assert style_score({}) is None


@pytest.mark.parametrize(
    ("answer", "unsupported"),
    [
        ("Acme Unlimited is $45/month and returns take 30 days.", []),
        ("Acme Unlimited is $60/month.", ["$60"]),  # the KB says $45
        ("Returns take 90 days.", ["90 days"]),
        ("It costs 45 dollars.", []),  # the same price, written out
        ("You get 45% off.", ["45%"]),  # 45 is in the evidence, but not as a percentage
        ("Step 1: open the app. Step 2: tap Plans.", []),  # single digits are not claims
        ("Try Acme Premium instead.", ["Acme Premium"]),  # a name the evidence never uses
        ("The Acme Unlimited plan is fine. Thanks for asking!", []),
        ("Your reading of 134/86 is high.", []),  # numbers from the question are supported
        ("Call 1,200 times.", ["1,200"]),
    ],
)
def test_unsupported_claims(answer: str, unsupported: list[str]) -> None:
    evidence = ["My reading was 134/86.", "Acme Unlimited costs $45/month. Returns within 30 days of delivery."]
    assert unsupported_claims(answer, evidence) == unsupported


def test_extract_claims_kinds() -> None:
    claims = {
        claim.text: claim.kind for claim in extract_claims("Pay $1,250.00 or 5% within 14 business days at Acme HQ.")
    }
    assert claims == {"$1,250.00": "money", "5%": "percent", "14 business days": "number", "Acme HQ": "name"}


# Hand-labelled pairs that set GROUNDED_THRESHOLD (all-MiniLM-L6-v2 cosine, best context sentence): supported
# paraphrases scored 0.66-0.81, unsupported sentences 0.13-0.42.
CONTEXT = [
    "Acme Unlimited costs $45 per month per line, with taxes and fees included.",
    "You can return a phone within 30 days of delivery in its original packaging; there is no restocking fee.",
    "Refunds go back to the original payment method within 5 to 7 business days.",
    "A myocardial infarction happens when a coronary artery is blocked and heart muscle is starved of oxygen.",
    "Stage 1 hypertension is a systolic pressure of 130 to 139 or a diastolic pressure of 80 to 89 mm Hg.",
]
LABELLED = [
    ("The Unlimited plan is $45 a month for each line, taxes included.", True),
    ("You have 30 days from delivery to send the phone back in the original box.", True),
    ("Your refund reaches your original card in five to seven business days.", True),
    ("A heart attack occurs when a blocked coronary artery cuts off oxygen to the heart muscle.", True),
    ("A reading of 134 over 86 falls into stage 1 hypertension.", True),
    ("We also give every customer a free tablet with their first order.", False),
    ("Bananas are a good source of potassium for athletes.", False),
    ("The Supreme Court decides most contract disputes within a week.", False),
    ("You should restart your router twice a day to improve your credit score.", False),
    ("International roaming is free in all countries on every plan.", False),
    ("Our stores are open every Sunday until midnight.", False),
]


@pytest.mark.parametrize(("sentence", "supported"), LABELLED)
def test_groundedness_threshold_separates_labelled_sentences(sentence: str, supported: bool) -> None:
    assert groundedness(sentence, CONTEXT, embeddings().embed_documents) == (1.0 if supported else 0.0)


def test_groundedness_is_a_share_of_sentences() -> None:
    answer = f"{LABELLED[0][0]} {LABELLED[6][0]} Happy to help!"  # one supported, one not, one too short to judge
    assert groundedness(answer, CONTEXT, embeddings().embed_documents) == 0.5
    assert groundedness(answer, [], embeddings().embed_documents) is None
    assert groundedness("Hi!", CONTEXT, embeddings().embed_documents) is None


def test_score_answer_combines_the_checks() -> None:
    support = load_content().personas["support"]
    item = EvalItem(id="s-1", domain="support", question="How much is Acme Unlimited?", forbidden=["$50"],
                    expected_terms=[["$45"], ["autopay"]], reference="Acme Unlimited is $45/month.")  # fmt: skip
    good = "Thanks for asking! Acme Unlimited is $45/month. You can add autopay in the app.\n" + support.style.sign_off
    scores = score_answer(good, question=item.question, item=item, persona=support, check_voice=True)
    assert scores.terminology == 1.0 and not scores.hallucination and scores.voice["sign_off"]
    assert "Acme Unlimited" in [hit.term for hit in scores.glossary if not hit.misuse]
    bad = score_answer("Acme Unlimited is $50, or try Unlimited Plus.", item=item, persona=support)
    assert bad.forbidden == ["$50"] and bad.unsupported == ["$50", "Unlimited Plus"] and bad.hallucination
    assert [hit.form for hit in bad.glossary if hit.misuse] == ["Unlimited Plus"] and bad.voice == {}
    assert score_answer("It is $99.").unsupported == [], "no evidence at all: claims are not judged"


def test_highlight_marks_whole_tokens_and_keeps_all_text() -> None:
    text = "An MI blocks a coronary artery; it costs $60, not $600."
    pieces = highlight(text, [("$60", UNSUPPORTED), ("coronary artery", TERM), ("artery", TERM), ("MI", TERM)])
    assert "".join(piece for piece, _ in pieces) == text
    assert [(piece, label) for piece, label in pieces if label] == [
        ("MI", TERM), ("coronary artery", TERM), ("$60", UNSUPPORTED),
    ]  # fmt: skip
