"""Browser end-to-end: Debian's headless Chromium, driven by Playwright, against the real app and vLLM server.

Screenshots are saved under test-artifacts/ (ignored by git) for a person to look at.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import gradio as gr
import pytest
from playwright.sync_api import Browser, Page, expect

from app.arena.store import VoteStore
from app.config import Settings
from app.content import Domain
from app.serving.client import ServingClient
from app.serving.process import VLLMServer
from app.setups import RECOMMENDED, Setup
from app.ui import build_app
from tests.conftest import REPO, free_port, launched
from tests.fake_openai import FakeOpenAI

ARTIFACTS = REPO / "test-artifacts"


@pytest.fixture(scope="module")
def app_url(
    vllm_server: VLLMServer, server_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    store = VoteStore.in_folder(tmp_path_factory.mktemp("browser-votes"))  # this module's votes only
    demo: gr.Blocks = build_app(server_settings, vllm_server.client(), store=store)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()
        store.close()


def panel_texts(page: Page) -> list[str]:
    """The assistant messages on the page, left panel first (one per panel after a first question)."""
    return page.locator(".bot").all_inner_texts()


def test_two_panels_stream_side_by_side(browser: Browser, app_url: str) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(app_url)
    page.get_by_label("Panel 1 model").wait_for()
    page.wait_for_function("document.querySelector('input[aria-label=\"Panel 1 model\"]').value === 'base'")
    question = page.get_by_label("Your question")
    question.fill("Explain what a tort is, with five examples, in ten sentences.")
    page.get_by_role("button", name="Send to all").click()

    # When each panel's text grew, by look. Streaming side by side means the panels' growth interleaves: one panel
    # grows after the other started and before it finished. (Not "both grew since the last look": on a slow machine
    # one decoding step can take longer than a look, and a render may carry only one panel's token of that step.)
    grew_at: list[list[int]] = [[], []]
    previous = ["", ""]
    look = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not interleaved(grew_at):
        texts = panel_texts(page)
        if len(texts) == 2:
            for index, (text, before) in enumerate(zip(texts, previous, strict=True)):
                if len(text) > len(before):
                    grew_at[index].append(look)
            previous = texts
        look += 1
        time.sleep(0.3)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "compare-streaming.png", full_page=True)
    assert interleaved(grew_at), f"both panels must stream at once; growth by look {grew_at}, saw {previous}"

    page.wait_for_function("document.querySelectorAll('.bot').length >= 2", timeout=120_000)  # both answered
    page.screenshot(path=ARTIFACTS / "compare-done.png", full_page=True)
    page.close()


def interleaved(grew_at: list[list[int]]) -> bool:
    """Whether each panel grew at some look strictly inside the span of the other's growth."""
    first, second = grew_at
    return (
        len(first) >= 2 and len(second) >= 2
        and any(first[0] < look < first[-1] for look in second)
        and any(second[0] < look < second[-1] for look in first)
    )  # fmt: skip


def test_changing_a_panel_model_is_used(browser: Browser, app_url: str) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(app_url)
    model = page.get_by_label("Panel 2 model")
    model.wait_for()
    page.wait_for_function("document.querySelector('input[aria-label=\"Panel 2 model\"]').value === 'base'")
    model.fill("no-such-adapter")
    model.press("Enter")
    page.get_by_label("Your question").fill("Hello")
    page.get_by_role("button", name="Send to all").click()
    error = page.get_by_text("model 'no-such-adapter'")
    error.wait_for(timeout=120_000)
    page.screenshot(path=ARTIFACTS / "compare-bad-model.png", full_page=True)
    assert page.get_by_text("does not exist").count() >= 1
    page.close()


def type_slider_value(page: Page, name: str, default: str, value: str) -> None:
    """Type a slider's value into its number box, as a user would (filling the range input was not always taken,
    Gradio 6.31), and type it again if the slider did not take it: on a busy machine a value typed just after the
    accordion opened was once dropped (the slider stayed at its default). Three tries, then the test fails."""
    number, slider = page.get_by_label(f"number input for {name}"), page.get_by_label(f"range slider for {name}")
    expect(number).to_have_value(default)  # mounted
    for attempt in range(3):
        number.fill(value)
        number.press("Tab")
        try:
            expect(slider).to_have_value(value, timeout=5_000)
            return
        except AssertionError:
            if attempt == 2:
                raise


