"""Scoring functions on hand-made answers: each rule has a passing and a failing case."""

from __future__ import annotations

import pytest

from app.content import EvalItem, GlossaryEntry, StyleRules
from app.scoring import contains_term, forbidden_hits, glossary_hits, terminology_accuracy, voice_checks


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
