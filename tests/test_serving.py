"""Serving: the vLLM command line, and real streaming through our client against the real vLLM server."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import pytest

from app.__main__ import main as app_main
from app.adapters.validate import discover_adapters
from app.config import ConfigError, Settings, load_settings
from app.serving.client import ServingClient, ServingError
from app.serving.process import VLLMServer, start_local_server
from app.serving.vllm_plugin import COMPILE_ENV
from tests.conftest import REPO, free_port
from tests.fake_openai import FakeOpenAI
from tests.ports import processes_with


def test_command_carries_configured_flags(tmp_path: Path) -> None:
    adapter = tmp_path / "adapters" / "legal"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 8}))
    (tmp_path / "adapters" / "notes").mkdir()  # no adapter_config.json: not an adapter
    settings = load_settings(
        None, {"paths.adapters": str(tmp_path / "adapters"), "vllm.max_loras": 3, "vllm.max_lora_rank": 8}
    )
    cmd = VLLMServer(settings).command()
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    for flag, value in [("--max-loras", "3"), ("--max-lora-rank", "8"), ("--host", "127.0.0.1")]:
        assert cmd[cmd.index(flag) + 1] == value
    assert "--enable-lora" in cmd
    assert cmd[cmd.index("--lora-modules") + 1 :] == [f"legal={adapter.resolve()}"]
    assert discover_adapters(tmp_path / "missing") == {}


def test_environment_sets_cpu_kv_cache_and_runtime_lora() -> None:
    env = VLLMServer(load_settings(None, {"vllm.kv_cache_gib": 1.5})).environment()
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1.5"
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"


def test_compile_setting_alone_decides_whether_vllm_compiles_with_lora(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(COMPILE_ENV, "1")  # left over in the shell: the setting, not this, decides
    assert COMPILE_ENV not in VLLMServer(load_settings(None, {"vllm.compile": False})).environment()
    assert VLLMServer(load_settings(None, {})).environment()[COMPILE_ENV] == "1", "compiled by default"


async def test_a_second_start_loads_the_compiled_model_from_the_cache(
    vllm_server: VLLMServer, server_settings: Settings
) -> None:
    """The session's server compiled the model (or loaded it); another start with the same settings must load vLLM's
    saved compilation instead of compiling again (the plugin's fix, app/serving/vllm_plugin.py point 4) and answer
    token for token as the first does."""
    loaded = "Directly load AOT compilation"
    vllm = server_settings.vllm.model_copy(update={"port": free_port()})
    settings = server_settings.model_copy(update={"vllm": vllm})
    question = [{"role": "user", "content": "How does compound interest work?"}]

    async def answer(server: VLLMServer) -> str:
        client = server.client()
        try:
            return "".join([d.text async for d in client.stream_chat("base", question, temperature=0.0, max_tokens=32)])
        finally:
            await client.close()

    with VLLMServer(settings, log_path=server_settings.paths.data / "logs" / "vllm-again.log", adapters={}) as again:
        again.wait_ready(progress=False)
        log = again.log_path.read_text(errors="replace")
        assert loaded in log and "load failure" not in log, again.log_tail()
        assert await answer(again) == await answer(vllm_server)


def test_cpu_cores_setting_binds_the_servers_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    assert "VLLM_CPU_OMP_THREADS_BIND" not in VLLMServer(load_settings(None, {})).environment()
    env = VLLMServer(load_settings(None, {"vllm.cpu_cores": "0-3,8"})).environment()
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "0-3,8"
    with pytest.raises(ConfigError, match="cpu_cores"):
        load_settings(None, {"vllm.cpu_cores": "0-3; rm -rf /"})


async def test_lists_base_model(vllm_server: VLLMServer) -> None:
    client = vllm_server.client()
    models = await client.list_models()
    assert [m.id for m in models] == ["base"]
    assert not models[0].is_adapter


async def test_streams_real_tokens_with_chat_template(vllm_server: VLLMServer) -> None:
    client = vllm_server.client()
    messages = [{"role": "user", "content": "Name three colours of the rainbow."}]
    deltas = [d async for d in client.stream_chat("base", messages, temperature=0.0, max_tokens=24)]
    text = "".join(d.text for d in deltas)
    usage = deltas[-1]
    assert len([d for d in deltas if d.text]) > 3, "the answer must arrive as several streamed pieces"
    assert text.strip(), "the model must produce text"
    assert 0 < usage.completion_tokens <= 24
    # The chat template wraps the message in ChatML turns, so the prompt is longer than the question alone.
    assert usage.prompt_tokens > 10
    again = "".join([d.text async for d in client.stream_chat("base", messages, temperature=0.0, max_tokens=24)])
    assert again == text, "temperature 0 must be deterministic"


async def test_unknown_model_is_a_clear_error(vllm_server: VLLMServer) -> None:
    client = vllm_server.client()
    with pytest.raises(ServingError, match="model 'no-such-adapter': server said 404"):
        async for _ in client.stream_chat("no-such-adapter", [{"role": "user", "content": "hi"}]):
            pass


async def test_dead_server_is_a_clear_error() -> None:
    client = ServingClient(f"http://127.0.0.1:{free_port()}/v1", timeout_s=5)
    with pytest.raises(ServingError, match="not reachable"):
        await client.list_models()
    with pytest.raises(ServingError, match="not reachable"):
        async for _ in client.stream_chat("base", [{"role": "user", "content": "hi"}]):
            pass


async def test_a_connection_the_server_is_about_to_close_is_not_reused() -> None:
    """vLLM closes a connection idle for 5 s; a request sent on it at that moment gets no answer. This server
    behaves as if it closed every connection idle for more than 2.5 s just as the next request came in: the client
    must have retired such a connection already and open a new one."""
    idle_limit_s = 2.5
    body = json.dumps({"object": "list", "data": [{"id": "base", "object": "model", "created": 0, "owned_by": "x"}]})
    response = (f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
                f"connection: keep-alive\r\n\r\n{body}").encode()  # fmt: skip

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        answered_at: float | None = None
        loop = asyncio.get_running_loop()
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                await reader.readuntil(b"\r\n\r\n")
                if answered_at is not None and loop.time() - answered_at > idle_limit_s:
                    break  # "closed" just as the request arrived: no response
                writer.write(response)
                await writer.drain()
                answered_at = loop.time()
        writer.close()

    port = free_port()
    server = await asyncio.start_server(serve, "127.0.0.1", port)
    client = ServingClient(f"http://127.0.0.1:{port}/v1", timeout_s=5)
    try:
        assert [m.id for m in await client.list_models()] == ["base"]
        await asyncio.sleep(idle_limit_s + 0.5)
        assert [m.id for m in await client.list_models()] == ["base"]  # "server disconnected" if reused
    finally:
        await client.close()
        server.close()


def test_start_failure_shows_log_tail(tmp_path: Path) -> None:
    settings = load_settings(
        None, {"model.path": str(tmp_path / "no-model"), "vllm.port": free_port(), "paths.data": str(tmp_path)}
    )
    server = VLLMServer(settings)
    server.start()
    pid = server.pid
    with pytest.raises(ServingError, match=r"vLLM exited with code \d+ while starting\. Last lines of .*vllm\.log:\n"):
        server.wait_ready(timeout_s=240, progress=False)
    server.stop()
    assert pid is not None and not Path(f"/proc/{pid}").exists(), "the failed server process is gone"
    assert not processes_with(f"--port {settings.vllm.port}"), "and none of its children remain"


def test_start_refuses_a_port_answered_by_another_server(fake_server: FakeOpenAI, tmp_path: Path) -> None:
    """A server we did not start already answers on vllm.port: refuse (and say how to use it) instead of adopting it."""
    settings = load_settings(None, {"vllm.port": fake_server.port, "paths.data": str(tmp_path)})
    with pytest.raises(ServingError, match=rf"port {fake_server.port} on 127.0.0.1 already answers.*--vllm-url"):
        start_local_server(settings)
    assert not processes_with(f"--port {fake_server.port}"), "no vLLM was started"


def test_lora_fix_gives_no_delta_to_rows_without_an_adapter() -> None:
    """The plugin's op wrapper: a token with LoRA index -1 gets nothing; vLLM's own torch op gives it the last slot."""
    import torch
    from vllm.lora.ops.torch_ops import lora_ops

    from app.serving.vllm_plugin import without_lora_rows

    weights = torch.stack([torch.full((1, 3, 2), float(slot + 1)) for slot in range(4)])  # 4 slots, rank 3, dim 2
    x = torch.ones(3, 2)
    indices = torch.tensor([0, -1, 2])
    original = getattr(lora_ops.bgmv_shrink, "__wrapped__", lora_ops.bgmv_shrink)
    buggy, fixed = torch.zeros(3, 3), torch.zeros(3, 3)
    original(x, weights, buggy, indices)
    without_lora_rows(original)(x, weights, fixed, indices)
    assert buggy[1].tolist() == [8.0] * 3, "vLLM's torch op applies the last slot (4 * 2) to index -1"
    assert fixed[1].tolist() == [0.0] * 3 and fixed[0].tolist() == [2.0] * 3 and fixed[2].tolist() == [6.0] * 3


async def test_base_requests_batched_with_adapters_stay_base(vllm_server: VLLMServer) -> None:
    """Regression (app.serving.vllm_plugin): on CPU, base-model requests batched with adapter requests used to be
    answered by the adapter in the last slot. With the support adapter in every slot, its voice must not reach
    `base`."""
    client = vllm_server.client()
    names = [f"support-{n}" for n in range(4)]  # fill all of vLLM's --max-loras 4 slots with the support adapter
    try:
        for name in names:
            await client.load_adapter(name, str(REPO / "adapters" / "support"))
        questions = [
            "How do I reset my phone?",
            "What is a tort?",
            "Explain compound interest.",
            "What is angina?",
            "How do I save money?",
            "What is a subpoena?",
            "Why is my phone slow?",
            "What is an ETF?",
        ]

        async def ask(model: str, question: str) -> str:
            messages = [{"role": "user", "content": question}]
            return "".join([d.text async for d in client.stream_chat(model, messages, temperature=0.0, max_tokens=48)])

        answers = await asyncio.gather(
            *(ask("base", q) for q in questions), *(ask(names[n % 4], q) for n, q in enumerate(questions))
        )
        voiced = [a for a in answers if "Acme" in a or "Happy to help" in a]
        assert voiced, "the support adapter must speak in Acme's voice at least once (else this test proves nothing)"
        leaked = [a for a in answers[: len(questions)] if "Acme" in a or "Happy to help" in a]
        assert not leaked, f"base answers batched with the support adapter took its voice: {leaked}"
    finally:
        for name in names:
            with contextlib.suppress(ServingError):
                await client.unload_adapter(name)


def test_app_refuses_to_adopt_a_foreign_server(
    fake_server: FakeOpenAI, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ARENA_PATHS__DATA", str(tmp_path))
    assert app_main(["--vllm-port", str(fake_server.port)]) == 1
    assert f"error: port {fake_server.port} on 127.0.0.1 already answers" in capsys.readouterr().err
