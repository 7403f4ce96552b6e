"""Durability: a real app process is killed with SIGKILL in the middle of a burst of arena votes (SQLite in WAL mode).
Every vote the app acknowledged is in the database afterwards, and the preference export equals the table."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from gradio_client import Client

from app.arena.rounds import preference_records
from app.arena.store import VoteStore, sqlite_url
from tests.conftest import REPO
from tests.fake_openai import FakeOpenAI
from tests.ports import free_port
from tests.test_app_process import page_is_up

VOTERS = 4
KILL_AFTER = 24  # acknowledged votes


def test_acknowledged_votes_survive_kill_9(tmp_path: Path) -> None:
    port = free_port()
    with FakeOpenAI() as fake, (tmp_path / "app.log").open("wb") as log:
        app = subprocess.Popen(
            [sys.executable, "-m", "app", "--vllm-url", fake.base_url, "--port", str(port)],
            cwd=REPO, env={**os.environ, "ARENA_PATHS__DATA": str(tmp_path / "data")}, stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 300
            while not page_is_up(f"http://127.0.0.1:{port}/"):
                assert app.poll() is None and time.monotonic() < deadline, (tmp_path / "app.log").read_text()
                time.sleep(0.5)
            acknowledged: list[str] = []
            lock = threading.Lock()

            def vote(voter: int) -> None:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
                for number in range(1000):
                    prompt = f"voter {voter} round {number}"
                    try:
                        client.predict(prompt, "support", ["base", "base+persona"], 0.0, 16, api_name="/arena_round")
                        client.predict("A is better", api_name="/arena_vote")
                    except Exception:
                        return
                    with lock:
                        acknowledged.append(prompt)

            voters = [threading.Thread(target=vote, args=(n,), daemon=True) for n in range(VOTERS)]
            for thread in voters:
                thread.start()
            while len(acknowledged) < KILL_AFTER:
                assert app.poll() is None, (tmp_path / "app.log").read_text()[-3000:]
                time.sleep(0.05)
            os.kill(app.pid, signal.SIGKILL)  # mid-burst: the voters have requests in flight
            app.wait()
            for thread in voters:
                thread.join(timeout=30)
        finally:
            if app.poll() is None:
                app.kill()
    url = sqlite_url(tmp_path / "data" / "arena.db")
    with VoteStore(url) as store:  # what a restarted app opens
        votes = store.votes()
    stored = {vote.prompt for vote in votes}
    assert len(acknowledged) >= KILL_AFTER
    assert not set(acknowledged) - stored, "a vote the app acknowledged was lost"
    assert len(stored) == len(votes), "no vote was stored twice"
    out = tmp_path / "prefs.jsonl"
    done = subprocess.run([sys.executable, "-m", "app.arena", "--db", url, "export", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    exported = [json.loads(line) for line in out.read_text().splitlines()]
    assert exported == preference_records(votes), "the export is exactly the stored table's decisive votes"
