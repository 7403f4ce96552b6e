"""Start Adapter Arena: flags -> settings -> start_local_server -> build_app -> launch on http://127.0.0.1:7860.

    python -m app                                  # start vLLM on the embedded model, then the UI
    python -m app --vllm-url http://gpu-box:8000/v1  # use a running vLLM server instead (no local model needed)

Ctrl-C (or SIGTERM) stops the UI and the vLLM child process together.
"""

from __future__ import annotations

import argparse
import signal
import sys
from contextlib import ExitStack
from pathlib import Path

from app.arena.store import StoreError
from app.auth import Access
from app.config import ConfigError, Settings, load_settings
from app.serving.client import ServingClient, ServingError, server_is_up
from app.serving.process import start_local_server
from app.serving.supervisor import Supervisor


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m app", description="Compare LoRA adapters, personas and RAG.")
    parser.add_argument("--config", type=Path, help="YAML settings file (default: ./config.yaml if present)")
    parser.add_argument("--vllm-url", help="OpenAI base URL of a running vLLM server; skips starting one")
    parser.add_argument("--model", help="model folder or hub id for the vLLM server we start")
    parser.add_argument("--host", help="UI bind address (default 127.0.0.1; 0.0.0.0 exposes it to the network)")
    parser.add_argument("--port", type=int, help="UI port (default 7860)")
    parser.add_argument("--vllm-port", type=int, help="port of the vLLM server we start (default 8011)")
    return parser.parse_args(argv)


def settings_from_args(args: argparse.Namespace) -> Settings:
    return load_settings(
        args.config,
        {
            "vllm.url": args.vllm_url,
            "model.path": args.model,
            "ui.host": args.host,
            "ui.port": args.port,
            "vllm.port": args.vllm_port,
        },
    )


def main(argv: list[str] | None = None) -> int:
    try:
        settings = settings_from_args(parse_args(argv))
        access = Access.from_settings(settings)  # a malformed account list stops us before vLLM starts
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    # Ctrl-C stops us even when a script started us in the background (a non-interactive shell makes `cmd &` ignore
    # SIGINT, and Python then never raises KeyboardInterrupt); SIGTERM (docker stop, kill) shuts down the same way.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if not access.login_required and not access.loopback:
        print(
            f"warning: listening on {settings.ui.host} without accounts: anyone who reaches it may use it, and admin "
            "actions (Adapters, Eval) are off; set ARENA_AUTH__USERS and ARENA_AUTH__ADMINS",
            file=sys.stderr,
        )
    with ExitStack() as stack:
        try:
            supervisor = None if settings.vllm.url else stack.enter_context(Supervisor(start_local_server(settings)))
        except ServingError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        client = ServingClient.from_settings(settings, api_key=supervisor.server.api_key if supervisor else None)
        if supervisor is None and not server_is_up(settings.vllm.base_url, client.api_key):
            print(f"warning: no model server answers at {settings.vllm.base_url} yet; the app waits for it",
                  file=sys.stderr)  # fmt: skip
        from app.rag import RAGStore, build_indexes  # heavy imports: once the server is on its way

        rag = RAGStore(settings)
        build_indexes(rag)  # RAG indexes, reused when up to date; built while vLLM starts
        try:
            if supervisor is not None:
                supervisor.wait_ready()
            from app.ui import build_app, launch  # gradio is slow to import: only once the server is on its way

            demo = build_app(settings, client, rag, supervisor=supervisor)
        except (ServingError, StoreError, ConfigError) as exc:  # e.g. a votes database that cannot be reached
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"Adapter Arena on http://{settings.ui.host}:{settings.ui.port}", file=sys.stderr)
        launch(demo, settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
