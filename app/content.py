"""Domain content: personas (with style rules and glossaries), knowledge-base documents, training data, eval sets.

Everything is loaded into pydantic objects that training, RAG, scoring and the UI share. Loading never stops at
the first broken file: each problem becomes a `Problem` naming the file, the line or key and what was expected,
and the rest still loads. Formats are documented in docs/content.md.

    python -m app.content check     # validate every shipped file; exit 1 if anything is wrong
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from app.config import ConfigError, load_settings

NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"  # adapters, personas, knowledge bases, domains: file and folder names
T = TypeVar("T", bound=BaseModel)
KB_SUFFIXES = (".md", ".txt")
MAX_KB_FILE_BYTES = 2_000_000  # a larger "document" is almost certainly a mistake (a dump, a binary)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StyleRules(_Strict):
    """How a persona's answers must read; brand-voice scoring checks each rule separately."""

    tone: str = ""
    min_words: int = Field(40, ge=1)
    max_words: int = Field(180, ge=1)
    opening_phrases: list[str] = []
    next_step_phrases: list[str] = []
    must_include: list[str] = []
    must_not_include: list[str] = []
    sign_off: str | None = None
    max_reading_grade: float | None = None


class GlossaryEntry(_Strict):
    term: str = Field(min_length=1)
    variants: list[str] = []
    definition: str = Field(min_length=1)
    misuses: list[str] = []

    @property
    def forms(self) -> list[str]:
        """The canonical term followed by its accepted variants."""
        return [self.term, *(v for v in self.variants if v.lower() != self.term.lower())]


class Persona(_Strict):
    """A persona file. One with a `domain` also says what makes that domain (see `Domain`): the fields after it."""

    name: str = Field(pattern=NAME_PATTERN)
    display_name: str
    domain: str | None = Field(None, pattern=NAME_PATTERN)
    disclaimer: str
    system_prompt: str = Field(min_length=1)
    style: StyleRules = StyleRules()
    glossary: list[GlossaryEntry] = []
    adapter: str | None = Field(None, pattern=NAME_PATTERN, description="the domain's LoRA adapter; default: its name")
    knowledge_base: str | None = Field(None, pattern=NAME_PATTERN, description="its kb/ folder; default: its name")
    facts_change_often: bool = Field(False, description="prices or rules change faster than one would retrain")
    brand_voice: bool = Field(False, description="the style rules are a brand voice that answers are scored on")
    example_questions: list[str] = Field(default_factory=list, description="default: the domain's first eval questions")


EXAMPLES_PER_DOMAIN = 6


class Domain(_Strict):
    """What distinguishes a domain, read from its persona file: the adapter, persona and knowledge base that belong to
    it, whether its facts change often, whether it has a brand voice, and its example questions. Adding a domain is
    adding files (docs/content.md); no code names one."""

    name: str
    persona: str
    adapter: str
    knowledge_base: str | None  # None: the domain has no kb/ folder
    facts_change_often: bool = False
    brand_voice: bool = False
    examples: list[str] = []


class Message(_Strict):
    role: Literal["system", "user", "assistant"]
    content: str


class TrainExample(_Strict):
    messages: list[Message] = Field(min_length=2)

    @model_validator(mode="after")
    def _alternates(self) -> TrainExample:
        roles = [m.role for m in self.messages if m.role != "system"]
        if not roles or roles[-1] != "assistant" or roles[::2] != ["user"] * len(roles[::2]):
            raise ValueError("expected user/assistant turns alternating, starting with user, ending with assistant")
        if any(m.role == "system" for m in self.messages[1:]):
            raise ValueError("a system message may only come first")
        return self

    @property
    def system(self) -> str | None:
        return self.messages[0].content if self.messages[0].role == "system" else None

    def texts(self, role: str) -> list[str]:
        return [m.content for m in self.messages if m.role == role]


class EvalItem(_Strict):
    id: str = Field(min_length=1)
    domain: str
    question: str = Field(min_length=1)
    expected_terms: list[list[str]] = Field(min_length=1)
    forbidden: list[str] = []
    reference: str = ""
    split: str = Field("eval", description="set from the file's folder: evals/ or evals/paraphrase/")

    @model_validator(mode="after")
    def _groups_not_empty(self) -> EvalItem:
        if any(not group for group in self.expected_terms):
            raise ValueError("expected_terms: each group needs at least one term")
        return self


class KBDocument(_Strict):
    domain: str
    path: Path
    title: str
    source: str
    text: str  # the body, without the title and source lines


