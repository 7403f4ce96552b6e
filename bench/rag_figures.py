"""Does RAG miss the facts, or does the model? For every eval question that expects figures (a price, a duration, an
amount), whether the passages RAG retrieves for it hold every one of them, beside how often the eval's RAG answers
state them all (`figures right`, read from an eval run's results.jsonl). Prints a Markdown table.

    .venv/bin/python bench/rag_figures.py [--results .data/eval/results.jsonl]

Retrieval is the app's own (`RAGStore.retrieve`, the `rag.passages` passages a Compare panel gets for a first question,
from the domain's knowledge base; docs/rag.md's table was measured at 4); the figure check is the judge's
(`app.scoring.checks.figure_groups`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from app.config import load_settings
from app.content import load_content
from app.rag import RAGStore
from app.scoring.checks import contains_any, figure_groups

RAG_SPECS = ("base+persona+rag", "adapter+persona+rag")


def stated(results: Path) -> dict[tuple[str, str, str], list[bool]]:
    """(domain, split, spec) -> figures right of each RAG answer that was scored on figures."""
    found: dict[tuple[str, str, str], list[bool]] = defaultdict(list)
    for line in results.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        right = (record["scores"] or {}).get("figures_right")
        if record["spec"] in RAG_SPECS and right is not None:
            found[record["domain"], record["split"], record["spec"]].append(right)
    return found


def share(hits: list[bool]) -> str:
    return f"{sum(hits)} of {len(hits)} ({sum(hits) / len(hits):.0%})" if hits else "–"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=Path(".data/eval/results.jsonl"),
                        help="an eval run's results.jsonl (`make eval` writes it); skipped when missing")  # fmt: skip
    args = parser.parse_args()
    settings = load_settings()
    content = load_content(settings.paths.personas, settings.paths.kb, settings.paths.adapters, settings.paths.evals)
    rag = RAGStore(settings)
    answers = stated(args.results) if args.results.is_file() else {}
    print("| domain | split | questions with figures | passages hold every figure | "
          + " | ".join(f"{spec} states them all" for spec in RAG_SPECS) + " |")  # fmt: skip
    print("| --- " * (4 + len(RAG_SPECS)) + "|")
    for name, domain in content.domains.items():
        for split, items in (("eval", content.evals.get(name, [])), ("paraphrase", content.paraphrases.get(name, []))):
            with_figures = [item for item in items if figure_groups(item)]
            if not with_figures or domain.knowledge_base is None:
                continue
            held = []
            for item in with_figures:
                passages = "\n".join(c.text for c in rag.retrieve(domain.knowledge_base, item.question))
                held.append(all(contains_any(passages, group) for group in figure_groups(item)))
            cells = [share(answers.get((name, split, spec), [])) for spec in RAG_SPECS]
            print(f"| {name} | {split} | {len(with_figures)} | {share(held)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