def test_arena_round_vote_reveal_and_leaderboard(browser: Browser, app_url: str) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(app_url)
    page.get_by_role("tab", name="Arena").click()
    page.get_by_label("support", exact=True).check()
    expect(page.get_by_label("base model + support persona", exact=True)).to_be_checked()  # the support pool
    page.get_by_label("base model", exact=True).check()
    page.get_by_label("base model + support persona + RAG(support)").uncheck()
    page.get_by_text("Sampling (both models)").click()
    for name, default, value in (("Temperature", "0.7", "0"), ("Max tokens", "256", "32")):
        type_slider_value(page, name, default, value)
    page.get_by_label("Your prompt").fill("How do I check how much data I have used?")
    page.get_by_role("button", name="New round").click()

    a_better = page.get_by_role("button", name="A is better")
    expect(a_better).to_be_enabled(timeout=120_000)  # both answers are done
    support = Domain(name="support", persona="support", adapter="support", knowledge_base="support")
    labels = [Setup.parse(spec, support, temperature=0.0, max_tokens=32, **RECOMMENDED).label
              for spec in ("base", "base+persona")]  # fmt: skip
    assert all(page.get_by_text(label).count() == 0 for label in labels), "no identity before the vote"
    answers = panel_texts(page)  # the Compare tab's panels are empty: these are Model A's and Model B's
    assert len(answers) == 2 and all(text.strip() and "⚠️" not in text for text in answers), answers
    a_better.click()
    expect(page.get_by_text("Vote saved")).to_be_visible(timeout=30_000)
    expect(a_better).to_be_disabled()
    revealed = page.get_by_text("Model A was").inner_text() + page.get_by_text("Model B was").inner_text()
    assert all(label in revealed for label in labels), revealed
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "arena-voted.png", full_page=True)

    page.get_by_role("tab", name="Leaderboard").click()
    expect(page.get_by_text("1 vote(s)")).to_be_visible(timeout=60_000)
    for label in labels:
        row = page.get_by_role("row").filter(has_text=label).first  # the leaderboard comes before the win rates
        cells = row.inner_text().split("\n")
        assert cells[1] == label and cells[-1] == "1", f"one vote each: {cells}"
    page.screenshot(path=ARTIFACTS / "leaderboard.png", full_page=True)
    page.close()


def test_code_block_shows_html_literally_and_copies_raw(
    browser: Browser, fake_server: FakeOpenAI, fake_app: str
) -> None:
    """A scripted answer with HTML in a code block and outside it: the code block shows `<b>` as text, nothing
    outside it renders as a tag, and the message's copy button copies the code block's raw text."""
    fake_server.script("base", "Use bold like this:\n```html\n<b>bold</b>\n```\nNot <b>here</b>.")
    context = browser.new_context(
        viewport={"width": 1280, "height": 900}, permissions=["clipboard-read", "clipboard-write"]
    )
    page = context.new_page()
    page.goto(fake_app)
    page.get_by_label("Panel 1 model").wait_for()
    page.wait_for_function("document.querySelector('input[aria-label=\"Panel 1 model\"]').value === 'base'")
    page.get_by_label("Your question").fill("How do I write bold in HTML?")
    page.get_by_role("button", name="Send to all").click()
    code = page.locator(".bot code").first
    expect(code).to_have_text("<b>bold</b>", timeout=30_000)
    bot = page.locator(".bot").first
    assert bot.locator("b").count() == 0, "no <b> element may come out of the model's text"
    assert "Not <b>here</b>." in bot.inner_text(), "outside the code block the tag shows as text"
    page.screenshot(path=ARTIFACTS / "compare-code-block.png", full_page=True)
    bot.hover()
    page.get_by_label("Copy message").nth(1).click()  # the first copies the question, the second this answer
    copied = page.evaluate("navigator.clipboard.readText()")
    assert "```html\n<b>bold</b>\n```" in copied, copied
    context.close()


EVIL = (
    '<script>window.leaked = 1</script> <img src="/leak-img" onerror="window.leaked = 2"> '
    "![x](http://127.0.0.1:{port}/leak) [click](http://127.0.0.1:{port}/leak-link)"
)


def test_untrusted_text_stays_inert(
    browser: Browser, fake_server: FakeOpenAI, server_settings: Settings, tmp_path: Path
) -> None:
    """Hostile text from the model and from a knowledge-base document: no script runs, no tag renders, and the image
    that would call home is never fetched (the scripted server counts every request it gets)."""
    evil = EVIL.format(port=fake_server.port)
    kb = tmp_path / "kb" / "support"
    kb.mkdir(parents=True)
    (kb / "evil.md").write_text(f"# Plans <b>bold</b>\nSource: a hostile upload\n\nAcme Unlimited is $45. {evil}\n")
    settings = server_settings.model_copy(
        update={"paths": server_settings.paths.model_copy(update={"kb": tmp_path / "kb", "data": tmp_path / "data"})}
    )
    fake_server.script("base", f"Sure. {evil}")
    with VoteStore.in_folder(tmp_path) as store:
        demo = build_app(settings, ServingClient(fake_server.base_url, timeout_s=10), store=store)
        with launched(demo) as url:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url)
            page.get_by_label("Panel 1 model").wait_for()
            page.wait_for_function("document.querySelector('input[aria-label=\"Panel 1 model\"]').value === 'base'")
            page.get_by_label("RAG").first.check()
            page.get_by_label("Your question").fill("How much is Acme Unlimited?")
            page.get_by_role("button", name="Send to all").click()
            expect(page.get_by_text("Sure.").first).to_be_visible(timeout=30_000)
            page.get_by_text("Retrieved passages").first.click()
            expect(page.get_by_text("a hostile upload").first).to_be_visible(timeout=30_000)
            page.wait_for_timeout(1500)  # give any image or script the chance to load
            page.screenshot(path=ARTIFACTS / "compare-inert.png", full_page=True)
            assert page.evaluate("window.leaked") is None, "no script or event handler from the text ran"
            assert page.locator("img[src*='leak'], img[onerror], script:text('leaked')").count() == 0
            assert page.locator("a[href*='leak']").count() == 0, "no link from the text is clickable"
            assert "<script>window.leaked" in page.locator(".bot").first.inner_text(), "the text is shown as text"
            page.close()
    assert not [hit for hit in fake_server.hits if "leak" in hit], f"the page fetched {fake_server.hits}"
