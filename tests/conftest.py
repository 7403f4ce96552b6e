"""Shared fixtures: a real vLLM server on a free loopback port (once per session), its settings, and the whole
Gradio app on it (once per test module) with a gradio_client to drive it."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import gradio as gr
import pytest
from gradio_client import Client

from app.config import Settings, load_settings
from app.model_prep import DEFAULT_OUT, prepare
from app.serving.client import ServingClient
from app.serving.process import VLLMServer
from app.ui import build_app

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


@pytest.fixture(scope="module")
def ui_client(vllm_server: VLLMServer, server_settings: Settings) -> Iterator[Client]:
    """The whole app (every tab) on a free port, wired to the session's vLLM server."""
    demo: gr.Blocks = build_app(server_settings, ServingClient(vllm_server.base_url))
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield Client(f"http://127.0.0.1:{port}/", verbose=False)
    finally:
        demo.close()
