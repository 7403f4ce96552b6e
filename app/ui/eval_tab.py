"""Eval tab: a small batch evaluation against the app's own server, with its summary table, verdicts and a chart.

The tab only holds widgets: answering, judging, the summary and the verdict come from app.eval.run (the same code as
`python -m app.eval`, without the answer cache), tables, verdict text and chart rows from app.eval.report; the
questions are the eval sets the app loaded (app.content).
"""

from __future__ import annotations

import gradio as gr
import pandas as pd

from app.eval.report import CHART_METRICS, chart_records, table, verdicts_markdown
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


def chart_frame(summary: Summary | None, metric: str) -> pd.DataFrame:
    """The bar chart's data: one bar per domain x configuration of `metric` (empty before the first run)."""
    columns = ["bar", "domain", "configuration", "value"]
    return pd.DataFrame(chart_records(summary, metric) if summary else [], columns=columns)


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
    summary_table = gr.Dataframe(label="Summary", interactive=False, wrap=True)
    metric = gr.Dropdown(
        [(label, key) for key, label in CHART_METRICS.items()], value="terminology_accuracy", label="Chart"
    )
    chart = gr.BarPlot(
        chart_frame(None, "terminology_accuracy"), x="bar", y="value", color="configuration", x_title="",
        y_title="value", x_label_angle=-40, height=360, sort=None,
    )  # fmt: skip
    summary_state = gr.State(None)

    async def run_eval(  # noqa: PLR0917 - Gradio passes the inputs positionally
        chosen: list[str],
        specs: list[str],
        count: float,
        tokens: float,
        shown: str,
        progress: gr.Progress = gr.Progress(track_tqdm=True),  # noqa: B008 - Gradio's way to ask for progress
    ) -> tuple[pd.DataFrame, str, pd.DataFrame, Summary]:
        if not chosen or not specs:
            raise gr.Error("Pick at least one domain and one configuration.")
        try:
            done = await evaluate(
                services.playground,
                services.judge,
                by_domain(items, chosen, int(count)),
                [spec for spec in EVAL_MATRIX if spec in specs],
                max_tokens=int(tokens),
            )
        except (EvalError, ServingError, RAGError) as exc:
            raise gr.Error(str(exc)) from None
        headers, rows = table(done.summary, formatted=True)
        return (
            pd.DataFrame(rows, columns=headers),
            verdicts_markdown(done.summary, done.warnings),
            chart_frame(done.summary, shown),
            done.summary,
        )

    run.click(
        run_eval,
        [domain_choice, spec_choice, per_domain, max_tokens, metric],
        [summary_table, verdicts, chart, summary_state],
        api_name="eval_run",
    )
    metric.change(chart_frame, [summary_state, metric], chart, api_name="eval_chart")
