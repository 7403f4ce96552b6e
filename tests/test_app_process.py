"""`python -m app` as a user runs it: starts vLLM + UI, serves answers, and Ctrl-C leaves no vLLM process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from gradio_client import Client

from app.serving import VLLMServer, server_is_up
from tests.conftest import REPO, free_port

UI_START_S = 300


def processes_with(fragment: str) -> list[int]:
    """PIDs whose command line contains `fragment` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if fragment in cmdline:
                found.append(int(entry.name))
    return found


def page_is_up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def running_app(args: list[str], env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[str], int]]:
    ui_port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "app", "--port", str(ui_port), *args],
        cwd=REPO,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + UI_START_S
        while not page_is_up(f"http://127.0.0.1:{ui_port}/"):
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            assert time.monotonic() < deadline, f"the UI did not come up within {UI_START_S} s"
            time.sleep(1)
        yield process, ui_port
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def ask(ui_port: int) -> str:
    """Send one question to both panels (base model, no RAG); return the first panel's answer."""
    panel = ["base", [], "none", "", 0.0, 1.0, 16, None, False, None]  # see tests/test_ui.py: panel()
    chat, *_ = Client(f"http://127.0.0.1:{ui_port}/", verbose=False).predict(
        "Say hello.", "support", 2, *panel * 4, api_name="/answer_all"
    )
    return str(chat[-1]["content"])


@pytest.fixture(scope="module")
def app_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data folder for both app runs, so the second reuses the RAG indexes the first built."""
    return tmp_path_factory.mktemp("app-data")


def test_app_uses_external_server(vllm_server: VLLMServer, app_data: Path) -> None:
    with running_app(["--vllm-url", vllm_server.base_url], {"ARENA_PATHS__DATA": str(app_data)}) as (process, port):
        assert "⚠️" not in ask(port)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) in (0, -signal.SIGINT, 130)
    assert server_is_up(vllm_server.base_url), "stopping the app must not stop a server it did not start"


def test_ctrl_c_stops_app_and_its_vllm(model_dir: Path, app_data: Path, tmp_path: Path) -> None:
    vllm_port = free_port()
    env = {"ARENA_PATHS__DATA": str(app_data), "ARENA_VLLM__KV_CACHE_GIB": "1", "ARENA_PATHS__ADAPTERS": str(tmp_path)}
    with running_app(["--model", str(model_dir), "--vllm-port", str(vllm_port)], env) as (process, port):
        marker = f"--port {vllm_port}"
        assert processes_with(marker), "the app must have started its own vLLM server"
        assert "⚠️" not in ask(port)
        process.send_signal(signal.SIGINT)
        process.wait(timeout=90)
        output = process.stdout.read() if process.stdout else ""
        assert "vLLM ready" in output, output
    deadline = time.monotonic() + 30
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not processes_with(marker), "no vLLM process may outlive the app"
    assert not server_is_up(f"http://127.0.0.1:{vllm_port}/v1")