@dataclass(frozen=True)
class Problem:
    """One thing wrong in one file: `path: where: what was expected`."""

    path: Path
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.where + ': ' if self.where else ''}{self.message}"


def _pydantic_problems(path: Path, exc: ValidationError, prefix: str = "") -> list[Problem]:
    problems = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        where = " ".join(part for part in (prefix, key) if part)
        problems.append(Problem(path, where, err["msg"]))
    return problems


def load_persona(path: Path) -> tuple[Persona | None, list[Problem]]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        return None, [Problem(path, "", "not UTF-8 text")]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        return None, [Problem(path, f"line {mark.line + 1}" if mark else "", f"not valid YAML ({exc})")]
    if not isinstance(data, dict):
        return None, [Problem(path, "", "expected a mapping with name, display_name, system_prompt, ...")]
    try:
        persona = Persona.model_validate(data)
    except ValidationError as exc:
        return None, _pydantic_problems(path, exc)
    if persona.name != path.stem:
        return None, [Problem(path, "name", f"expected '{path.stem}' (the file name), got '{persona.name}'")]
    return persona, []


def load_jsonl(path: Path, model: type[T]) -> tuple[list[T], list[Problem]]:
    """Read one `model` per line; a bad line is a Problem naming its line number, the others still load."""
    items: list[T] = []
    problems: list[Problem] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        return [], [Problem(path, "", "not UTF-8 text")]
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            items.append(model.model_validate(json.loads(line)))
        except json.JSONDecodeError as exc:
            problems.append(Problem(path, f"line {number}", f"not valid JSON ({exc.msg})"))
        except ValidationError as exc:
            problems += _pydantic_problems(path, exc, f"line {number}")
    return items, problems


def parse_kb_text(domain: str, path: Path, text: str) -> KBDocument:
    """Markdown: '# Title' then 'Source: ...'; plain text: the file name is the title."""
    lines = text.splitlines()
    title, source, body_start = path.stem.replace("-", " ").capitalize(), "", 0
    if lines and lines[0].startswith("# "):
        title, body_start = lines[0][2:].strip(), 1
        if len(lines) > 1 and lines[1].lower().startswith("source:"):
            source, body_start = lines[1].split(":", 1)[1].strip(), 2
    body = "\n".join(lines[body_start:]).strip()
    return KBDocument(domain=domain, path=path, title=title, source=source, text=body)


def load_kb_domain(folder: Path) -> tuple[list[KBDocument], list[Problem]]:
    """Every .md/.txt document of one knowledge base (a folder under kb/)."""
    docs: list[KBDocument] = []
    problems: list[Problem] = []
    if not folder.is_dir():
        return [], [Problem(folder, "", "knowledge-base folder not found")]
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.suffix.lower() not in KB_SUFFIXES:
            continue
        if path.stat().st_size > MAX_KB_FILE_BYTES:
            problems.append(Problem(path, "", f"larger than {MAX_KB_FILE_BYTES // 1_000_000} MB; split it up"))
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            problems.append(Problem(path, f"byte {exc.start}", "not UTF-8 text; re-save it as UTF-8"))
            continue
        doc = parse_kb_text(folder.name, path, text)
        if not doc.text:
            problems.append(Problem(path, "", "empty document"))
            continue
        docs.append(doc)
    if not docs and not problems:
        problems.append(Problem(folder, "", "no .md or .txt documents"))
    return docs, problems


@dataclass
class Content:
    """Everything under personas/, kb/, adapters/*/train.jsonl and evals/, plus what failed to load."""

    personas: dict[str, Persona] = field(default_factory=dict)
    kb: dict[str, list[KBDocument]] = field(default_factory=dict)
    training: dict[str, list[TrainExample]] = field(default_factory=dict)
    evals: dict[str, list[EvalItem]] = field(default_factory=dict)
    paraphrases: dict[str, list[EvalItem]] = field(default_factory=dict)  # evals/paraphrase/: the generalisation split
    problems: list[Problem] = field(default_factory=list)

    domains: dict[str, Domain] = field(default_factory=dict)  # by name, sorted


