"""Checks on a running Adapter Arena container, driven through its public Gradio API (used by container-test.sh).

    python .ci/container_check.py answer --url http://127.0.0.1:17860/ --auth tester:pw --memory-dir /sys/fs/...
    python .ci/container_check.py votes --url http://127.0.0.1:17860/ --auth tester:pw --expect 1

`answer`: the page answers; four panels (the classic four-way on the support domain) stream one question at once
while the container's memory is sampled from its cgroup; then one arena round and one vote. `votes`: the leaderboard
(read back from the votes database, e.g. after a restart) counts `--expect` votes. Each prints one JSON line of
figures and exits non-zero, naming what did not hold, on a failure.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from gradio_client import Client

DOMAIN = "support"
QUESTION = "How much does Acme Unlimited cost per month, and what does it include?"
ANSWER_TOKENS = 64


def panel(model: str, persona: str, rag: bool) -> list[Any]:
    """One Compare panel's inputs to /answer_all, in app.ui.panel.FIELDS order (as tests/panels.py builds them)."""
    return [model, persona, "", 0.0, 1.0, ANSWER_TOKENS, "0", 1.0, 0.0, 0.0, rag, DOMAIN]


FOUR_WAY = [  # base + persona, adapter + persona, base + persona + RAG, adapter + RAG
    panel("base", DOMAIN, False),
    panel(DOMAIN, DOMAIN, False),
    panel("base", DOMAIN, True),
    panel(DOMAIN, "none", True),
]


class MemorySampler(threading.Thread):
    """Reads the container's memory use from its cgroup folder every 0.2 s and keeps the largest values seen: the
    usage a memory limit counts (v2 memory.current, v1 memory.usage_in_bytes; page cache included) and the anonymous
    memory of its processes (memory.stat: v2 anon, v1 total_rss), which is what cannot be reclaimed."""

    def __init__(self, folder: Path) -> None:
        super().__init__(daemon=True)
        names = ("memory.current", "memory.usage_in_bytes")
        self.file = next((folder / name for name in names if (folder / name).is_file()), None)
        if self.file is None:
            raise SystemExit(f"no memory.current or memory.usage_in_bytes in {folder}")
        self.stat = folder / "memory.stat"
        self.peak = 0
        self.anon_peak = 0
        self.samples = 0
        self.stop = threading.Event()

    def anon(self) -> int:
        fields = dict(line.split() for line in self.stat.read_text().splitlines() if line.count(" ") == 1)
        return int(fields.get("anon", fields.get("total_rss", 0)))

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, int(self.file.read_text()))
            self.anon_peak = max(self.anon_peak, self.anon())
            self.samples += 1
            self.stop.wait(0.2)


def lifetime_peak(folder: Path) -> int | None:
    """The cgroup's own high-water mark since the container started (start-up included), if the kernel keeps one."""
    for name in ("memory.peak", "memory.max_usage_in_bytes"):
        if (folder / name).is_file():
            return int((folder / name).read_text())
    return None


def fail(message: str) -> None:
    print(f"FAIL: {message}", file=sys.stderr)
    raise SystemExit(1)


def client_for(args: argparse.Namespace) -> Client:
    auth = tuple(args.auth.split(":", 1)) if args.auth else None
    return Client(args.url, auth=auth, verbose=False)


def check_answer(args: argparse.Namespace) -> dict[str, Any]:
    with urllib.request.urlopen(args.url, timeout=10) as page:
        if page.status != 200:
            fail(f"GET {args.url} answered {page.status}")
    client = client_for(args)
    values = [value for inputs in FOUR_WAY for value in inputs]
    sampler = MemorySampler(Path(args.memory_dir))
    sampler.start()
    started = time.monotonic()
    job = client.submit(QUESTION, DOMAIN, 4, *values, api_name="/answer_all")
    outputs = job.result(timeout=600)
    seconds = time.monotonic() - started
    sampler.stop.set()
    sampler.join()
    updates = len(job.outputs())
    chats = outputs[:4]
    answers = [str(chat[-1]["content"]) if chat else "" for chat in chats]
    if not all(answer.strip() for answer in answers):
        fail(f"a panel has no answer: {answers}")
    if updates < 3:
        fail(f"/answer_all sent {updates} update(s): the answers did not stream")
    client.submit("Do I pay extra for roaming in Canada?", DOMAIN, ["base", "base+persona"], 0.0, 32,
                  api_name="/arena_round").result(timeout=300)  # fmt: skip
    _reveal_a, _reveal_b, message = client.predict("A is better", api_name="/arena_vote")
    if "Vote saved" not in message:
        fail(f"the vote was not saved: {message}")
    return {
        "four_panels_s": round(seconds, 1),
        "stream_updates": updates,
        "answer_chars": [len(answer) for answer in answers],
        "memory_peak_while_streaming_gib": round(sampler.peak / 2**30, 2),
        "anon_memory_peak_while_streaming_gib": round(sampler.anon_peak / 2**30, 2),
        "memory_samples": sampler.samples,
        "memory_peak_since_start_gib": round((lifetime_peak(Path(args.memory_dir)) or 0) / 2**30, 2),
        "vote": message,
    }


def check_votes(args: argparse.Namespace) -> dict[str, Any]:
    summary, *_ = client_for(args).predict(DOMAIN, "tie", api_name="/leaderboard")
    if f"**{args.expect} vote(s)**" not in summary:
        fail(f"expected {args.expect} vote(s) on the leaderboard, it says: {summary[:300]}")
    return {"leaderboard": summary.splitlines()[0][:200]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("check", choices=["answer", "votes"])
    parser.add_argument("--url", required=True, help="the app's page, e.g. http://127.0.0.1:17860/")
    parser.add_argument("--auth", help="name:password of an account (ARENA_AUTH__USERS of the container)")
    parser.add_argument("--memory-dir", help="the container's memory cgroup folder (answer)")
    parser.add_argument("--expect", type=int, default=1, help="votes the leaderboard must count (votes)")
    args = parser.parse_args()
    result = check_answer(args) if args.check == "answer" else check_votes(args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
