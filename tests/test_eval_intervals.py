"""The eval's paired bootstrap intervals (app.eval.intervals), on hand-made results: what they say beside the
targets and the verdict margins, and that they are paired, seeded and consistent with the figures they bracket."""

from __future__ import annotations

from typing import Any

from app.eval import report, targets
from app.eval.intervals import paired_intervals
from app.eval.verdict import Decision, Summary, summarize
from app.setups import ADAPTER, PROMPT
from tests.test_eval import record, row


def answers(spec: str, count: int, terminology: Any, hallucination: Any) -> list[dict[str, Any]]:
    """`count` legal answers of `spec`; per question number n, the scores `terminology(n)` and `hallucination(n)`."""
    return [record("legal", spec, n, terminology=terminology(n), hallucination=hallucination(n)) for n in range(count)]


def test_the_same_shift_on_every_question_has_no_spread() -> None:
    """Paired: the base model's terminology varies a lot from question to question, the adapter's is always 0.2
    more; resampling the questions moves both together, so the difference's interval is the shift itself (an
    unpaired resample would spread it by the questions' own variation)."""
    base = answers(PROMPT, 40, lambda n: (n % 4) / 5, lambda n: n % 3 == 0)
    adapter = answers(ADAPTER, 40, lambda n: (n % 4) / 5 + 0.2, lambda n: n % 3 == 0)
    spread = paired_intervals({PROMPT: base, ADAPTER: adapter}, PROMPT)[ADAPTER]
    assert spread["terminology"] == (0.2, 0.2)
    assert spread["hallucination"] == (0.0, 0.0)
    assert spread["quality"] == (0.1, 0.1)  # the mean of terminology and factuality (no style outside support)


def test_intervals_bracket_the_figures_narrow_with_more_questions_and_repeat() -> None:
    def run(count: int) -> dict[str, Any]:
        base = answers(PROMPT, count, lambda n: 0.5, lambda n: n % 2 == 0)  # half the answers make something up
        adapter = answers(ADAPTER, count, lambda n: 0.5, lambda n: n % 4 == 0)  # a quarter
        return paired_intervals({PROMPT: base, ADAPTER: adapter}, PROMPT)[ADAPTER]["hallucination"]

    small, large = run(24), run(96)
    assert small[0] < -0.25 < small[1] and large[0] < -0.25 < large[1]  # the measured difference, 0.25 - 0.5
    assert large[1] - large[0] < small[1] - small[0]
    assert run(24) == small, "the same results give the same interval"


def test_errors_and_missing_baselines_are_left_out() -> None:
    base = answers(PROMPT, 10, lambda n: 0.5, lambda n: False)
    adapter = answers(ADAPTER, 10, lambda n: 1.0, lambda n: False)
    adapter[0] = record("legal", ADAPTER, 0, error="model 'legal': timed out")
    assert paired_intervals({PROMPT: base, ADAPTER: adapter}, PROMPT)[ADAPTER]["terminology"] == (0.5, 0.5)
    assert paired_intervals({ADAPTER: adapter}, PROMPT) == {}


def test_targets_show_the_spread_and_say_when_it_straddles_the_threshold() -> None:
    rows = [row(PROMPT, 0.3, 0.2), row(ADAPTER, 0.4, 0.3)]
    decision = Decision(verdict="prompt", reason="-", gains={}, margin=0.05, volatile=False, numbers={},
                        intervals={ADAPTER: {"terminology": (0.05, 0.2), "hallucination": (0.02, 0.2)}})  # fmt: skip
    cells = targets.targets_table(summary := Summary(rows=rows, verdict={"legal": decision}))[0]
    assert cells[2] == "+0.10 [+0.05, +0.20]: not met, within noise"  # 0.15 lies inside: another run could meet it
    assert cells[3] == "0.30 vs 0.20 [+0.02, +0.20]: not met"  # the adapter makes up more beyond the spread
    assert "[+0.05, +0.20]" in report.render_markdown(summary, [], {}, {})
    assert targets.missed([cells], None).startswith(
        "Not met: terminology gain ≥ +0.15 within noise in legal; adapter hallucination ≤ base in legal."
    )


def test_verdicts_print_each_gain_with_its_interval() -> None:
    base = answers(PROMPT, 20, lambda n: 0.2 + (n % 2) / 10, lambda n: n % 2 == 0)
    adapter = answers(ADAPTER, 20, lambda n: 0.6 + (n % 2) / 10, lambda n: n % 2 == 0)
    summary = summarize(base + adapter)
    decision = summary.verdict["legal"]
    assert decision.intervals[ADAPTER]["quality"] == (0.2, 0.2)  # terminology +0.4 on every question, facts equal
    assert summary.model_dump()["verdict"]["legal"]["intervals"][ADAPTER]["quality"] == (0.2, 0.2)
    assert "adapter+persona +0.20 [+0.20, +0.20]" in report.verdicts_markdown(summary)
