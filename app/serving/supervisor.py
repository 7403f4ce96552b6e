"""Supervision of the vLLM server the app started: health polling, restart with backoff, adapters served again.

A watchdog thread asks `/v1/models` every `interval_s`. When the API server process has exited, or `misses` polls in
a row go unanswered (a hung server), the whole process group is killed (the engine core and workers outlive a killed
API server otherwise), the server is started again with growing pauses between failed attempts, and the adapters it
served at run time — loaded or merged from the Adapters tab, seen in the last good poll — are loaded into it again.
`health()` says what is happening for the status line. Requests in flight when the server dies fail at once (their
connection drops), so panels end with "the model server is not reachable" rather than hanging.

    with Supervisor(start_local_server(settings)) as supervisor:
        supervisor.wait_ready()        # the first start
        ...                            # the app; supervisor.health().describe() for the status line
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import httpx

from app.serving.client import ServingError
from app.serving.process import VLLMServer

State = Literal["starting", "up", "restarting"]
BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 60.0)  # pause before the n-th restart attempt (the last one repeats)


@dataclass(frozen=True)
class Health:
    """The supervised server's state since `since` (epoch seconds); `attempt` counts restart attempts."""

    state: State
    since: float
    attempt: int = 0
    detail: str = ""

    def describe(self) -> str:
        """One line for people, e.g. "vLLM restarting (attempt 2) since 12:03:04 UTC: the process exited"."""
        at = datetime.fromtimestamp(self.since, UTC).strftime("%H:%M:%S UTC")
        if self.state == "up":
            return f"vLLM up since {at}" + (f" ({self.detail})" if self.detail else "")
        if self.state == "starting":
            return f"vLLM starting since {at}"
        return f"vLLM restarting (attempt {self.attempt}) since {at}: {self.detail}"


class Supervisor:
    """Owns a started VLLMServer and keeps it serving; stopping the supervisor stops the server."""

    def __init__(
        self, server: VLLMServer, *, interval_s: float = 2.0, misses: int = 3, backoff_s: Sequence[float] = BACKOFF_S
    ) -> None:
        self.server = server
        self.interval_s, self.misses, self.backoff_s = interval_s, misses, tuple(backoff_s)
        self._health = Health("starting", time.time())
        self._runtime: dict[str, str] = {}  # adapters loaded at run time: name -> folder (as the server reports it)
        self._stop = threading.Event()
        self._starting = threading.Lock()
        self._thread = threading.Thread(target=self._watch, name="vllm-supervisor", daemon=True)

    def health(self) -> Health:
        return self._health

    def wait_ready(self) -> None:
        """The first start (progress on stderr); then the watchdog takes over."""
        self.server.wait_ready()
        self._health = Health("up", time.time())
        self._thread.start()

    def _models(self) -> list[dict[str, str | None]] | None:
        """The server's models, or None when it does not answer."""
        headers = {"Authorization": f"Bearer {self.server.api_key}"}
        try:
            response = httpx.get(f"{self.server.base_url}/models", headers=headers, timeout=max(self.interval_s, 2.0))
            response.raise_for_status()
            return list(response.json()["data"])
        except (httpx.HTTPError, ValueError, KeyError):
            return None

    def _remember(self, models: list[dict[str, str | None]]) -> None:
        self._runtime = {
            str(m["id"]): str(m.get("root"))
            for m in models
            if m.get("parent") and m["id"] not in self.server.adapters and m.get("root")
        }

    def _watch(self) -> None:
        missed = 0
        while not self._stop.wait(self.interval_s):
            models = self._models()
            if models is not None:
                missed = 0
                self._remember(models)
                continue
            missed += 1
            if not self.server.alive:
                self._restart("the server process exited")
                missed = 0
            elif missed >= self.misses:
                self._restart(f"it did not answer {missed} health checks in a row")
                missed = 0

    def _restart(self, reason: str) -> None:
        for attempt, pause in enumerate((*self.backoff_s, *[self.backoff_s[-1]] * 10_000), start=1):
            self._health = Health("restarting", self._health.since if attempt > 1 else time.time(), attempt, reason)
            self.server.stop(timeout_s=10)  # the whole group: no engine core or worker of ours survives
            if self._stop.wait(pause):
                return
            with self._starting:  # stop() cannot slip in between the check and the start
                if self._stop.is_set():
                    return
                self.server.start()
            try:
                self.server.wait_ready(progress=False, cancelled=self._stop.is_set)
            except ServingError as exc:
                if self._stop.is_set():
                    return
                reason = f"restart failed: {str(exc).splitlines()[0]}"
                continue
            failed = self._reload()
            detail = f"restarted after: {reason.split(': ', 1)[-1]}" if attempt == 1 else f"restarted, {attempt} tries"
            if failed:
                detail += f"; could not load again: {', '.join(failed)}"
            self._health = Health("up", time.time(), attempt, detail)
            return

    def _reload(self) -> list[str]:
        """Load the run-time adapters again; the names that failed."""
        failed = []
        headers = {"Authorization": f"Bearer {self.server.api_key}"}
        for name, path in self._runtime.items():
            body = {"lora_name": name, "lora_path": path}
            try:
                httpx.post(f"{self.server.base_url}/load_lora_adapter", json=body, headers=headers,
                           timeout=120).raise_for_status()  # fmt: skip
            except httpx.HTTPError:
                failed.append(name)
        return failed

    def stop(self) -> None:
        """Stop watching first (so that shutting down is not mistaken for a crash), then the server."""
        with self._starting:
            self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        self.server.stop()

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
