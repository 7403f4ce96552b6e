"""The client every part of the app talks to the model server through: `ServingClient` wraps `openai.AsyncOpenAI`
for the few calls the app needs (list models, stream a chat completion, load and unload LoRA adapters at run time).
Nothing else in the app talks HTTP to vLLM.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import httpx
import httpx2
import openai
from openai.types.chat import ChatCompletionMessageParam

from app.config import Settings


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


def server_is_up(base_url: str, api_key: str | None = None) -> bool:
    """True when the OpenAI-compatible server at `base_url` lists its models."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        return httpx.get(f"{base_url}/models", headers=headers, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


# vLLM's HTTP server closes a connection idle for 5 s (VLLM_HTTP_TIMEOUT_KEEP_ALIVE), and the OpenAI client (httpx2)
# keeps one for 5 s too: a request sent on a connection as the server closes it fails as "server disconnected".
# Retiring idle connections well before the server does leaves no such race.
CONNECTION_LIMITS = httpx2.Limits(
    max_connections=openai.DEFAULT_CONNECTION_LIMITS.max_connections,
    max_keepalive_connections=openai.DEFAULT_CONNECTION_LIMITS.max_keepalive_connections,
    keepalive_expiry=2.0,
)


class ServingClient:
    """Async client for the app's calls to an OpenAI-compatible (vLLM) server."""

    def __init__(
        self, base_url: str, api_key: str | None = None, timeout_s: float = 120.0, replicas: Sequence[str] = ()
    ) -> None:
        self.base_url = base_url
        # Behind a router, a run-time adapter must be loaded into (and unloaded from) every replica: the router sends
        # each request to one of them.
        self.replicas = list(replicas) or [base_url]
        self.api_key = api_key
        # The OpenAI client insists on a key; a server without one ignores it. There is deliberately no fallback to
        # OPENAI_API_KEY: that key belongs to another service and must not be sent to whatever URL is configured.
        self._client = openai.AsyncOpenAI(
            base_url=base_url,
            api_key=api_key or "EMPTY",
            timeout=timeout_s,
            max_retries=0,
            http_client=openai.DefaultAsyncHttpxClient(limits=CONNECTION_LIMITS),
        )

    @classmethod
    def from_settings(cls, settings: Settings, api_key: str | None = None) -> ServingClient:
        """The client of the server the app uses: pass our own child's per-run key; for an external server
        (vllm.url) the key comes from the environment (ARENA_VLLM__API_KEY, or VLLM_API_KEY)."""
        secret = settings.vllm.api_key.get_secret_value() if settings.vllm.api_key else os.environ.get("VLLM_API_KEY")
        return cls(settings.vllm.base_url, api_key=api_key or secret, timeout_s=settings.ui.request_timeout_s,
                   replicas=settings.vllm.replica_urls)  # fmt: skip

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
        repetition_penalty: float = 1.0,
        frequency_penalty: float = 0.0,
        presence_penalty: float = 0.0,
    ) -> AsyncIterator[ChatDelta]:
        """Stream a chat completion (the server applies the model's chat template) as text deltas, then usage.

        Closing the iterator early (e.g. a Stop button) closes the HTTP stream, which makes vLLM abort the request.
        """
        kwargs: dict[str, Any] = {"seed": seed} if seed is not None else {}
        if repetition_penalty != 1.0:  # vLLM's own sampling parameter, beside the OpenAI ones
            kwargs["extra_body"] = {"repetition_penalty": repetition_penalty}
        if frequency_penalty:
            kwargs["frequency_penalty"] = frequency_penalty
        if presence_penalty:
            kwargs["presence_penalty"] = presence_penalty
        try:
            stream = await self._client.chat.completions.create(
                model=model,
                messages=[cast("ChatCompletionMessageParam", message) for message in messages],
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

    async def count_tokens(self, model: str, messages: Sequence[dict[str, str]]) -> tuple[int, int]:
        """(prompt tokens, the model's context length) for `messages` with the chat template, from vLLM's /tokenize."""
        root = self.base_url.removesuffix("/v1")
        body = {"model": model, "messages": list(messages), "add_generation_prompt": True}
        try:
            result = await self._client.post(f"{root}/tokenize", body=body, cast_to=object)
        except openai.OpenAIError as exc:
            raise ServingError(f"model '{model}': {_reason(exc)}") from exc
        if not isinstance(result, dict) or not isinstance(result.get("count"), int):
            raise ServingError(f"the server at {root} answered /tokenize without a token count")
        return int(result["count"]), int(result.get("max_model_len") or 0)

    async def server_version(self) -> str:
        """The server's vLLM version from its /version route ("unknown" where there is none, e.g. behind a router):
        part of what an eval answer depends on (app/eval/run.py)."""
        try:
            result = await self._client.get(f"{self.base_url.removesuffix('/v1')}/version", cast_to=object)
        except openai.OpenAIError:
            return "vllm:unknown"
        return f"vllm:{result.get('version', 'unknown')}" if isinstance(result, dict) else "vllm:unknown"

    async def load_adapter(self, name: str, path: str) -> None:
        """Load a LoRA adapter folder (a path on the servers' machines) as model `name`, into every replica.

        Needs servers started with `--enable-lora` and `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`.
        """
        await self._on_every_replica("load", name, {"lora_name": name, "lora_path": path})

    async def unload_adapter(self, name: str) -> None:
        """Remove a LoRA adapter from every replica; requests naming it then get 404."""
        await self._on_every_replica("unload", name, {"lora_name": name})

    async def _on_every_replica(self, action: str, name: str, body: dict[str, str]) -> None:
        """POST vLLM's /{action}_lora_adapter to each replica in turn (the router sends a request to one of them)."""
        for replica in self.replicas:
            try:
                await self._client.post(f"{replica}/{action}_lora_adapter", body=body, cast_to=str)
            except openai.OpenAIError as exc:
                where = f" on replica {replica}" if len(self.replicas) > 1 else ""
                raise ServingError(f"cannot {action} adapter '{name}'{where}: {_reason(exc)}") from exc

    async def sync_adapters(self) -> list[str]:
        """Behind a router: load into each replica the run-time adapters another one serves and it lacks (a replica
        that was restarted lost them). Returns "name → replica" for each one loaded. Adapters' folders must be
        readable by every replica (a shared folder)."""
        if len(self.replicas) < 2:
            return []
        served: dict[str, dict[str, str]] = {}
        for replica in self.replicas:
            try:
                page = await self._client.get(f"{replica}/models", cast_to=object)
            except openai.OpenAIError:
                continue  # down: the router already sends its traffic elsewhere
            data = page.get("data", []) if isinstance(page, dict) else []
            served[replica] = {str(m["id"]): str(m.get("root")) for m in data if m.get("parent") and m.get("root")}
        everything = {name: root for adapters in served.values() for name, root in adapters.items()}
        loaded = []
        for replica, adapters in served.items():
            for name in sorted(set(everything) - set(adapters)):
                body = {"lora_name": name, "lora_path": everything[name]}
                with contextlib.suppress(openai.OpenAIError):
                    await self._client.post(f"{replica}/load_lora_adapter", body=body, cast_to=str)
                    loaded.append(f"{name} → {replica}")
        return loaded

    async def close(self) -> None:
        await self._client.close()


def _reason(exc: openai.OpenAIError) -> str:
    """A short, user-facing reason for a failed request."""
    if isinstance(exc, openai.APITimeoutError):  # a subclass of APIConnectionError: test it first
        return "the model server timed out"
    if isinstance(exc, openai.APIConnectionError):
        return "the model server is not reachable (is vLLM running? check the URL)"
    if isinstance(exc, openai.APIStatusError):
        if exc.status_code == 401:
            return "server said 401: the API key is missing or wrong (set ARENA_VLLM__API_KEY for an external server)"
        return f"server said {exc.status_code}: {_message(exc)}"
    return str(exc)


def _message(exc: openai.APIStatusError) -> str:
    """The server's own message, whatever shape its error body has (vLLM, a proxy, an HTML error page)."""
    try:
        body = exc.response.json()
    except ValueError:
        return exc.message
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"]
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return error["message"]
    return error if isinstance(error, str) else exc.message
