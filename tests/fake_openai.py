"""A small scripted OpenAI-compatible server for deterministic UI tests, next to (never instead of) the real vLLM.

It lists a base model and adapters like vLLM does (`/v1/models` with `parent`), streams scripted answers from
`/v1/chat/completions` in OpenAI's SSE format (with a final usage chunk), can fail with a status code before or in
the middle of a stream, or wait before each token, can hold its model list (a busy server), and keeps every request
it got so a test can check what the app sent, and the most answers it streamed at once. Runs uvicorn in a thread on a
loopback port:

    with FakeOpenAI() as fake:
        fake.script("base", "Hello <b>world</b>", delay_s=0.01)
        client = ServingClient(fake.base_url)
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from tests.ports import free_port


@dataclass
class Script:
    """What one model answers: `text` in `chunks` pieces, `delay_s` before each; `status` fails the request before
    any token; `fail_after` pieces drops the stream with an error after that many."""

    text: str = "OK."
    chunks: int = 4
    delay_s: float = 0.0
    status: int | None = None
    fail_after: int | None = None

    def pieces(self) -> list[str]:
        size = max(1, -(-len(self.text) // self.chunks))
        return [self.text[i : i + size] for i in range(0, len(self.text), size)] or [""]


@dataclass
class FakeOpenAI:
    """The server; use as a context manager. `requests` holds each chat request's JSON body, in order."""

    base: str = "base"
    adapters: list[str] = field(default_factory=list)
    scripts: dict[str, Script] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)  # each chat request's headers
    hits: list[str] = field(default_factory=list)  # every other path requested (e.g. an image a page tried to load)
    model_lists: int = 0  # how often /v1/models was asked
    models_open: threading.Event = field(default_factory=threading.Event)  # clear it to hold /v1/models' answers
    context: int = 2048  # the max_model_len /tokenize reports
    streaming: int = 0  # answers being streamed now
    peak_streaming: int = 0  # the most at once so far
    port: int = 0

    def script(self, model: str, text: str = "OK.", **options: Any) -> None:
        self.scripts[model] = Script(text, **options)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def app(self) -> FastAPI:
        api = FastAPI()

        @api.get("/v1/models")
        async def models() -> dict[str, Any]:
            self.model_lists += 1
            await asyncio.to_thread(self.models_open.wait)
            entries = [{"id": self.base, "object": "model", "root": "/models/fake", "parent": None}]
            entries += [{"id": name, "object": "model", "root": f"/adapters/{name}", "parent": self.base}
                        for name in self.adapters]  # fmt: skip
            return {"object": "list", "data": entries}

        @api.get("/health")
        async def health() -> JSONResponse:
            return JSONResponse({})

        @api.post("/tokenize")
        async def tokenize(request: Request) -> dict[str, Any]:
            body = await request.json()
            count = sum(len(str(m.get("content", ""))) for m in body.get("messages", [])) // 4 + 8  # ~4 chars a token
            return {"count": count, "max_model_len": self.context, "tokens": []}

        @api.post("/v1/load_lora_adapter")
        async def load(request: Request) -> JSONResponse:
            self.adapters.append((await request.json())["lora_name"])
            return JSONResponse("Success")

        @api.post("/v1/unload_lora_adapter")
        async def unload(request: Request) -> JSONResponse:
            self.adapters.remove((await request.json())["lora_name"])
            return JSONResponse("Success")

        @api.post("/v1/chat/completions", response_model=None)
        async def chat(request: Request) -> StreamingResponse | JSONResponse:
            body = await request.json()
            self.requests.append(body)
            self.headers.append(dict(request.headers))
            model = body.get("model")
            if model not in (self.base, *self.adapters):
                message = f"The model `{model}` does not exist."
                return JSONResponse({"error": {"message": message, "type": "NotFoundError", "code": 404}}, 404)
            script = self.scripts.get(model, Script())
            if script.status is not None:
                message = f"scripted failure {script.status}"
                return JSONResponse({"error": {"message": message, "code": script.status}}, script.status)
            return StreamingResponse(self._stream(model, script), media_type="text/event-stream")

        @api.get("/{path:path}")
        async def anything_else(path: str) -> JSONResponse:
            self.hits.append(f"/{path}")
            return JSONResponse({"error": "not found"}, 404)

        return api

    async def _stream(self, model: str, script: Script) -> AsyncIterator[str]:
        pieces = script.pieces()
        self.streaming += 1
        self.peak_streaming = max(self.peak_streaming, self.streaming)
        try:
            for number, piece in enumerate(pieces):
                if script.fail_after is not None and number >= script.fail_after:
                    raise RuntimeError("scripted stream failure")  # uvicorn drops the connection mid-stream
                await asyncio.sleep(script.delay_s)
                chunk = {"id": "fake", "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
                         "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}  # fmt: skip
                yield f"data: {json.dumps(chunk)}\n\n"
        finally:
            self.streaming -= 1
        usage = {"prompt_tokens": 10, "completion_tokens": len(pieces), "total_tokens": 10 + len(pieces)}
        final = {"id": "fake", "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
                 "choices": [], "usage": usage}  # fmt: skip
        yield f"data: {json.dumps(final)}\n\n"
        yield "data: [DONE]\n\n"

    def __enter__(self) -> FakeOpenAI:
        self.port = self.port or free_port()
        self.models_open.set()
        config = uvicorn.Config(self.app(), host="127.0.0.1", port=self.port, log_level="error", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the fake OpenAI server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
