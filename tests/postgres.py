"""A throwaway real PostgreSQL server for tests (Debian's `postgresql` package), started on demand by the
`postgres_server` fixture in tests/conftest.py."""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from tests.ports import free_port


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
