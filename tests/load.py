"""A bounded loopback load driver over gradio_client: simulated users asking through the Compare tab at once.

Each user is a thread with its own browser session (gradio_client.Client) that asks one question after another with
2 to 4 panels (seeded), streaming, until the time is up. It records each question's time to first token and to
completion, errors (a failed request, or a panel that ended with an error) and lost requests (submitted, never
finished). tests/test_load.py runs it for one minute in the default run and five in the slow tier.

    report = run_load("http://127.0.0.1:7860/", users=20, duration_s=60, max_tokens=16, app_pid=pid)
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from gradio_client import Client

from tests.busy import cpu_seconds, peak_rss_mib, steal_seconds
from tests.panels import panel

QUESTIONS = (
    "How much is Acme Unlimited per month?",
    "What is a tort?",
    "How do I port my number out?",
    "What is compound interest?",
    "Can I return my phone after two weeks?",
)
PERSONAS = ("none", "support", "legal", "finance")


@dataclass
class LoadReport:
    users: int
    duration_s: float
    questions: int = 0
    finished: int = 0  # questions whose request ended, well or not
    answers: int = 0  # panels answered
    errors: list[str] = field(default_factory=list)
    lost: int = 0
    first_token_s: list[float] = field(default_factory=list, repr=False)
    completion_s: list[float] = field(default_factory=list, repr=False)
    peak_rss_mib: float | None = None
    app_cpu_s: float | None = None  # CPU time the app's process used during the run
    steal_s: float | None = None  # CPU time the VM's host took from this machine during the run (both CPUs)

    @staticmethod
    def percentile(values: list[float], share: float) -> float | None:
        if not values:
            return None
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]

    def summary(self) -> dict[str, Any]:
        """The figures docs/reliability.md records."""
        data = {key: value for key, value in asdict(self).items() if key not in ("first_token_s", "completion_s")}
        data["errors"] = len(self.errors)
        for name, values in (("first_token_s", self.first_token_s), ("completion_s", self.completion_s)):
            data[f"{name}_p50"] = self.percentile(values, 0.5)
            data[f"{name}_p95"] = self.percentile(values, 0.95)
        data["answers_per_minute"] = round(self.answers / self.duration_s * 60, 1)
        data["mean_completion_s"] = round(statistics.fmean(self.completion_s), 2) if self.completion_s else None
        return data


def _panel(rng: random.Random, max_tokens: int) -> list[Any]:
    """One panel's inputs (tests/test_ui.py: panel()): the base model, a persona or none, RAG sometimes."""
    persona = rng.choice(PERSONAS)
    rag = rng.random() < 0.3
    return panel(persona=persona, tokens=max_tokens, rag=rag, kb="support" if rag else None)


def _user(url: str, number: int, *, until: float, max_tokens: int, report: LoadReport, lock: threading.Lock) -> None:
    rng = random.Random(number)
    client = Client(url, verbose=False)
    while time.monotonic() < until:
        count = rng.randint(2, 4)
        panels = [_panel(rng, max_tokens) for _ in range(4)]
        started = time.monotonic()
        first: float | None = None
        job = client.submit(rng.choice(QUESTIONS), "support", count, *(v for p in panels for v in p),
                            api_name="/answer_all")  # fmt: skip
        with lock:
            report.questions += 1
        try:
            for update in job:
                if first is None and any(chat and chat[-1]["content"] for chat in update[:count]):
                    first = time.monotonic() - started
            chats = job.result(timeout=300)[:count]
        except Exception as exc:
            with lock:
                report.finished += 1
                report.errors.append(f"user {number}: {type(exc).__name__}: {exc}")
            continue
        texts = [str(chat[-1]["content"]) if chat else "" for chat in chats]
        with lock:
            report.finished += 1
            report.answers += sum(bool(text) for text in texts)
            report.errors += [f"user {number}: {text[-200:]}" for text in texts if "⚠️" in text or not text]
            report.completion_s.append(time.monotonic() - started)
            if first is not None:
                report.first_token_s.append(first)


def run_load(url: str, *, users: int, duration_s: float, max_tokens: int, app_pid: int | None = None) -> LoadReport:
    """Run `users` simulated users for `duration_s` seconds (each finishes its question in progress)."""
    report = LoadReport(users=users, duration_s=duration_s)
    cpu_before, steal_before = cpu_seconds(app_pid) if app_pid is not None else None, steal_seconds()
    lock = threading.Lock()
    until = time.monotonic() + duration_s
    options = {"until": until, "max_tokens": max_tokens, "report": report, "lock": lock}
    threads = [threading.Thread(target=_user, args=(url, n), kwargs=options, daemon=True) for n in range(users)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=duration_s + 600)
    report.lost = report.questions - report.finished
    report.steal_s = round(steal_seconds() - steal_before, 1)
    if app_pid is not None:
        report.peak_rss_mib = peak_rss_mib(app_pid)
        cpu_after = cpu_seconds(app_pid)
        if cpu_before is not None and cpu_after is not None:
            report.app_cpu_s = round(cpu_after - cpu_before, 1)
    return report