def domains_of(personas: dict[str, Persona], kbs: Iterable[str], evals: dict[str, list[EvalItem]]) -> dict[str, Domain]:
    """One Domain per persona that names a domain (the first persona by file name wins a tie), sorted by name."""
    found: dict[str, Domain] = {}
    known_kbs = set(kbs)
    for persona in personas.values():
        name = persona.domain
        if not name or name in found:
            continue
        kb = persona.knowledge_base or name
        examples = persona.example_questions or [item.question for item in evals.get(name, [])[:EXAMPLES_PER_DOMAIN]]
        found[name] = Domain(
            name=name,
            persona=persona.name,
            adapter=persona.adapter or name,
            knowledge_base=kb if kb in known_kbs else None,
            facts_change_often=persona.facts_change_often,
            brand_voice=persona.brand_voice,
            examples=examples,
        )
    return dict(sorted(found.items()))


def _subfolders(folder: Path) -> Iterable[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def load_personas(folder: Path) -> tuple[dict[str, Persona], list[Problem]]:
    """The valid personas of a folder by name, and the problems of the files left out."""
    personas: dict[str, Persona] = {}
    problems: list[Problem] = []
    for path in sorted(folder.glob("*.yaml")):
        persona, found = load_persona(path)
        problems += found
        if persona:
            personas[persona.name] = persona
    return personas, problems


def load_content(
    personas_dir: Path = Path("personas"),
    kb_dir: Path = Path("kb"),
    adapters_dir: Path = Path("adapters"),
    evals_dir: Path = Path("evals"),
) -> Content:
    content = Content()
    content.personas, content.problems = load_personas(personas_dir)
    for folder in _subfolders(kb_dir):
        content.kb[folder.name], problems = load_kb_domain(folder)
        content.problems += problems
    for folder in _subfolders(adapters_dir):
        if (folder / "train.jsonl").is_file():
            content.training[folder.name], problems = load_jsonl(folder / "train.jsonl", TrainExample)
            content.problems += problems
    for path in sorted(evals_dir.glob("*.jsonl")):
        content.evals[path.stem], problems = load_jsonl(path, EvalItem)
        content.problems += problems
        content.problems += [
            Problem(path, item.id, f"domain is '{item.domain}', expected '{path.stem}' (the file name)")
            for item in content.evals[path.stem]
            if item.domain != path.stem
        ]
    for path in sorted((evals_dir / "paraphrase").glob("*.jsonl")):
        found, problems = load_jsonl(path, EvalItem)
        content.paraphrases[path.stem] = [item.model_copy(update={"split": "paraphrase"}) for item in found]
        content.problems += problems
    content.problems += _cross_checks(content, personas_dir, evals_dir)
    content.domains = domains_of(content.personas, (p.name for p in _subfolders(kb_dir)), content.evals)
    return content


def _cross_checks(content: Content, personas_dir: Path, evals_dir: Path) -> list[Problem]:
    """Consistency between files: training data speaks with its persona's system prompt, eval ids are unique."""
    problems = []
    for domain, examples in content.training.items():
        persona = content.personas.get(domain)
        if persona is None:
            continue
        wrong = [n for n, ex in enumerate(examples, 1) if ex.system is not None and ex.system != persona.system_prompt]
        if wrong:
            problems.append(
                Problem(
                    Path("adapters", domain, "train.jsonl"),
                    f"{len(wrong)} example(s), first #{wrong[0]}",
                    f"system message differs from personas/{domain}.yaml system_prompt",
                )
            )
    for domain, items in content.evals.items():
        seen: set[str] = set()
        for item in items:
            if item.id in seen:
                problems.append(Problem(evals_dir / f"{domain}.jsonl", item.id, "duplicate id"))
            seen.add(item.id)
    return problems


def word_count(text: str) -> int:
    return len(re.findall(r"\S+", text))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.content", description="Validate the domain content.")
    parser.add_argument("command", choices=["check"], help="check: validate every file, print problems")
    parser.add_argument("--config", type=Path, help="YAML settings file (default: ./config.yaml if present)")
    args = parser.parse_args(argv)
    try:
        paths = load_settings(args.config).paths
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    content = load_content(paths.personas, paths.kb, paths.adapters, paths.evals)
    for domain in sorted(set(content.kb) | set(content.training) | set(content.evals)):
        docs = content.kb.get(domain, [])
        words = sum(word_count(d.text) for d in docs)
        print(
            f"{domain:10} kb: {len(docs):3} docs {words:6} words   train: {len(content.training.get(domain, [])):4}"
            f"   evals: {len(content.evals.get(domain, [])):3}"
        )
    print(f"personas: {', '.join(sorted(content.personas))}; domains: {', '.join(content.domains)}")
    for problem in content.problems:
        print(f"problem: {problem}", file=sys.stderr)
    print(f"{len(content.problems)} problem(s)")
    return 1 if content.problems else 0


if __name__ == "__main__":
    sys.exit(main())
