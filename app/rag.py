"""Retrieval-augmented generation: one FAISS index per knowledge base (kb/<domain>/, plus "all"), built with LangChain.

Documents come from `app.content.load_kb_domain`, are split by Markdown headings and then by size, embedded with
the shared model of `app.embeddings` and searched by cosine similarity. Each index lives in `<paths.data>/rag/<kb>/`
as `index.faiss` (faiss.write_index), `docs.json` (chunk texts and metadata) and `manifest.json` (file hashes,
embedding model, chunking settings). Nothing is pickled: loading rebuilds LangChain's FAISS vector store from those
parts, and any change to the documents or settings triggers a rebuild.

    python -m app.rag build                    # build (or reuse) every knowledge base and "all"
    python -m app.rag build --kb support --force
    python -m app.rag search --kb support "How much is Acme Unlimited?"
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import faiss
import numpy as np
from langchain_community.docstore.in_memory import InMemoryDocstore
from langchain_community.vectorstores import FAISS
from langchain_community.vectorstores.utils import DistanceStrategy
from langchain_core.documents import Document
from langchain_core.vectorstores import VectorStoreRetriever
from langchain_text_splitters import MarkdownHeaderTextSplitter, RecursiveCharacterTextSplitter
from tqdm import tqdm

from app.config import ConfigError, Settings, load_settings
from app.content import KB_SUFFIXES, NAME_PATTERN, KBDocument, Problem, load_kb_domain
from app.embeddings import EMBEDDING_DIM, EMBEDDING_MODEL, EmbeddingModelMissing, embeddings

ALL = "all"
HEADERS = [("#", "h1"), ("##", "h2"), ("###", "h3")]
CHUNKING = {"chunk_size": 800, "chunk_overlap": 100, "headers": [marker for marker, _ in HEADERS]}
EMBED_BATCH = 64
MANIFEST_VERSION = 1

# Searches are one query at a time on a flat index: OpenMP threads only add spin-waiting when the CPU is shared
# (10k chunks on a busy 2-core machine: 0.9 ms with one thread, 15 ms with two). Only RAG uses faiss in-process.
faiss.omp_set_num_threads(1)


class RAGError(RuntimeError):
    """A knowledge base cannot be built or searched; the message says what to do."""


@dataclass(frozen=True)
class Citation:
    """One retrieved chunk: where it comes from and how close it is to the question (cosine, 0-1)."""

    title: str
    source: str
    path: str
    heading: str
    score: float
    text: str


def _cosine_score(similarity: float) -> float:
    """Normalised embeddings: inner product is cosine; clip to LangChain's 0-1 relevance range."""
    return min(1.0, max(0.0, float(similarity)))


def split_documents(docs: list[KBDocument], kb_root: Path) -> list[Document]:
    """Markdown sections first, then ~800-character chunks; metadata keeps title, source, path and heading."""
    by_heading = MarkdownHeaderTextSplitter(HEADERS, strip_headers=False)
    by_size = RecursiveCharacterTextSplitter(chunk_size=CHUNKING["chunk_size"], chunk_overlap=CHUNKING["chunk_overlap"])
    chunks: list[Document] = []
    for doc in docs:
        sections = by_heading.split_text(doc.text)
        for section in sections:
            heading = " > ".join(section.metadata[key] for _, key in HEADERS if key in section.metadata)
            section.metadata = {
                "title": doc.title,
                "source": doc.source,
                "path": doc.path.relative_to(kb_root).as_posix(),
                "heading": heading,
                "domain": doc.domain,
            }
        chunks += by_size.split_documents(sections)
    return chunks


@dataclass
class KnowledgeBase:
    """A loaded index: LangChain's FAISS vector store plus the manifest it was built from."""

    name: str
    vectorstore: FAISS
    manifest: dict[str, Any]
    rebuilt: bool = False

    @property
    def problems(self) -> list[str]:
        """Files skipped at build time (not UTF-8, too large, empty), as `path: what to do` lines."""
        return list(self.manifest.get("problems", []))

    def as_retriever(self, k: int) -> VectorStoreRetriever:
        return self.vectorstore.as_retriever(search_kwargs={"k": k})

    def search(self, question: str, k: int) -> list[Citation]:
        hits = self.vectorstore.similarity_search_with_relevance_scores(question, k=k)
        return [
            Citation(
                title=doc.metadata["title"],
                source=doc.metadata["source"],
                path=doc.metadata["path"],
                heading=doc.metadata["heading"],
                score=round(score, 4),
                text=doc.page_content,
            )
            for doc, score in hits
        ]


