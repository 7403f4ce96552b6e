"""Supervision of our own vLLM, for real: kill -9 its API server and the whole process group goes, it comes back,
adapters loaded at run time are served again, and requests that were in flight fail fast with a clear reason; its
per-run API key keeps other local processes out. (Ctrl-C and SIGTERM of the app: tests/test_app_process.py.)"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.config import Settings, load_settings
from app.serving.client import ServingClient, ServingError
from app.serving.process import VLLMServer, start_local_server
from app.serving.supervisor import Supervisor
from tests.conftest import REPO
from tests.ports import free_port, group_members

RESTART_S = 400


@pytest.fixture(scope="module")
def supervised(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Supervisor]:
    tmp_path = tmp_path_factory.mktemp("supervised")
    settings: Settings = load_settings(None, {
        "model.path": str(model_dir), "vllm.port": free_port(), "vllm.kv_cache_gib": 1,
        "paths.data": str(tmp_path), "paths.adapters": str(tmp_path / "no-adapters"),
    })  # fmt: skip
    with Supervisor(start_local_server(settings), interval_s=1.0) as supervisor:
        supervisor.wait_ready()
        yield supervisor
    assert not group_members(supervisor.server.pid or -1), "stopping the supervisor stops every vLLM process"


def wait_for(condition: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout_s:.0f} s"
        time.sleep(0.5)


def test_only_our_clients_can_use_the_server(supervised: Supervisor) -> None:
    server = supervised.server
    body = {"lora_name": "intruder", "lora_path": "/tmp"}
    assert httpx.post(f"{server.base_url}/load_lora_adapter", json=body, timeout=10).status_code == 401
    assert httpx.get(f"{server.base_url}/models", timeout=10).status_code == 401
    models = httpx.get(f"{server.base_url}/models", headers={"Authorization": f"Bearer {server.api_key}"}, timeout=10)
    assert models.status_code == 200
    assert server.api_key not in server.log_path.read_text(), "the key is not in the log"
    assert server.api_key not in " ".join(server.command()), "nor on the command line `ps` shows"
    with pytest.raises(ServingError, match="401: the API key is missing or wrong"):
        asyncio.run(ServingClient(server.base_url).list_models())


async def test_kill_9_of_the_api_server_restarts_it_with_its_adapters(supervised: Supervisor) -> None:
    server: VLLMServer = supervised.server
    client = server.client(timeout_s=30)
    await client.load_adapter("support-live", str(REPO / "adapters" / "support"))
    wait_for(lambda: "support-live" in supervised._runtime, 10, "the supervisor noticing the run-time adapter")
    group = server.pid or 0
    assert len(group_members(group)) >= 2, "the API server and its engine core share one process group"

    messages = [{"role": "user", "content": "Count from 1 to 300, one number per line."}]
    stream = client.stream_chat("support-live", messages, max_tokens=400)
    assert (await anext(stream)).text, "the answer has started streaming"
    os.kill(group, signal.SIGKILL)  # mid-answer: a 400-token answer cannot be done one token after it started
    with pytest.raises(ServingError, match=r"not reachable"):
        async for _ in stream:  # the connection drops: no waiting for the request's timeout
            pass
    assert supervised.health().state != "up" or supervised.health().attempt == 0, "it failed before any restart"
    wait_for(lambda: supervised.health().state == "restarting", 10, "the status saying it restarts")
    assert "restarting (attempt 1)" in supervised.health().describe()
    wait_for(lambda: not group_members(group), 30, "the old engine core and workers going away")
    wait_for(lambda: supervised.health().state == "up", RESTART_S, "the restart")
    assert "restarted after: the server process exited" in supervised.health().describe()
    assert "support-live" in [m.id for m in await client.list_models()], "the run-time adapter is served again"
    answer = "".join([d.text async for d in client.stream_chat("support-live", [{"role": "user", "content": "Hi"}],
                                                                max_tokens=16)])  # fmt: skip
    assert answer.strip()
