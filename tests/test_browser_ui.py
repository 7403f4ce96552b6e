"""What a user sees, in headless Chromium on the scripted server: Enter sends and the answers come into view, the seed
stays blank, Stop marks what it stopped and Export keeps it, unloading asks first, the Eval chart draws bars, the
Arena's pool offers what the server serves and keeps the user's ticks, and a phone shows every tab. Screenshots land
in test-artifacts/."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.conftest import REPO
from tests.fake_openai import FakeOpenAI

ARTIFACTS = REPO / "test-artifacts"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


@pytest.fixture
def page(browser: Browser, fake_app: str) -> Iterator[Page]:
    page = browser.new_page(viewport=DESKTOP)
    page.goto(fake_app)
    page.get_by_label("Panel 1 model").wait_for()
    page.wait_for_function("document.querySelector('input[aria-label=\"Panel 1 model\"]').value === 'base'")
    yield page
    page.close()


def choose(page: Page, label: str, value: str) -> None:
    """Pick `value` in the Gradio dropdown labelled `label`."""
    box = page.get_by_label(label)
    box.click()
    page.get_by_role("option", name=value, exact=True).click()


def test_enter_sends_and_the_answers_come_into_view(page: Page, fake_server: FakeOpenAI) -> None:
    fake_server.script("base", "Acme Unlimited is $45 a month.", chunks=6, delay_s=0.5)  # 3 s of streaming
    question = page.get_by_label("Your question")
    question.fill("How much is Acme Unlimited?")
    question.press("Enter")
    answer = page.locator(".bot").first
    expect(page.locator("#panels")).to_be_in_viewport()  # at 1280x800 the panels come into view as they start
    assert "a month." not in page.locator("#panels").inner_text(), "in view while the answers stream, not after"
    expect(answer).to_contain_text("Acme Unlimited is $45 a month.", timeout=30_000)
    expect(question).to_have_value("How much is Acme Unlimited?"), "Enter sent it instead of adding a line"
    expect(answer).to_be_in_viewport()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "compare-after-enter.png")


def test_the_seed_stays_blank_after_opening_the_sampling_settings(page: Page, fake_server: FakeOpenAI) -> None:
    page.get_by_text("System prompt and sampling").first.click()
    seed = page.get_by_label("Seed (blank = random)").first
    expect(seed).to_be_visible()
    expect(seed).to_have_value("")
    page.get_by_label("Your question").fill("Hello")
    page.get_by_role("button", name="Send to all").click()
    expect(page.locator(".bot").first).to_contain_text("OK.", timeout=30_000)
    expect(seed).to_have_value("")
    assert all("seed" not in request for request in fake_server.requests), "blank means random: no seed is sent"


def test_stop_marks_unfinished_panels_and_export_keeps_the_finished_ones(page: Page, fake_server: FakeOpenAI) -> None:
    fake_server.script("base", "A very slow answer that goes on and on. " * 10, chunks=40, delay_s=0.5)
    fake_server.script("support", "Thanks for asking! A quick answer.")
    choose(page, "Panel 2 model", "support")
    page.get_by_label("Your question").fill("Tell me everything.")
    page.get_by_role("button", name="Send to all").click()
    expect(page.locator(".bot").nth(1)).to_contain_text("A quick answer.", timeout=30_000)
    expect(page.locator(".bot").first).to_contain_text("A very slow", timeout=30_000)
    page.get_by_role("button", name="Stop").click()
    expect(page.locator(".bot").first).to_contain_text("⏹ stopped", timeout=30_000)
    expect(page.locator(".bot").nth(1)).not_to_contain_text("stopped")
    with page.expect_download() as download:
        page.get_by_role("button", name="Export JSON").click()
        page.locator("a[download]").last.click()
    record = json.loads(download.value.path().read_text())
    first, second = record["panels"]
    assert first["stopped"] and not first["finished"] and first["answer"].startswith("A very slow")
    assert second["finished"] and second["answer"] == "Thanks for asking! A quick answer."
    page.screenshot(path=ARTIFACTS / "compare-stopped.png")


def test_unloading_an_adapter_asks_first(page: Page, fake_server: FakeOpenAI) -> None:
    page.get_by_role("tab", name="Adapters").click()
    target = page.get_by_label("Adapter to unload")
    expect(target).to_have_value("")
    page.get_by_role("button", name="Unload…").click()
    expect(page.get_by_text("Pick the adapter to unload first.")).to_be_visible()
    choose(page, "Adapter to unload", "support")
    page.get_by_role("button", name="Unload…").click()
    expect(page.get_by_text("from the server? Panels and arena rounds using it fail")).to_be_visible()
    assert "support" in fake_server.adapters, "the first click only asks"
    page.screenshot(path=ARTIFACTS / "adapters-confirm.png", full_page=True)
    page.get_by_role("button", name="Yes, unload it").click()
    expect(page.get_by_text("Unloaded")).to_be_visible(timeout=30_000)
    assert "support" not in fake_server.adapters


def test_the_eval_chart_draws_one_bar_per_row(page: Page, fake_server: FakeOpenAI) -> None:
    fake_server.script("base", "Acme Unlimited is $45/month, $40/month with autopay.")  # terms: bars above 0
    page.get_by_role("tab", name="Eval").click()
    page.get_by_label("support").check()
    page.get_by_label("finance").uncheck()
    for spec in ("base+rag", "base+persona+rag", "adapter+persona", "adapter+persona+rag"):
        page.get_by_label(spec, exact=True).uncheck()
    page.get_by_label("number input for Questions per domain").fill("1")
    page.get_by_role("button", name="Run eval").click()
    expect(page.locator("#eval-summary")).to_contain_text("base+persona", timeout=120_000)
    bars = page.locator("#eval-chart .mark-rect path")
    expect(bars).to_have_count(2, timeout=30_000)  # one per domain x configuration, not values as axis labels
    ticks = page.locator("#eval-chart text").evaluate_all("nodes => nodes.map(node => node.textContent)")
    assert {"0.0", "0.4", "1.0"} <= set(ticks), f"a numeric value axis, not the values as labels: {ticks}"
    page.screenshot(path=ARTIFACTS / "eval-chart.png", full_page=True)


def test_arena_enter_starts_a_round(page: Page, fake_server: FakeOpenAI) -> None:
    page.get_by_role("tab", name="Arena").click()
    page.get_by_label("support", exact=True).check()
    prompt = page.get_by_label("Your prompt")
    fake_server.script("base", "Yes, you can keep your number.", chunks=6, delay_s=0.5)  # 3 s of streaming
    prompt.fill("Can I keep my number?")
    prompt.press("Enter")
    a_better = page.get_by_role("button", name="A is better")
    expect(page.locator("#arena-answers")).to_be_in_viewport(ratio=0.9)  # the answers come into view as they start
    expect(a_better).to_be_disabled(), "in view while the answers stream, not after"
    expect(a_better).to_be_enabled(timeout=30_000)
    expect(page.locator(".bot").last).to_be_in_viewport()


def test_a_slow_page_load_keeps_the_arena_ticks(browser: Browser, fake_app: str, fake_server: FakeOpenAI) -> None:
    """The page asks the server for its adapters when it loads; on a busy server that answer can come after the
    user ticked the Arena's pool, and it must not reset the ticks (it once did: a round then drew from defaults)."""
    fake_server.adapters = ["finance", "legal", "medical", "support"]  # the page's guess is right: nothing to narrow
    fake_server.script("base", "A scripted answer.", delay_s=0.05)
    fake_server.models_open.clear()  # the server holds its answers to the page's load events
    page = browser.new_page(viewport=DESKTOP)
    page.goto(fake_app)
    page.get_by_role("tab", name="Arena").click()
    for _ in range(600):  # until a load event waits on the server
        if fake_server.model_lists:
            break
        page.wait_for_timeout(50)
    assert fake_server.model_lists, "the page asked the server for its adapters"
    ticks = {"base model": True, "base model + finance persona": True, "finance adapter + finance persona": False,
             "base model + finance persona + RAG(finance)": False}  # fmt: skip
    for label, ticked in ticks.items():
        page.get_by_label(label, exact=True).set_checked(ticked)
    fake_server.models_open.set()
    prompt = page.get_by_label("Your prompt")
    prompt.fill("What is a bond?")
    prompt.press("Enter")
    expect(page.get_by_role("button", name="A is better")).to_be_enabled(timeout=30_000)
    for label, ticked in ticks.items():
        assert page.get_by_label(label, exact=True).is_checked() == ticked, f"{label} changed after the page loaded"
    assert {request["model"] for request in fake_server.requests} == {"base"}, "the round drew from the user's ticks"
    page.close()


def test_the_arena_pool_offers_only_served_adapters(page: Page) -> None:
    """The page is built guessing that the opening domain's adapter is served; the scripted server serves only
    `support`, so once loaded the finance pool offers no adapter (a round with it would fail)."""
    page.get_by_role("tab", name="Arena").click()
    expect(page.get_by_label("base model + finance persona", exact=True)).to_be_checked()
    expect(page.get_by_label("finance adapter + finance persona", exact=True)).to_have_count(0)
    page.get_by_label("support", exact=True).check()
    expect(page.get_by_label("support adapter + support persona", exact=True)).to_be_checked()


def test_a_phone_shows_every_tab(browser: Browser, fake_app: str) -> None:
    page = browser.new_page(viewport=PHONE)
    page.goto(fake_app)
    page.get_by_label("Panel 1 model").wait_for()
    for name in ("Compare", "Arena", "Leaderboard", "Adapters", "Eval"):
        expect(page.get_by_role("tab", name=name)).to_be_visible()
    page.get_by_role("tab", name="Leaderboard").click()
    page.screenshot(path=ARTIFACTS / "phone-leaderboard.png", full_page=True)
    page.close()
