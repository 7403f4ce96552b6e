"""The Compare tab of the real Gradio app against the real vLLM server, driven through gradio_client."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from gradio_client import Client
from gradio_client.client import Job
from gradio_client.exceptions import AppError

from app.content import load_content
from app.prompts import RAG_QUESTION_LEAD, message_text
from app.rag import Citation
from app.scoring.judge import score_answer
from app.serving.process import VLLMServer
from app.setups import PRESETS
from app.ui.compare import MAX_PANELS
from app.ui.display import marked_html, sources_markdown
from tests.conftest import REPO
from tests.fake_openai import FakeOpenAI
from tests.panels import panel

SHIPPED = ("legal", "medical", "finance", "support")


@pytest.fixture
async def shipped_adapters(vllm_server: VLLMServer) -> AsyncIterator[list[str]]:
    """The four trained adapters loaded into the running server; afterwards it serves the base model alone again."""
    client = vllm_server.client()
    for name in SHIPPED:
        await client.load_adapter(name, str(REPO / "adapters" / name))
    try:
        yield list(SHIPPED)
    finally:
        for name in SHIPPED:
            await client.unload_adapter(name)
        await client.close()


def answer_of(history: list[dict]) -> str:
    assert history[-2]["role"] == "user"
    assert history[-1]["role"] == "assistant"
    return message_text(history[-1]["content"])


def ask(client: Client, question: str, *panels: list, domain: str = "support") -> Job:
    """Ask with the given panels shown; /answer_all returns 4 chats, 4 stats lines and 4 term checks."""
    unused = panel() * (MAX_PANELS - len(panels))
    values = [value for inputs in panels for value in inputs]
    return client.submit(question, domain, len(panels), *values, *unused, api_name="/answer_all")


def tokens_in(stats: str) -> int:
    match = re.search(r"(\d+) tokens in", stats)
    assert match, stats
    return int(match.group(1))


def assert_generated_at_once(stats_lines: Sequence[str]) -> None:
    """No panel waited for all the others to end: each one's first token came before the last of the others ended, so
    they were answered together, not one after another (with two panels: each started before the other ended).

    Read from the stats lines (time to first token, speed, tokens out), not from when updates arrived: on a busy CPU
    the browser updates can pause for seconds while the answers go on. Not "every first token before any end": the
    app sends every request at once (test_every_panel_is_asked_at_once checks it exactly), but a busy server may take
    some in a few seconds later (on the CI run of 0261e77, two of four adapter panels began after the first ended)."""
    spans = []
    for stats in stats_lines:
        match = re.search(r"first token ([\d.]+) s · (\d+) tokens/s · \d+ tokens in / (\d+) out", stats)
        assert match, stats
        first, speed, out = float(match[1]), int(match[2]), int(match[3])
        spans.append((first, first + out / speed))
    for index, (first, _) in enumerate(spans):
        others_end = max(end for other, (_, end) in enumerate(spans) if other != index)
        assert first < others_end, f"panel {index} began after the others ended; (first token, end) per panel: {spans}"


def test_two_panels_stream_in_parallel(ui_client: Client) -> None:
    question = "What is a tort? Answer in one sentence."
    job = ask(ui_client, question, panel(tokens=48), panel(tokens=48))
    chat_0, chat_1, _, _, stats_0, stats_1, *_ = job.result(timeout=180)
    assert len(job.outputs()) > 6, "the answers must stream as many updates, not arrive once"
    assert_generated_at_once([stats_0, stats_1])
    assert answer_of(chat_0).strip() and message_text(chat_0[-2]["content"]) == question
    assert answer_of(chat_0) == answer_of(chat_1), "same model, temperature 0: same answer in both panels"
    assert "first token" in stats_0 and "tokens/s" in stats_1 and "per 1k answers" in stats_0


async def test_four_adapters_stream_at_once_and_a_missing_one_fails_alone(
    ui_client: Client, shipped_adapters: list[str]
) -> None:
    question = "What should I do first?"
    job = ask(ui_client, question, *(panel(name, tokens=48) for name in shipped_adapters))
    chats = job.result(timeout=300)[:MAX_PANELS]
    assert all(answer_of(chat).strip() and "⚠️" not in answer_of(chat) for chat in chats)
    assert len({answer_of(chat) for chat in chats}) >= 3, "four different adapters must answer differently"
    assert len(job.outputs()) > 6, "the answers must stream as many updates, not arrive once"
    assert_generated_at_once(job.result()[MAX_PANELS : 2 * MAX_PANELS])

    chats = ask(ui_client, question, panel("legal"), panel("gone"), panel("support")).result(timeout=300)
    assert "⚠️ model 'gone'" in answer_of(chats[1])
    assert all(answer_of(chats[i]).strip() and "⚠️" not in answer_of(chats[i]) for i in (0, 2))


def test_every_panel_is_asked_at_once(fake_server: FakeOpenAI, fake_app: str) -> None:
    """The app sends all four panels' requests together: the scripted server streams four answers at the same time
    (exact, whatever the machine's speed; the real-server tests above check what the panels' stats show)."""
    for model in ("base", "support"):
        fake_server.script(model, f"A slow answer from {model}, in eight pieces.", chunks=8, delay_s=0.5)
    client = Client(fake_app, verbose=False)
    chats = ask(client, "What should I do first?", panel(), panel("support"), panel(), panel("support"))
    assert all("⚠️" not in answer_of(chat) for chat in chats.result(timeout=120)[:MAX_PANELS])
    assert len(fake_server.requests) == 4
    assert fake_server.peak_streaming == 4, "every panel's answer streams at the same time"


def test_a_hidden_panel_keeps_its_conversation(fake_server: FakeOpenAI, fake_app: str) -> None:
    """Three panels answer; with two shown, the third keeps showing its conversation (sent as a value on every update,
    not left to Gradio); shown again, it continues that conversation."""
    client = Client(fake_app, verbose=False)
    ask(client, "First question?", panel(), panel(), panel()).result(timeout=60)
    chats = ask(client, "Second question?", panel(), panel()).result(timeout=60)[:MAX_PANELS]
    assert [message_text(turn["content"]) for turn in chats[2]] == ["First question?", "OK."]
    assert len(chats[0]) == 4, "the shown panels went on"
    ask(client, "Third question?", panel(), panel(), panel()).result(timeout=60)
    third = [[turn["content"] for turn in request["messages"]] for request in fake_server.requests[-3:]]
    assert ["First question?", "OK.", "Third question?"] in third, "the third panel's request"


def test_an_answer_shows_as_it_ends_and_its_term_check_follows(fake_server: FakeOpenAI, fake_app: str) -> None:
    """Judging runs beside the stream, not in its way: the update that first carries a panel's stats line (its end)
    has no term check yet; a later one adds it. Judging inline (before showing the end) fails the first check."""
    fake_server.script("base", "Acme Unlimited is $45 per month with autopay.", chunks=4, delay_s=0.05)
    client = Client(fake_app, verbose=False)
    job = ask(client, "How much is Acme Unlimited per month?", panel(), panel())
    final = job.result(timeout=120)
    for index in range(2):
        stats, marks = MAX_PANELS + index, 2 * MAX_PANELS + index
        ended = next(update for update in job.outputs() if update[stats])
        assert not ended[marks], f"panel {index}: its end waited for the judge"
        assert final[marks] and "Term check" in final[marks], f"panel {index}: the term check came after"


async def test_preset_sets_up_the_classic_comparison(ui_client: Client, shipped_adapters: list[str]) -> None:
    status, count, _examples, question, *fields = ui_client.predict("legal", "classic four-way", "",
                                                                    api_name="/apply_preset")  # fmt: skip
    models, personas, prompts, rag_on = fields[0::5], fields[1::5], fields[2::5], fields[3::5]  # per panel
    assert "4 adapter(s)" in status and count == 4
    assert [m["value"] for m in models] == ["base", "legal", "base", "legal"]
    assert personas == ["legal", "legal", "legal", "none"], personas
    assert rag_on == [False, False, True, True]
    content = load_content()
    assert prompts[0] == content.personas["legal"].system_prompt, "the persona's system prompt is filled in"
    assert question == content.evals["legal"][0].question, "an empty question gets the domain's example"
    assert list(PRESETS)[-1] == "classic four-way"


def test_preset_falls_back_to_base_without_adapters(ui_client: Client) -> None:
    status, count, _examples, question, *fields = ui_client.predict("medical", next(iter(PRESETS)), "My question",
                                                                    api_name="/apply_preset")  # fmt: skip
    assert "base model and 0 adapter(s)" in status
    assert [m["value"] for m in fields[0::5]] == ["base"] * 4
    assert count == 2 and "value" not in question, "a question the user typed is kept"


def test_persona_seed_and_term_check(ui_client: Client) -> None:
    content = load_content()
    question = content.evals["medical"][0].question
    outputs = ask(
        ui_client, question,
        panel(persona="medical", system=content.personas["medical"].system_prompt, tokens=48),
        panel(tokens=48),
        panel(temperature=1.0, seed=7, tokens=24),
        panel(temperature=1.0, seed=7, tokens=24),
        domain="medical",
    ).result(timeout=300)  # fmt: skip
    chats, stats, marks = outputs[:4], outputs[4:8], outputs[8:12]
    # Without a system prompt SmolLM2's chat template adds a one-line default; the persona's is much longer.
    assert tokens_in(stats[0]) > tokens_in(stats[1]) + 50, "the persona's system prompt must reach the model"
    assert answer_of(chats[2]) == answer_of(chats[3]), "the same seed must give the same sampled answer"
    assert all("Term check: terminology" in mark for mark in marks), "an eval question brings its expected terms"


def exported(client: Client, api_name: str) -> str:
    """The text of the file an export button made (the endpoint returns an update showing the file)."""
    update = client.predict(api_name=api_name)
    assert update["visible"] is True
    return Path(update["value"]).read_text(encoding="utf-8")


def test_export_the_last_comparison(ui_client: Client) -> None:
    chat, *_ = ask(ui_client, "Name one primary colour.", panel(tokens=16), panel(system="Be brief.", tokens=16)
                   ).result(timeout=180)  # fmt: skip
    record = json.loads(exported(ui_client, "/export_json"))
    assert record["question"] == "Name one primary colour."
    labels = [p["setup"]["label"] for p in record["panels"]]
    assert labels == ["base model (T=0, 16 tokens)", "base model + custom prompt (T=0, 16 tokens)"]
    assert record["panels"][1]["setup"]["system_prompt"] == "Be brief."
    assert record["panels"][0]["answer"] == answer_of(chat)
    assert record["panels"][0]["metrics"]["completion_tokens"] > 0
    markdown = exported(ui_client, "/export_markdown")
    assert "**Question:** Name one primary colour." in markdown and "## Panel 2: base model + custom" in markdown


def test_failing_panel_does_not_break_the_other(ui_client: Client) -> None:
    chat_0, chat_1, *_ = ask(ui_client, "Hello", panel("no-such-adapter"), panel()).result(timeout=120)
    assert "⚠️ model 'no-such-adapter'" in answer_of(chat_0)
    assert answer_of(chat_1).strip() and "⚠️" not in answer_of(chat_1)


def test_huge_prompt_is_refused_and_the_app_goes_on(ui_client: Client) -> None:
    huge = "Please summarise: " + "lorem ipsum " * 3000  # far more tokens than the model's context
    with pytest.raises(AppError, match=r"Your question is 36,017 characters; the limit is 4,000"):
        ask(ui_client, huge, panel(), panel(rag=True)).result(timeout=120)
    chat, *_ = ask(ui_client, "Hello", panel(tokens=16), panel(tokens=16)).result(timeout=120)
    assert answer_of(chat).strip() and "⚠️" not in answer_of(chat), "the next question is answered as usual"


def test_empty_question_is_refused(ui_client: Client) -> None:
    with pytest.raises(AppError, match="Type a question first"):
        ask(ui_client, "  ", panel(), panel()).result(timeout=60)


def test_model_output_is_shown_inert_and_kept_raw(fake_server: FakeOpenAI, fake_app: str) -> None:
    """Scripted output with HTML, an image that would call home and a code block: the chat shows it inert, and the
    conversation the model gets back next turn is the raw text (no escape / unescape round trip)."""
    raw = "Hi <b>there</b> ![x](http://127.0.0.1:9/leak) [site](http://evil.example)\n```html\n<b>code</b>\n```"
    fake_server.script("base", raw)
    client = Client(fake_app, verbose=False)
    chat, *_ = ask(client, "Show me <i>HTML</i>", panel(), panel()).result(timeout=60)
    shown = answer_of(chat)
    assert "<b>there" not in shown and "&lt;b>there" in shown, "tags outside code cannot render"
    assert "](http" not in shown and "\\[site\\]" in shown, "no Markdown link or image survives"
    assert "```html\n<b>code</b>\n```" in shown, "a code block is shown exactly as written"
    assert "&lt;i>HTML" in message_text(chat[-2]["content"]), "the question is shown inert too"
    ask(client, "And again?", panel(), panel()).result(timeout=60)
    history = fake_server.requests[-1]["messages"]
    assert history[:2] == [
        {"role": "user", "content": "Show me <i>HTML</i>"},
        {"role": "assistant", "content": raw},
    ], "the model gets the raw conversation back"


def test_multi_turn_keeps_history(ui_client: Client) -> None:
    ask(ui_client, "My name is Ada.", panel(tokens=16), panel(tokens=16)).result(timeout=120)
    second, *_ = ask(ui_client, "What did I just tell you?", panel(), panel()).result(timeout=120)
    assert [t["role"] for t in second] == ["user", "assistant", "user", "assistant"]
    assert message_text(second[0]["content"]) == "My name is Ada."
    fresh, *_ = ask(Client(ui_client.src, verbose=False), "Hello", panel(tokens=16), panel(tokens=16)).result(
        timeout=60
    )
    assert len(fresh) == 2, "another browser session has its own conversation"


def test_rag_panel_answers_from_the_knowledge_base(ui_client: Client) -> None:
    question = "How much is Acme Unlimited per month?"
    chat, *_ = ask(ui_client, question, panel(tokens=48, rag=True), panel(tokens=48)).result(timeout=180)
    assert message_text(chat[-2]["content"]) == question, "the chat shows the question, not the retrieved context"
    assert "$45" in answer_of(chat)


def test_bad_knowledge_base_fails_in_that_panel_only(ui_client: Client) -> None:
    chat_0, chat_1, *_ = ask(ui_client, "Hello", panel(rag=True, kb="../kb"), panel(tokens=16)).result(timeout=60)
    assert "⚠️ this panel" in answer_of(chat_0) and "settings are not valid: rag" in answer_of(chat_0)
    assert answer_of(chat_1).strip() and "⚠️" not in answer_of(chat_1), "the other panel answers as usual"


def test_sources_are_listed_and_escaped() -> None:
    evil = Citation(
        title="<b>Plans</b>", source="Guide", path="support/plans.md", heading="Prices",
        score=0.8123, text="Unlimited is $45.\n<script>alert(1)</script> ![x](http://evil.example/x.png)",
    )  # fmt: skip
    listing, passages = sources_markdown([evil])
    assert "\\[1\\]" in listing and "Guide" in listing and "score 0.81" in listing
    assert "<b>" not in listing and "&lt;b&gt;Plans&lt;\\/b&gt;" in listing
    assert "<script>" not in passages and "&lt;script&gt;" in passages
    assert "![x](" not in passages and "evil.example" not in passages, "KB links and images are reduced to their text"
    twice, _ = sources_markdown([evil, evil])
    assert twice.count("Guide") == 1 and "\\[1\\] \\[2\\]" in twice, "one line per document, with its passages"
    assert sources_markdown([]) == ("", "")


def test_term_check_marks_are_escaped_and_labelled() -> None:
    support = load_content().personas["support"]
    answer = "Acme Unlimited is $60/month <script>alert(1)</script> on Unlimited Plus."
    scores = score_answer(answer, persona=support, evidence=["Acme Unlimited is $45/month."])
    shown = marked_html(answer, scores)
    assert "<script>" not in shown and "&lt;script&gt;" in shown
    assert 'title="term">Acme Unlimited</mark>' in shown
    assert 'title="unsupported">$60</mark>' in shown
    assert 'title="misuse">Unlimited Plus</mark>' in shown


def test_repetition_controls_reach_the_server(fake_server: FakeOpenAI, fake_app: str) -> None:
    client = Client(fake_app, verbose=False)
    tuned = panel(repetition_penalty=1.2, frequency_penalty=0.3, presence_penalty=0.4)
    ask(client, "Hello", tuned, panel()).result(timeout=60)
    bodies = sorted(fake_server.requests[-2:], key=lambda body: "repetition_penalty" in body)
    assert "repetition_penalty" not in bodies[0] and "frequency_penalty" not in bodies[0], "neutral: nothing sent"
    assert (bodies[1]["repetition_penalty"], bodies[1]["frequency_penalty"], bodies[1]["presence_penalty"]) == (
        1.2,
        0.3,
        0.4,
    )


def test_the_brief_checkbox_reaches_the_rag_prompt(fake_server: FakeOpenAI, fake_app: str) -> None:
    """Ticked (the default), a RAG panel asks for one short sentence; unticked, it asks for a full answer; without
    RAG the box means nothing and the panel answers as usual."""
    client = Client(fake_app, verbose=False)
    question = "How much is Acme Unlimited?"
    chats = ask(client, question, panel(rag=True), panel(rag=True, brief=False), panel(brief=False)).result(timeout=120)
    asked = [body["messages"][-1]["content"] for body in fake_server.requests[-3:]]
    assert sorted(RAG_QUESTION_LEAD in text for text in asked) == [False, False, True]
    assert sum(text.endswith(f"\n\nQuestion: {question}") for text in asked) == 1, "the unticked RAG panel"
    assert all("RAG only" not in str(chat) for chat in chats[:3])
