"""Setup: the one shape of what answers. Specs round-trip, named specs resolve per domain, labels stay stable, and bad
specs say what is expected."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.content import Domain
from app.setups import ARENA_POOL, EVAL_MATRIX, PRESETS, RECIPES, Setup, SpecError, canonical_specs

LEGAL = Domain(name="legal", persona="legal", adapter="legal", knowledge_base="legal")
TAX = Domain(name="tax", persona="tax-advisor", adapter="tax-lora", knowledge_base=None)
names = st.from_regex(r"[A-Za-z0-9_-]{1,12}", fullmatch=True)
setups = (
    st.builds(
        Setup,
        adapter=st.none() | names,
        persona=st.none() | names,
        rag=st.none() | names,
        temperature=st.floats(0, 2, allow_nan=False),
        top_p=st.floats(0, 1, exclude_min=True, allow_nan=False),
        max_tokens=st.integers(1, 8192),
        seed=st.none() | st.integers(0, 2**31),
        repetition_penalty=st.floats(1, 2, allow_nan=False),
        frequency_penalty=st.floats(0, 2, allow_nan=False),
        presence_penalty=st.floats(0, 2, allow_nan=False),
    )
    | st.builds(Setup, system_prompt=st.text(min_size=1), rag=st.none() | names)
    | st.builds(Setup, rag=names, brief=st.booleans())
)


@given(setups)
def test_every_spec_parses_back_to_the_same_setup(setup: Setup) -> None:
    assert Setup.parse(setup.spec) == setup, setup.spec


@given(setups)
def test_records_read_back(setup: Setup) -> None:
    assert Setup.model_validate(setup.record()) == setup


@pytest.mark.parametrize(
    ("spec", "expected", "label"),
    [
        ("base", Setup(), "base model"),
        ("adapter+persona+rag", Setup(adapter="legal", persona="legal", rag="legal"),
         "legal adapter + legal persona + RAG(legal)"),
        ("base+persona@temperature=0,max_tokens=32", Setup(persona="legal", temperature=0, max_tokens=32),
         "base model + legal persona (T=0, 32 tokens)"),
        ("adapter:medical+rag:all@seed=7", Setup(adapter="medical", rag="all", seed=7),
         "medical adapter + RAG(all) (seed 7)"),
        ('base+prompt:"Be brief + kind @ home"', Setup(system_prompt="Be brief + kind @ home"),
         "base model + custom prompt"),
        ("base+persona+rag@brief=0", Setup(persona="legal", rag="legal", brief=False),
         "base model + legal persona + RAG(legal) (full answer)"),
    ],
)  # fmt: skip
def test_named_and_full_specs(spec: str, expected: Setup, label: str) -> None:
    setup = Setup.parse(spec, LEGAL)
    assert setup == expected
    assert setup.label == label, "labels name votes on the leaderboard: they must not change"


def test_repetition_controls_are_part_of_a_setup_but_old_records_stay_valid() -> None:
    setup = Setup.parse("base@repetition_penalty=1.15,presence_penalty=0.5")
    assert setup.label == "base model (rep 1.15, pres 0.5)"
    assert setup.record()["repetition_penalty"] == 1.15 and "frequency_penalty" not in setup.record()
    assert set(Setup().record()) == {"adapter", "persona", "rag", "temperature", "top_p", "max_tokens", "seed"}, (
        "a neutral Setup is stored as before the controls existed, so earlier cache keys and votes still match"
    )
    assert "brief" not in Setup(rag="legal").record() and Setup(rag="legal", brief=False).record()["brief"] is False


def test_names_come_from_the_domain_policy() -> None:
    assert Setup.parse("adapter+persona", TAX) == Setup(adapter="tax-lora", persona="tax-advisor")
    with pytest.raises(SpecError, match="has no knowledge base"):
        Setup.parse("base+rag", TAX)
    with pytest.raises(SpecError, match="needs a domain"):
        Setup.parse("adapter")


def test_relative_spec_names_the_recipe_only_for_its_own_domain() -> None:
    for spec in RECIPES:
        assert Setup.parse(spec, LEGAL, temperature=0).relative_spec(LEGAL) == spec
    assert Setup(adapter="medical").relative_spec(LEGAL) is None, "another domain's adapter is not `adapter`"
    assert Setup(system_prompt="x").relative_spec(LEGAL) is None


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("lora", "expected base or adapter"),
        ("base+foo", "unknown part 'foo'"),
        ("adapter+persona+persona", "persona given twice"),
        ("base@x=1", "expected @key=value"),
        ("base@temperature=9", "temperature"),
        ('base+prompt:"unterminated', "JSON string"),
        ("adapter:../etc", "adapter"),
        ('base+persona:legal+prompt:"x"', "not both"),
        ("base+persona@brief=0", "applies to RAG only"),
    ],
)
def test_bad_specs_say_what_is_expected(spec: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        Setup.parse(spec, LEGAL)


def test_named_spec_lists_are_recipes() -> None:
    for specs in (EVAL_MATRIX, ARENA_POOL, *PRESETS.values()):
        assert set(specs) <= set(RECIPES)
    assert canonical_specs(" base , adapter+rag+persona,base") == ["base", "adapter+persona+rag"]
    with pytest.raises(SpecError, match="expected base or adapter"):
        canonical_specs("base,lora+rag")
