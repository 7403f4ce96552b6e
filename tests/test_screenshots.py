"""The screenshots in the README and docs/screenshots/, taken by a real browser on the real app: the real vLLM server
with the four shipped adapters, real RAG, real votes. compare.png, the README's first picture, is the "classic
four-way" preset on the support domain's first example question. `make screenshots` writes them to
docs/screenshots/ (look at them before committing); otherwise they go to test-artifacts/screenshots/. Slow tier:
real answers take minutes."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from app.arena.store import VoteStore
from app.config import Settings
from app.rag import RAGStore, build_indexes
from app.serving.process import VLLMServer
from app.ui import build_app
from tests.conftest import REPO, launched

SHIPPED = ("legal", "medical", "finance", "support")
OUT = Path(os.environ.get("ARENA_SCREENSHOTS") or REPO / "test-artifacts" / "screenshots")


@pytest.fixture(scope="module")
def app_with_adapters(
    vllm_server: VLLMServer, server_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    async def load(names: tuple[str, ...], unload: bool = False) -> None:
        client = vllm_server.client()  # one per event loop: each call runs in its own
        for name in names:
            if unload:
                await client.unload_adapter(name)
            else:
                await client.load_adapter(name, str(REPO / "adapters" / name))

    def run(names: tuple[str, ...], unload: bool = False) -> None:  # Playwright's sync API owns this thread's loop
        with ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, load(names, unload)).result()

    run(SHIPPED)
    rag = RAGStore(server_settings)
    build_indexes(rag)  # as `make run` does before it opens the page: a first RAG answer then does not build them
    try:
        with VoteStore.in_folder(tmp_path_factory.mktemp("shots")) as store:
            demo = build_app(server_settings, vllm_server.client(), rag, store=store)
            with launched(demo) as url:
                yield url
    finally:
        run(SHIPPED, unload=True)


def shot(page: Page, name: str, *, full_page: bool = True) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=OUT / f"{name}.png", full_page=full_page)


@pytest.mark.slow
def test_screenshots_of_every_tab(browser: Browser, app_with_adapters: str) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(app_with_adapters)
    page.get_by_label("Panel 1 model").wait_for()
    expect(page.get_by_label("Your question")).not_to_have_value("", timeout=60_000)  # the page's own set-up is done
    page.get_by_label("Domain").first.click()
    page.get_by_role("option", name="support", exact=True).click()
    expect(page.get_by_label("Your question")).to_have_value(re.compile("Acme"), timeout=30_000)  # domain applied
    page.get_by_label("Preset").click()
    page.get_by_role("option", name="classic four-way").click()
    expect(page.get_by_label("Preset")).to_have_value("classic four-way")
    page.keyboard.press("Escape")  # the option list closed, so the click lands on the button
    page.get_by_role("button", name="Apply preset").click()
    expect(page.get_by_label("Panel 4 model")).to_have_value("support", timeout=30_000)
    page.get_by_role("button", name="Send to all").click()  # the domain's first example: the README's picture
    expect(page.get_by_text("Term check:")).to_have_count(4, timeout=600_000)
    shot(page, "compare")

    page.get_by_role("tab", name="Arena").click()
    page.get_by_label("support", exact=True).check()
    page.get_by_label("Your prompt").fill("Can I keep my number if I switch to Acme?")
    page.get_by_role("button", name="New round").click()
    expect(page.get_by_role("button", name="A is better")).to_be_enabled(timeout=600_000)
    page.get_by_role("button", name="A is better").click()
    expect(page.get_by_text("Vote saved")).to_be_visible(timeout=60_000)
    shot(page, "arena")

    page.get_by_role("tab", name="Leaderboard").click()
    expect(page.get_by_text("1 vote(s)")).to_be_visible(timeout=60_000)
    shot(page, "leaderboard")

    page.get_by_role("tab", name="Adapters").click()
    expect(page.get_by_role("gridcell", name="support", exact=True)).to_be_visible(timeout=60_000)
    shot(page, "adapters")

    page.get_by_role("tab", name="Eval").click()
    page.get_by_role("checkbox", name="support", exact=True).check()
    page.get_by_role("checkbox", name="finance", exact=True).uncheck()
    page.get_by_label("number input for Questions per domain").fill("2")
    page.get_by_label("number input for Answer length (tokens)").fill("96")
    page.get_by_role("button", name="Run eval").click()
    expect(page.locator("#eval-summary")).to_contain_text("adapter+persona+rag", timeout=1_200_000)
    shot(page, "eval")
    page.close()
