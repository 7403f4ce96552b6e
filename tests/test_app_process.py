"""`python -m app` as a user runs it: starts vLLM + UI, serves answers, and Ctrl-C leaves no vLLM process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from gradio_client import Client

from app.serving.client import server_is_up
from app.serving.process import VLLMServer, port_is_answered
from tests.conftest import REPO, free_port
from tests.panels import panel
from tests.ports import group_members, processes_with

UI_START_S = 300


def page_is_up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class App:
    """A running `python -m app`; its output goes to a file (a pipe nobody reads can fill up and block it)."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: signal.Signals, timeout: float) -> int:
        """Ctrl-C (SIGINT) or SIGTERM, then its exit status; fails with its output's tail if it does not exit."""
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            tail = self.output()[-3000:]
            pytest.fail(f"the app did not exit within {timeout} s of {sig.name}; its output ends:\n{tail}")


@contextmanager
def running_app(args: list[str], env: dict[str, str], log: Path) -> Iterator[App]:
    ui_port = free_port()
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "app", "--port", str(ui_port), *args],
            cwd=REPO,
            env={**os.environ, **env},
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    app = App(process, ui_port, log)
    try:
        deadline = time.monotonic() + UI_START_S
        while not page_is_up(f"http://127.0.0.1:{ui_port}/"):
            assert process.poll() is None, app.output()
            assert time.monotonic() < deadline, f"the UI did not come up within {UI_START_S} s:\n{app.output()}"
            time.sleep(1)
        yield app
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def ask(ui_port: int) -> str:
    """Send one question to both panels (base model, no RAG); return the first panel's answer."""
    one = panel(tokens=16, kb=None)
    chat, *_ = Client(f"http://127.0.0.1:{ui_port}/", verbose=False).predict(
        "Say hello.", "support", 2, *one * 4, api_name="/answer_all"
    )
    return str(chat[-1]["content"])


@pytest.fixture(scope="module")
def app_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data folder for both app runs, so the second reuses the RAG indexes the first built."""
    return tmp_path_factory.mktemp("app-data")


def test_app_uses_external_server(vllm_server: VLLMServer, app_data: Path, tmp_path: Path) -> None:
    env = {"ARENA_PATHS__DATA": str(app_data), "ARENA_VLLM__API_KEY": vllm_server.api_key}
    with running_app(["--vllm-url", vllm_server.base_url], env, tmp_path / "app.log") as app:
        assert "⚠️" not in ask(app.port)
        assert app.stop(signal.SIGINT, timeout=60) in (0, -signal.SIGINT, 130)
    assert server_is_up(vllm_server.base_url, vllm_server.api_key), (
        "stopping the app must not stop a server it did not start"
    )


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_stopping_the_app_stops_every_vllm_process(
    stop: signal.Signals, model_dir: Path, app_data: Path, tmp_path: Path
) -> None:
    vllm_port = free_port()
    env = {
        "ARENA_PATHS__DATA": str(app_data),
        "ARENA_VLLM__KV_CACHE_GIB": "1",
        "ARENA_PATHS__ADAPTERS": str(tmp_path / "none"),
    }
    args = ["--model", str(model_dir), "--vllm-port", str(vllm_port)]
    with running_app(args, env, tmp_path / "app.log") as app:
        marker = f"--port {vllm_port}"
        (api_server,) = processes_with(marker)  # the app started its own vLLM server
        assert len(group_members(api_server)) >= 2, "its API server and engine core share a process group"
        assert "⚠️" not in ask(app.port)
        app.stop(stop, timeout=90)
        assert "vLLM ready" in app.output(), app.output()
    deadline = time.monotonic() + 30
    while group_members(api_server) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not group_members(api_server), "no vLLM process (API server, engine core, worker) may outlive the app"
    assert not port_is_answered("127.0.0.1", vllm_port), "nothing listens on its port any more"
