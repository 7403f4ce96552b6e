"""RAG benchmark: index build throughput, and retrieval latency (embed the query + FAISS search) at 1k and 10k chunks.

    .venv/bin/python bench/bench_rag.py [--queries 200] [--torch-threads 1]

Build throughput is measured on the shipped kb/support (split + embed + write, the real path, in a temporary
folder). The shipped "all" index is the app's own (built if missing or stale). The 1k / 10k
indexes are synthesised: the shipped chunks are embedded once, then repeated with small random perturbations
(re-normalised) up to the wanted size, so the search cost is that of a real index of that size while the
benchmark stays short. Queries are the questions of evals/*.jsonl, cycled. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import cast

import faiss
import numpy as np
import torch
from langchain_community.vectorstores import FAISS
from langchain_core.documents import Document

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from app.config import load_settings
from app.content import EvalItem, load_jsonl
from app.embeddings import EMBEDDING_DIM, embeddings
from app.rag import ALL, RAGStore, vectorstore_from_parts

REPO = Path(__file__).resolve().parent.parent
SIZES = (1_000, 10_000)
NOISE = 0.05


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def questions() -> list[str]:
    found = []
    for path in sorted((REPO / "evals").glob("*.jsonl")):
        items, _ = load_jsonl(path, EvalItem)
        found += [item.question for item in items]
    return found


def build_throughput(data: Path) -> tuple[int, float]:
    store = RAGStore(load_settings(None, {"paths.kb": str(REPO / "kb"), "paths.data": str(data)}))
    started = time.perf_counter()
    built = store.ensure_index("support", force=True)
    return built.manifest["chunks"], time.perf_counter() - started


def synthetic_store(base: list[Document], vectors: np.ndarray, size: int, rng: np.random.Generator) -> FAISS:
    """`size` chunks: the real ones repeated, each copy's vector nudged and re-normalised."""
    picks = np.arange(size) % len(base)
    noisy = vectors[picks] + rng.normal(0.0, NOISE, (size, EMBEDDING_DIM)).astype("float32")
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    index = faiss.IndexFlatIP(EMBEDDING_DIM)
    index.add(noisy)
    chunks = [Document(page_content=base[i].page_content, metadata=base[i].metadata) for i in picks]
    return vectorstore_from_parts(index, chunks)


def latency(store: FAISS, asks: list[str], k: int = 4) -> dict[str, float]:
    """Per query: embed (ms), search (ms) and the whole LangChain call (ms), p50 and p95."""
    model = embeddings()
    embed_ms, search_ms, total_ms = [], [], []
    for question in asks:
        t0 = time.perf_counter()
        query = np.asarray([model.embed_query(question)], dtype="float32")
        t1 = time.perf_counter()
        store.index.search(query, k)
        t2 = time.perf_counter()
        store.similarity_search_with_relevance_scores(question, k=k)
        t3 = time.perf_counter()
        embed_ms.append((t1 - t0) * 1000)
        search_ms.append((t2 - t1) * 1000)
        total_ms.append((t3 - t2) * 1000)
    return {
        "embed_p50": percentile(embed_ms, 50),
        "search_p50": percentile(search_ms, 50),
        "p50": percentile(total_ms, 50),
        "p95": percentile(total_ms, 95),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=200, help="queries per index size (default 200)")
    parser.add_argument("--torch-threads", type=int, help="torch intra-op threads (default: torch's own choice)")
    args = parser.parse_args(argv)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    rng = np.random.default_rng(0)
    asks = (questions() * (args.queries // len(questions()) + 1))[: args.queries]
    with tempfile.TemporaryDirectory() as tmp:
        chunks, seconds = build_throughput(Path(tmp))
    shipped = RAGStore(load_settings()).ensure_index(ALL).vectorstore  # the app's own index, rebuilt if stale
    ids = (shipped.index_to_docstore_id[i] for i in range(shipped.index.ntotal))
    base = cast("list[Document]", [shipped.docstore.search(chunk_id) for chunk_id in ids])  # every id is stored
    vectors = shipped.index.reconstruct_n(0, shipped.index.ntotal)
    latency(shipped, asks[:10])  # warm-up: first calls pay for lazy initialisation
    print(
        f"faiss {faiss.__version__} ({faiss.omp_get_max_threads()} OpenMP threads), torch {torch.get_num_threads()} "
        f"threads, {len(asks)} queries, k=4\n"
    )
    print(f"Index build (kb/support, split + embed + write): {chunks} chunks in {seconds:.1f} s = "
          f"{chunks / seconds:.1f} chunks/s\n")  # fmt: skip
    print("| chunks | embed p50 (ms) | search p50 (ms) | retrieve p50 (ms) | retrieve p95 (ms) |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for size in (len(base), *SIZES):
        row = latency(shipped if size == len(base) else synthetic_store(base, vectors, size, rng), asks)
        print(
            f"| {size} | {row['embed_p50']:.1f} | {row['search_p50']:.2f} | {row['p50']:.1f} | {row['p95']:.1f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
