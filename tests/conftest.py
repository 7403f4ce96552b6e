"""Shared fixtures: a real vLLM server on a free loopback port (once per session), its settings, and the whole
Gradio app on it (once per test module) with a gradio_client to drive it; a real PostgreSQL server (once per
session, on demand) with a fresh database per test, and `vote_store_url`, which runs a test on SQLite and on
PostgreSQL."""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import gradio as gr
import pytest
from gradio_client import Client

from app.arena.store import sqlite_url
from app.config import Settings, load_settings
from app.model_prep import DEFAULT_OUT, prepare
from app.serving.client import ServingClient
from app.serving.process import VLLMServer
from app.ui import build_app

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(autouse=True)
def _no_user_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never read the developer's own config.yaml or ARENA_* variables."""
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("ARENA_CONFIG", raising=False)
    for name in list(__import__("os").environ):
        if name.startswith("ARENA_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The converted embedded model (made once; `make test` has usually made it already)."""
    return prepare(REPO / DEFAULT_OUT)


@pytest.fixture(scope="session")
def server_settings(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    data = tmp_path_factory.mktemp("data")
    return load_settings(
        None,
        {
            "model.path": str(model_dir),
            "vllm.port": free_port(),
            "vllm.kv_cache_gib": 1,
            "paths.data": str(data),
            "paths.adapters": str(data / "no-adapters"),
        },
    )


@pytest.fixture(scope="session")
def vllm_server(server_settings: Settings) -> Iterator[VLLMServer]:
    """The real vLLM OpenAI-compatible server serving the embedded model as `base`."""
    with VLLMServer(server_settings) as server:
        server.wait_ready(progress=False)
        yield server


@pytest.fixture(scope="module")
def ui_client(vllm_server: VLLMServer, server_settings: Settings) -> Iterator[Client]:
    """The whole app (every tab) on a free port, wired to the session's vLLM server."""
    demo: gr.Blocks = build_app(server_settings, ServingClient(vllm_server.base_url))
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield Client(f"http://127.0.0.1:{port}/", verbose=False)
    finally:
        demo.close()


class PostgresServer:
    """A throwaway PostgreSQL server of the Debian `postgresql` package in its own temporary folder.

    It listens on 127.0.0.1 only, on a free port, with its unix socket in that folder, password authentication
    (scram-sha-256) and no durability (fsync off: test data only). initdb and the server refuse to run as root, so
    as root (CI, containers) they run as the `postgres` system user, which owns the folder.
    """

    USER = "postgres"

    def __init__(self) -> None:
        self.bin = self.find_bin()
        self.password = secrets.token_urlsafe(12)
        self.root = Path(tempfile.mkdtemp(prefix="arena-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = 0
        self.as_root = os.geteuid() == 0
        if self.as_root:
            shutil.chown(self.root, self.USER, self.USER)

    @staticmethod
    def find_bin() -> Path | None:
        """The newest /usr/lib/postgresql/<version>/bin with initdb, or None when the server is not installed."""
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
        return Path(found[-1]).parent if found else None

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin / args[0]), *args[1:]]
        if self.as_root:
            command = ["runuser", "-u", self.USER, "--", *command]
        return subprocess.run(command, cwd=self.root, capture_output=True, text=True, timeout=timeout, check=False)

    def init(self) -> None:
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self.as_root:
            shutil.chown(pwfile, self.USER, self.USER)
        done = self._run(
            "initdb", "-D", str(self.data), "-U", self.USER, "--pwfile", str(pwfile), "--auth=scram-sha-256",
            "-E", "UTF8", "--no-locale", "--no-sync", "--no-instructions",
        )  # fmt: skip
        pwfile.unlink()
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stdout}{done.stderr}")

    def start(self) -> None:
        """Start the server (on the same port when restarted), waiting until it takes connections."""
        for _attempt in range(3):  # a free port can be taken between choosing and binding it
            port = self.port or free_port()
            options = (
                f"-c listen_addresses=127.0.0.1 -p {port} -k {self.root} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            )
            done = self._run(
                "pg_ctl", "start", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o", options
            )
            if done.returncode == 0:
                self.port = port
                return
            if self.port:
                break
        log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
        raise RuntimeError(f"PostgreSQL did not start: {done.stdout}{done.stderr}\n{log}")

    @property
    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def stop(self) -> None:
        """Stop the server (fast shutdown: open sessions are ended); kill it if pg_ctl cannot."""
        if not self.running:
            return
        done = self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-w", "-t", "30")
        pid_file = self.data / "postmaster.pid"
        if done.returncode != 0 and pid_file.exists():
            os.kill(int(pid_file.read_text().split()[0]), signal.SIGQUIT)  # its children exit with it

    def close(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres", password: str | None = None) -> str:
        return f"postgresql+psycopg://{self.USER}:{password or self.password}@127.0.0.1:{self.port}/{database}"

    def admin(self, sql: str) -> None:
        """Run one statement outside a transaction (CREATE/DROP DATABASE) in the `postgres` database."""
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=self.port, user=self.USER, password=self.password, dbname="postgres", autocommit=True
        ) as connection:
            connection.execute(sql)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL server for the session, started on first use and stopped (and deleted) at its end."""
    if PostgresServer.find_bin() is None:
        pytest.skip("PostgreSQL server not installed (`make test` installs Debian's postgresql package)")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        pytest.skip("running as root without runuser: cannot start PostgreSQL as the postgres user")
    server = PostgresServer()
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def postgres_database(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL (with password) of a new, empty database on the session's server, dropped after the test."""
    name = f"test_{secrets.token_hex(6)}"
    postgres_server.admin(f"CREATE DATABASE {name}")
    try:
        yield postgres_server.url(name)
    finally:
        if not postgres_server.running:  # a test that stopped it failed before starting it again
            postgres_server.start()
        postgres_server.admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(params=["sqlite", "postgresql"])
def vote_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A votes database URL for an empty database: a SQLite file, then a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return sqlite_url(tmp_path / "arena.db")
    return request.getfixturevalue("postgres_database")
