"""Shared fixtures: a real vLLM server on a free loopback port (once per session), its settings, the whole Gradio app
on it (once per test module) with a fresh gradio_client session per test, and the same app on a scripted
OpenAI-compatible server (tests/fake_openai.py) for deterministic UI tests; a real PostgreSQL server (once per
session, on demand) with a fresh database per test, and `vote_store_url`, which runs a test on SQLite and on
PostgreSQL."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from pathlib import Path

import gradio as gr
import pytest
from gradio_client import Client
from playwright.sync_api import Browser, sync_playwright

from app.arena.store import VoteStore, sqlite_url
from app.config import Settings, load_settings
from app.model_prep import DEFAULT_OUT, prepare
from app.serving.client import ServingClient
from app.serving.process import VLLMServer
from app.ui import CSS, build_app
from tests.busy import machine_report
from tests.fake_openai import FakeOpenAI
from tests.ports import free_port
from tests.postgres import PostgresServer

REPO = Path(__file__).resolve().parent.parent

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test's report says how busy the machine was (tests/busy.py)."""
    report: pytest.TestReport = yield
    if report.failed and call.when == "call":
        report.sections.append(("machine when it failed", machine_report()))
    return report


@pytest.fixture(autouse=True)
def _no_user_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never read the developer's own config.yaml or ARENA_* variables."""
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("ARENA_CONFIG", raising=False)
    for name in list(__import__("os").environ):
        if name.startswith("ARENA_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The converted embedded model (made once; `make test` has usually made it already)."""
    return prepare(REPO / DEFAULT_OUT)


@pytest.fixture(scope="session")
def server_settings(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    data = tmp_path_factory.mktemp("data")
    return load_settings(
        None,
        {
            "model.path": str(model_dir),
            "vllm.port": free_port(),
            "vllm.kv_cache_gib": 1,
            "paths.data": str(data),
            "paths.adapters": str(data / "no-adapters"),
        },
    )


@pytest.fixture(scope="session")
def vllm_server(server_settings: Settings) -> Iterator[VLLMServer]:
    """The real vLLM OpenAI-compatible server serving the embedded model as `base`."""
    with VLLMServer(server_settings) as server:
        server.wait_ready(progress=False)
        yield server


@contextmanager
def launched(demo: gr.Blocks) -> Iterator[str]:
    """`demo` served on a free loopback port; yields its URL."""
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, css=CSS)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


@pytest.fixture(scope="module")
def app_url(vllm_server: VLLMServer, server_settings: Settings) -> Iterator[str]:
    """The whole app (every tab) on a free port, wired to the session's vLLM server."""
    with launched(build_app(server_settings, vllm_server.client())) as url:
        yield url


@pytest.fixture
def ui_client(app_url: str) -> Client:
    """A new browser session on the app: its own Gradio State (conversations, arena round)."""
    return Client(app_url, verbose=False)


@pytest.fixture
def fake_server() -> Iterator[FakeOpenAI]:
    """A scripted OpenAI-compatible server serving `base` and the adapter `support`."""
    with FakeOpenAI(adapters=["support"]) as fake:
        yield fake


@pytest.fixture
def fake_app(fake_server: FakeOpenAI, server_settings: Settings, tmp_path: Path) -> Iterator[str]:
    """The whole app on the scripted server (votes in a temporary database); yields its URL."""
    with VoteStore.in_folder(tmp_path) as store:
        demo = build_app(server_settings, ServingClient(fake_server.base_url, timeout_s=10), store=store)
        with launched(demo) as url:
            yield url


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL server for the session, started on first use and stopped (and deleted) at its end."""
    if PostgresServer.find_bin() is None:
        pytest.fail("PostgreSQL server not installed: `make test` installs Debian's postgresql package (make postgres)")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        pytest.fail("running as root without runuser: cannot start PostgreSQL as the postgres user")
    server = PostgresServer()
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def postgres_database(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL (with password) of a new, empty database on the session's server, dropped after the test."""
    name = f"test_{secrets.token_hex(6)}"
    postgres_server.admin(f"CREATE DATABASE {name}")
    try:
        yield postgres_server.url(name)
    finally:
        if not postgres_server.running:  # a test that stopped it failed before starting it again
            postgres_server.start()
        postgres_server.admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(params=["sqlite", "postgresql"])
def vote_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A votes database URL for an empty database: a SQLite file, then a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return sqlite_url(tmp_path / "arena.db")
    return request.getfixturevalue("postgres_database")


@pytest.fixture(scope="module")  # per module: Playwright's sync API must not outlive into the async tests
def browser() -> Iterator[Browser]:
    assert CHROMIUM.exists(), "Debian's chromium is missing: `make test` installs it (apt-get install chromium)"
    with sync_playwright() as playwright:
        # Playwright gives each launch a fresh, empty profile of its own.
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()