def vectorstore_from_parts(index: Any, chunks: list[Document]) -> FAISS:
    """LangChain's FAISS store from a faiss index and its chunks in index order (ids are the positions)."""
    ids = [str(position) for position in range(len(chunks))]
    return FAISS(
        embeddings(),
        index,
        InMemoryDocstore(dict(zip(ids, chunks, strict=True))),
        dict(enumerate(ids)),
        relevance_score_fn=_cosine_score,
        distance_strategy=DistanceStrategy.MAX_INNER_PRODUCT,
    )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class RAGStore:
    """Every knowledge base of one settings object: validated names, cached indexes, retrieval."""

    settings: Settings
    _loaded: dict[str, KnowledgeBase] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, init=False, repr=False)

    @property
    def kb_root(self) -> Path:
        return self.settings.paths.kb

    def names(self) -> list[str]:
        """Each folder under kb/ with a valid name, then "all"."""
        if not self.kb_root.is_dir():
            return []
        domains = sorted(p.name for p in self.kb_root.iterdir() if p.is_dir() and re.fullmatch(NAME_PATTERN, p.name))
        return [*domains, ALL] if domains else []

    def folders(self, kb: str) -> list[Path]:
        """The folders a knowledge base is made of; raises RAGError for a bad or unknown name."""
        if not re.fullmatch(NAME_PATTERN, kb or ""):
            raise RAGError(f"invalid knowledge-base name {kb!r}: use letters, digits, '-' and '_' only")
        if not self.kb_root.is_dir():
            raise RAGError(f"knowledge-base folder {self.kb_root} not found: create it (or set paths.kb)")
        if kb == ALL:
            folders = [self.kb_root / name for name in self.names() if name != ALL]
            if not folders:
                raise RAGError(f"no knowledge bases: add a folder {self.kb_root}/<name>/ with .md or .txt files")
            return folders
        folder = self.kb_root / kb
        if not folder.is_dir():
            known = ", ".join(self.names()) or "none"
            raise RAGError(
                f"unknown knowledge base '{kb}' (known: {known}); create {folder}/ with .md or .txt files to add it"
            )
        return [folder]

    def index_dir(self, kb: str) -> Path:
        return self.settings.paths.data / "rag" / kb

    def fingerprint(self, kb: str) -> dict[str, Any]:
        """What an index depends on: every document file's hash, the embedding model and the chunking."""
        files = {
            path.relative_to(self.kb_root).as_posix(): _sha256(path)
            for folder in self.folders(kb)
            for path in sorted(folder.rglob("*"))
            if path.is_file() and path.suffix.lower() in KB_SUFFIXES
        }
        return {
            "version": MANIFEST_VERSION,
            "kb": kb,
            "embedding": {"model": EMBEDDING_MODEL, "dimension": EMBEDDING_DIM, "normalized": True},
            "chunking": CHUNKING,
            "files": files,
        }

    def build(self, kb: str) -> KnowledgeBase:
        """Index one knowledge base and write it to `index_dir(kb)`; "all" merges the (ensured) domain indexes."""
        fingerprint = self.fingerprint(kb)
        chunks, vectors, documents, problems = self._merge_domains() if kb == ALL else self._embed(kb)
        index = faiss.IndexFlatIP(EMBEDDING_DIM)
        index.add(vectors)
        manifest = {
            **fingerprint,
            "chunks": len(chunks),
            "documents": documents,
            "problems": problems,
            "built_at": datetime.now(UTC).isoformat(timespec="microseconds"),
        }
        self._write(kb, index, chunks, manifest)
        return KnowledgeBase(kb, vectorstore_from_parts(index, chunks), manifest, rebuilt=True)

    def _embed(self, kb: str) -> tuple[list[Document], np.ndarray, int, list[str]]:
        """Load, split and embed the documents of one domain: chunks, their vectors, document count, problems."""
        docs: list[KBDocument] = []
        problems: list[Problem] = []
        for folder in self.folders(kb):
            found, trouble = load_kb_domain(folder)
            docs += found
            problems += trouble
        if not docs:
            details = "; ".join(str(p) for p in problems) or "no documents"
            raise RAGError(
                f"knowledge base '{kb}' has no usable documents ({details}); add UTF-8 .md or .txt files to "
                f"{self.kb_root / kb} and run `python -m app.rag build --kb {kb}`"
            )
        chunks = split_documents(docs, self.kb_root)
        texts = [chunk.page_content for chunk in chunks]
        vectors: list[list[float]] = []
        with tqdm(total=len(texts), desc=f"Embedding kb '{kb}'", unit="chunk") as bar:
            for start in range(0, len(texts), EMBED_BATCH):
                batch = texts[start : start + EMBED_BATCH]
                vectors += embeddings().embed_documents(batch)
                bar.update(len(batch))
        return chunks, np.asarray(vectors, dtype="float32"), len(docs), [str(p) for p in problems]

    def _merge_domains(self) -> tuple[list[Document], np.ndarray, int, list[str]]:
        """ "all" without embedding anything twice: the chunks and vectors of every domain index that builds."""
        chunks: list[Document] = []
        vectors: list[np.ndarray] = []
        documents, problems = 0, []
        for domain in self.names():
            if domain == ALL:
                continue
            try:
                part = self._ensure(domain)
            except RAGError as exc:
                problems.append(str(exc))
                continue
            store = part.vectorstore
            chunks += [cast(Document, store.docstore.search(store.index_to_docstore_id[i]))
                       for i in range(store.index.ntotal)]  # fmt: skip
            vectors.append(store.index.reconstruct_n(0, store.index.ntotal))
            documents += part.manifest["documents"]
            problems += part.problems
        if not chunks:
            raise RAGError(f"no knowledge base could be built: {'; '.join(problems)}")
        return chunks, np.vstack(vectors), documents, problems

    def _write(self, kb: str, index: Any, chunks: list[Document], manifest: dict[str, Any]) -> None:
        """Manifest last (and removed first): a half-written index never looks up to date."""
        folder = self.index_dir(kb)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "manifest.json").unlink(missing_ok=True)
        faiss.write_index(index, str(folder / "index.faiss"))
        docs = [{"text": c.page_content, "metadata": c.metadata} for c in chunks]
        (folder / "docs.json").write_text(json.dumps(docs, ensure_ascii=False), encoding="utf-8")
        (folder / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")

    def load(self, kb: str) -> KnowledgeBase | None:
        """The stored index if it matches the current documents and settings, else None (JSON + faiss only)."""
        folder = self.index_dir(kb)
        try:
            manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
            current = self.fingerprint(kb)
            if not isinstance(manifest, dict) or {key: manifest.get(key) for key in current} != current:
                return None
            index = faiss.read_index(str(folder / "index.faiss"))
            docs = json.loads((folder / "docs.json").read_text(encoding="utf-8"))
            chunks = [Document(page_content=d["text"], metadata=d["metadata"]) for d in docs]
        except (OSError, ValueError, KeyError, TypeError, RuntimeError):  # missing, corrupt or foreign: rebuild
            return None
        if index.ntotal != len(chunks) or index.d != EMBEDDING_DIM:
            return None
        return KnowledgeBase(kb, vectorstore_from_parts(index, chunks), manifest)

    def ensure_index(self, kb: str, force: bool = False) -> KnowledgeBase:
        """The up-to-date index of `kb`: reused from disk when nothing changed, rebuilt otherwise."""
        with self._lock:
            try:
                return self._ensure(kb, force)
            except EmbeddingModelMissing as exc:  # callers handle one error type for "RAG cannot run"
                raise RAGError(str(exc)) from None

    def _ensure(self, kb: str, force: bool = False) -> KnowledgeBase:
        loaded = None if force else self.load(kb)
        self._loaded[kb] = loaded or self.build(kb)
        return self._loaded[kb]

    def get(self, kb: str) -> KnowledgeBase:
        """The index loaded in this process (ensured on first use)."""
        with self._lock:
            cached = self._loaded.get(kb)
        return cached or self.ensure_index(kb)

    def retriever(self, kb: str, k: int | None = None) -> VectorStoreRetriever:
        """A LangChain retriever over `kb` (for chains: `retriever.invoke(question)` -> Documents)."""
        return self.get(kb).as_retriever(k or self.settings.rag.passages)

    def retrieve(self, kb: str, question: str, k: int | None = None) -> list[Citation]:
        """The `k` chunks of `kb` closest to `question`, best first (default: the `rag.passages` a prompt gets)."""
        if not question.strip():
            raise RAGError("empty question: type a question to search the knowledge base")
        return self.get(kb).search(question, k or self.settings.rag.passages)


def build_indexes(store: RAGStore, kbs: list[str] | None = None, force: bool = False) -> int:
    """Ensure each knowledge base (every one by default): a status line each, problems and errors on stderr.

    Returns how many failed; the others are still built, so one broken folder never blocks the rest.
    """
    failed = 0
    for kb in kbs or store.names():
        try:
            built = store.ensure_index(kb, force=force)
        except RAGError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
            continue
        for problem in built.problems:
            print(f"problem: {problem}", file=sys.stderr)
        state = "built" if built.rebuilt else "up to date"
        print(f"{kb:10} {state:10} {built.manifest['documents']:4} docs {built.manifest['chunks']:5} chunks")
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.rag", description="Build and search the RAG indexes.")
    parser.add_argument("--config", type=Path, help="YAML settings file (default: ./config.yaml if present)")
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build every knowledge base (or those named) unless up to date")
    build.add_argument("--kb", nargs="+", metavar="NAME", help="knowledge bases to build (default: all of them)")
    build.add_argument("--force", action="store_true", help="rebuild even when nothing changed")
    search = commands.add_parser("search", help="print the chunks retrieved for a question")
    search.add_argument("--kb", default=ALL, metavar="NAME", help="knowledge base to search (default: all)")
    search.add_argument("-k", type=int, help="number of chunks (default: the rag.passages setting)")
    search.add_argument("question")
    args = parser.parse_args(argv)
    try:
        store = RAGStore(load_settings(args.config))
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    if args.command == "search":
        try:
            citations = store.retrieve(args.kb, args.question, args.k)
        except RAGError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        for number, c in enumerate(citations, 1):
            print(f"[{number}] {c.score:.3f}  {c.title} — {c.heading}  ({c.path})\n    {c.text[:200]!r}")
        return 0
    if not (args.kb or store.names()):
        print(f"error: no knowledge bases under {store.kb_root}", file=sys.stderr)
        return 1
    return 1 if build_indexes(store, args.kb, force=args.force) else 0


if __name__ == "__main__":
    sys.exit(main())
