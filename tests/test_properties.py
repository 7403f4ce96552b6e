"""Property-based tests (hypothesis) of the parsers and the judge's checks: whatever text or settings they get, they
answer in their documented way — a value, or their own clear error — and never crash. (Setup specs: test_setups.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from app.comparison import TABLE_HEADERS, to_markdown
from app.config import ConfigError, Settings, load_settings
from app.content import EvalItem, load_jsonl, load_persona, parse_kb_text
from app.inert import inert_markdown, md_text
from app.scoring.checks import contains_term, highlight
from app.scoring.claims import extract_claims, unsupported_claims

FILES = settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
scalars = st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.floats(allow_nan=False) | st.text(max_size=30)
sections = st.dictionaries(
    st.sampled_from(["model", "vllm", "ui", "paths", "arena", "auth", "bogus"]),
    st.dictionaries(st.sampled_from(["port", "host", "url", "panels", "max_loras", "data", "path", "typo"]), scalars),
)


@FILES
@given(data=sections)
def test_any_settings_file_loads_or_says_what_is_wrong(tmp_path: Path, data: dict) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    try:
        loaded = load_settings(path)
    except ConfigError as exc:
        assert "\n" not in str(exc) and str(exc), "a settings error is one non-empty line"
    else:
        assert isinstance(loaded, Settings)


@FILES
@given(text=st.text(max_size=300))
def test_any_persona_file_loads_or_names_its_problems(tmp_path: Path, text: str) -> None:
    path = tmp_path / "someone.yaml"
    path.write_text(text, encoding="utf-8")
    persona, problems = load_persona(path)
    assert (persona is None) == bool(problems), "a persona, or the reasons there is none"
    assert all(str(problem).startswith(str(path)) for problem in problems), "each problem names the file"


@FILES
@given(lines=st.lists(st.text(max_size=80) | st.builds(json.dumps, st.dictionaries(st.text(max_size=8), scalars))))
def test_any_jsonl_loads_line_by_line(tmp_path: Path, lines: list[str]) -> None:
    path = tmp_path / "evals.jsonl"
    path.write_text("\n".join(line.replace("\n", " ") for line in lines), encoding="utf-8")
    items, problems = load_jsonl(path, EvalItem)
    assert len(items) <= len(lines)
    assert all(re.match(r"line \d+", problem.where) for problem in problems), "each problem names its line"


@given(text=st.text(max_size=500))
def test_any_kb_text_parses(text: str) -> None:
    document = parse_kb_text("support", Path("support/doc.md"), text)
    assert document.title and document.text == document.text.strip()


@given(text=st.text(max_size=400))
@example(text="B\x85A")  # U+0085 is whitespace to regexes: the name is quoted as written, not re-spaced
def test_claims_are_taken_from_the_text_and_the_text_supports_itself(text: str) -> None:
    claims = extract_claims(text)
    assert all(claim.text in text for claim in claims)
    assert unsupported_claims(text, [text]) == [], "every claim an answer makes is in the answer"


@given(
    text=st.text(max_size=300), marks=st.lists(st.tuples(st.text(min_size=1, max_size=8), st.sampled_from(["a", "b"])))
)
def test_highlight_cuts_the_text_without_losing_any_of_it(text: str, marks: list[tuple[str, str]]) -> None:
    pieces = highlight(text, [(form, label) for form, label in marks if form.strip()])
    assert "".join(piece for piece, _ in pieces) == text
    for piece, label in pieces:
        if label is not None:
            assert any(contains_term(piece, form) for form, mark in marks if mark == label and form.strip())


@given(text=st.text(max_size=300))
def test_inert_markdown_leaves_no_tag_or_link_outside_code(text: str) -> None:
    shown = inert_markdown(text.replace("`", "'").replace("~", "-"))  # no code: everything is prose
    assert "<" not in shown, "no tag can open"
    assert re.search(r"(?<!\\)\]\(", shown) is None, "no Markdown link or image"


@given(text=st.text(max_size=200))
def test_md_text_escapes_every_control_character(text: str) -> None:
    escaped = md_text(text)
    assert "<" not in escaped and re.search(r"(?<!\\)[\[\]()*_`]", escaped) is None


@given(label=st.text(max_size=80), unsupported=st.lists(st.text(max_size=20), max_size=3))
def test_a_comparison_export_keeps_its_table_whatever_the_setup_is_called(label: str, unsupported: list[str]) -> None:
    metrics = dict.fromkeys(["first_token_s", "tokens_per_s", "prompt_tokens", "completion_tokens",
                             "usd_per_1k_answers"])  # fmt: skip
    panel = {"setup": {"label": label}, "answer": "A.", "error": None, "metrics": metrics, "citations": [],
             "scores": {"terminology": 0.5, "unsupported": unsupported}}  # fmt: skip
    text = to_markdown({"created_at": "2026-12-05T00:00:00+00:00", "question": "Q?", "panels": [panel, panel]})
    table = [line for line in text.split("\n## Panel")[0].splitlines() if line.startswith("| ")]
    cells = [len(re.split(r"(?<!\\)\|", line)) - 2 for line in table]
    assert cells == [len(TABLE_HEADERS)] * 4, "header, rule and one row a panel, every one with all its columns"
