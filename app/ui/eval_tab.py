"""Eval tab: a small batch evaluation against the app's own server, with its summary table, verdicts and a chart.

The tab only holds widgets: answering, judging, the summary and the verdict come from app.eval.run (the same code as
`python -m app.eval`, without the answer cache), tables, verdict text and chart rows from app.eval.report; the
questions are the eval sets the app loaded (app.content).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import gradio as gr
import pandas as pd

from app.eval.report import CHART_METRICS, COLUMNS, chart_records, table, verdicts_markdown
from app.eval.run import EvalError, by_domain, evaluate
from app.eval.verdict import Summary
from app.inert import md_text
from app.rag import RAGError
from app.services import Services
from app.serving.client import ServingError
from app.setups import EVAL_MATRIX

QUESTIONS_PER_DOMAIN = 5
INTRO = (
    "Run a few eval questions per domain through each configuration (temperature 0) and see which one wins: "
    "terminology, hallucinations, groundedness, brand voice, latency, and a verdict per domain. The full run is "
    "`make eval` (docs/eval.md)."
)


def chart_frame(summary: Summary | None, metric: str) -> pd.DataFrame | None:
    """The bar chart's data: one bar per domain x configuration of `metric`; None (no chart, never an empty frame:
    after one, Gradio 6.31 draws the next values as axis labels instead of bars) before the first run."""
    if summary is None:
        return None
    return pd.DataFrame(chart_records(summary, metric), columns=["bar", "domain", "configuration", "value"])


def render(services: Services) -> None:
    """Build the tab inside the current Blocks context and wire its events (the run's API name: `eval_run`)."""
    settings, content = services.settings, services.content
    items = [item for name in content.domains for item in content.evals.get(name, [])]
    evals = settings.paths.evals.resolve()
    problems = [problem for problem in content.problems if problem.path.resolve().is_relative_to(evals)]
    notes = "\n".join(f"- ⚠️ {md_text(str(problem))} (left out)" for problem in problems)
    domains = sorted({item.domain for item in items})
    gr.Markdown(f"{INTRO}\n\n{notes}".strip())
    with gr.Row():
        domain_choice = gr.CheckboxGroup(domains, value=domains[:1], label="Domains")
        spec_choice = gr.CheckboxGroup(list(EVAL_MATRIX), value=list(EVAL_MATRIX), label="Configurations")
    with gr.Row(equal_height=True):
        per_domain = gr.Slider(1, 40, value=QUESTIONS_PER_DOMAIN, step=1, label="Questions per domain")
        max_tokens = gr.Slider(16, 1024, value=settings.ui.max_tokens, step=16, label="Answer length (tokens)")
        run = gr.Button("Run eval", variant="primary")
    verdicts = gr.Markdown()
    summary_table = gr.Dataframe(headers=["domain", *COLUMNS.values()], label="Summary", interactive=False, wrap=True,
                                 elem_id="eval-summary")  # fmt: skip
    metric = gr.Dropdown(
        [(label, key) for key, label in CHART_METRICS.items()], value="terminology_accuracy", label="Chart"
    )
    chart = gr.BarPlot(
        None,  # never an empty frame first: Gradio 6.31 then draws the values as axis labels, not bars
        x="bar", y="value", color="configuration", x_title="", y_title="value", x_label_angle=-40, height=360,
        elem_id="eval-chart",
        sort=None,
    )  # fmt: skip
    summary_state = gr.State(None)
    outputs = [summary_table, verdicts, chart, summary_state, run]

    async def run_eval(  # noqa: PLR0917 - Gradio passes the inputs positionally
        chosen: list[str],
        specs: list[str],
        count: float,
        tokens: float,
        shown: str,
        request: gr.Request,
        progress: gr.Progress = gr.Progress(track_tqdm=True),  # noqa: B008 - Gradio's way to ask for progress
    ) -> AsyncIterator[dict[Any, Any]]:
        if not services.access.may_administer(request.username):
            raise gr.Error(services.access.refusal())
        if not chosen or not specs:
            raise gr.Error("Pick at least one domain and one configuration.")
        yield {run: gr.Button("Running …", interactive=False)}
        try:
            done = await evaluate(
                services.playground,
                services.judge,
                by_domain(items, chosen, int(count)),
                [spec for spec in EVAL_MATRIX if spec in specs],
                max_tokens=int(tokens),
            )
        except (EvalError, ServingError, RAGError) as exc:
            yield {verdicts: f"⚠️ {md_text(str(exc))}", run: gr.Button("Run eval", interactive=True)}
            return
        headers, rows = table(done.summary, formatted=True)
        failed = [f"- ⚠️ {md_text(r['id'])} · {md_text(r['spec'])}: {md_text(r['error'])}" for r in done.results
                  if r["error"]]  # fmt: skip
        yield {
            summary_table: pd.DataFrame(rows, columns=headers),
            verdicts: "\n".join([verdicts_markdown(done.summary, done.warnings), *failed]),
            chart: chart_frame(done.summary, shown),
            summary_state: done.summary,
            run: gr.Button("Run eval", interactive=True),
        }

    run.click(
        run_eval,
        [domain_choice, spec_choice, per_domain, max_tokens, metric],
        outputs,
        api_name="eval_run",
        concurrency_limit=1,  # one eval at a time, app-wide: it keeps the shared server busy
        concurrency_id="eval",
    )
    metric.change(chart_frame, [summary_state, metric], chart, api_name="eval_chart")
