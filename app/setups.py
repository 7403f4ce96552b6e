"""What answers in a Compare panel, as an Arena contender and in an Eval row: one `Setup`, and the named specs.

A Setup is the model (the base model or a LoRA adapter), the system prompt (a persona's, or a custom one), RAG over
a knowledge base or not, and sampling. It is stored as JSON with votes and eval results (`model_dump()`), written
as a short `spec` that parses back to the same Setup, and shown by its `label`:

    Setup(adapter="legal", persona="legal", rag="legal", temperature=0).spec
        # 'adapter:legal+persona:legal+rag:legal@temperature=0'
    Setup.parse("adapter+persona+rag", domain)   # names left out come from the domain (app.content.Domain)

The named specs below (`RECIPES` and the lists built from them) leave the names out: "adapter+persona" means the
domain's adapter with the domain's persona, whichever domain is chosen. The base model has no name here; it is the
one the server lists (`/v1/models`), found where a request is made (app.playground).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from app.content import NAME_PATTERN, Domain, Persona

DEFAULT_TEMPERATURE = 0.7
DEFAULT_TOP_P = 1.0
DEFAULT_MAX_TOKENS = 256
# The `@key=value` part of a spec, in this order: sampling, then `brief`. The repetition controls are vLLM's:
# repetition_penalty divides the logits of tokens already in the prompt or answer (1 = off); frequency and presence
# penalties are OpenAI's.
SAMPLING = ("temperature", "top_p", "max_tokens", "seed", "repetition_penalty", "frequency_penalty", "presence_penalty",
            "brief")  # fmt: skip
REPETITION = ("repetition_penalty", "frequency_penalty", "presence_penalty")
# What the Compare panels, the Arena and the eval start from, chosen by measurement on the eval sets (docs/eval.md,
# "Repetition"): a frequency penalty of 1.0 ends nearly all loops and raises terminology (0.5, the default until
# 2026-12-06, left loops in a fifth of base + persona answers). A Setup's own defaults stay neutral (1, 0, 0), the
# values earlier votes and cached answers used.
RECOMMENDED: dict[str, float] = {"repetition_penalty": 1.0, "frequency_penalty": 1.0, "presence_penalty": 0.0}

# Every domain-relative spec, in the one order charts and tables use (colours mean the same everywhere).
RECIPES = (
    "base", "base+rag", "base+persona", "base+persona+rag",
    "adapter", "adapter+rag", "adapter+persona", "adapter+persona+rag",
)  # fmt: skip
# The roles the verdict compares (docs/fine-tune-or-not.md): prompt engineering, fine-tuning, RAG, both.
PROMPT, ADAPTER, RAG, COMBINED = "base+persona", "adapter+persona", "base+persona+rag", "adapter+persona+rag"
EVAL_MATRIX = ("base", "base+rag", PROMPT, RAG, ADAPTER, COMBINED)  # `python -m app.eval`'s default rows
MODEL_CARD_ROWS = (PROMPT, ADAPTER, RAG, COMBINED)  # the adapter-vs-base table of a model card
ARENA_POOL = ("base", PROMPT, RAG, ADAPTER, "adapter", COMBINED)  # what may compete in the Arena
ARENA_DEFAULT_POOL = (PROMPT, ADAPTER, RAG)  # ticked by default
# Compare tab presets: one spec per panel; the first preset is the default.
PRESETS: dict[str, tuple[str, ...]] = {
    "base + persona vs adapter + persona": (PROMPT, ADAPTER),
    "adapter + persona vs base + persona + RAG": (ADAPTER, RAG),
    "base vs base + persona": ("base", PROMPT),
    "classic four-way": (PROMPT, ADAPTER, RAG, "adapter+rag"),
}

_PART = re.compile(r"(?P<kind>persona|rag|prompt)(?::(?P<value>.*))?", re.DOTALL)
_PIECE = re.compile(r'prompt:"(?:[^"\\]|\\.)*"|[^+@]*')  # a JSON-quoted prompt, or anything up to + or @


class SpecError(ValueError):
    """A spec that does not describe a Setup; the message shows the expected form."""


class Setup(BaseModel):
    """One answering setup. `persona` and `system_prompt` exclude each other: a custom prompt is not a persona's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    adapter: str | None = Field(None, pattern=NAME_PATTERN, description="LoRA adapter name; None = the base model")
    persona: str | None = Field(None, pattern=NAME_PATTERN, description="persona whose system prompt is used")
    system_prompt: str | None = Field(None, min_length=1, description="a custom system prompt instead of a persona")
    rag: str | None = Field(None, pattern=NAME_PATTERN, description="knowledge base to retrieve from; None = no RAG")
    temperature: float = Field(DEFAULT_TEMPERATURE, ge=0.0, le=2.0)
    top_p: float = Field(DEFAULT_TOP_P, gt=0.0, le=1.0)
    max_tokens: int = Field(DEFAULT_MAX_TOKENS, ge=1, le=8192)
    seed: int | None = Field(None, ge=0)
    repetition_penalty: float = Field(1.0, ge=1.0, le=2.0, description="1 = off; 1.1-1.3 curbs loops")
    frequency_penalty: float = Field(0.0, ge=0.0, le=2.0)
    presence_penalty: float = Field(0.0, ge=0.0, le=2.0)
    brief: bool = Field(
        True,
        description="with RAG, ask for one short sentence (app.prompts.RAG_QUESTION_LEAD): fewer made-up figures and "
        "loops from a small model, less terminology (docs/rag.md); False lets it answer in full",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.persona and self.system_prompt:
            raise ValueError("a setup has a persona or a custom system prompt, not both")
        if not self.brief and not self.rag:
            raise ValueError("brief=0 (a full answer instead of one short sentence) applies to RAG only: add +rag")
        return self

    def system_text(self, personas: Mapping[str, Persona]) -> str | None:
        """The system prompt text sent to the model; ValueError naming the persona when it is not in `personas`."""
        if self.persona is None:
            return self.system_prompt
        if self.persona not in personas:
            known = ", ".join(sorted(personas)) or "none"
            raise ValueError(f"unknown persona '{self.persona}' (known: {known}); add personas/{self.persona}.yaml")
        return personas[self.persona].system_prompt

    def record(self) -> dict[str, Any]:
        """The Setup as stored with votes and eval answers (JSON). Fields added later are left out while they have
        their default (the value earlier records meant), so records and cache keys written before them stay valid."""
        later = ("system_prompt", *REPETITION, "brief")
        return self.model_dump(mode="json", exclude={name for name in later if getattr(self, name) == _DEFAULTS[name]})

    @property
    def sampling(self) -> dict[str, Any]:
        """The `@` values (sampling, and `brief`) that differ from the defaults, in SAMPLING order."""
        defaults = Setup()
        return {key: getattr(self, key) for key in SAMPLING if getattr(self, key) != getattr(defaults, key)}

    @property
    def spec(self) -> str:
        """A short string that `Setup.parse` turns back into this Setup."""
        parts = [f"adapter:{self.adapter}" if self.adapter else "base"]
        if self.persona:
            parts.append(f"persona:{self.persona}")
        if self.system_prompt:
            parts.append(f"prompt:{json.dumps(self.system_prompt, ensure_ascii=False)}")
        if self.rag:
            parts.append(f"rag:{self.rag}")
        sampling = ",".join(f"{key}={_number(value)}" for key, value in self.sampling.items())
        return "+".join(parts) + (f"@{sampling}" if sampling else "")

    def relative_spec(self, domain: Domain) -> str | None:
        """The named spec ("adapter+persona+rag") this Setup is for `domain`, or None when it is not one of them."""
        parts = ["adapter" if self.adapter else "base"]
        parts += ["persona"] * bool(self.persona) + ["rag"] * bool(self.rag)
        spec = "+".join(parts)
        same = Setup.parse(spec, domain).model_copy(update={k: getattr(self, k) for k in SAMPLING}) == self
        return spec if same and not self.system_prompt else None

    @property
    def label(self) -> str:
        """Stable human name, e.g. "legal adapter + legal persona + RAG(legal) (T=0)"; votes are rated by it."""
        parts = [f"{self.adapter} adapter" if self.adapter else "base model"]
        if self.persona:
            parts.append(f"{self.persona} persona")
        if self.system_prompt:
            parts.append("custom prompt")
        if self.rag:
            parts.append(f"RAG({self.rag})")
        names = {
            "temperature": "T={:g}",
            "top_p": "top-p={:g}",
            "max_tokens": "{} tokens",
            "seed": "seed {}",
            "repetition_penalty": "rep {:g}",
            "frequency_penalty": "freq {:g}",
            "presence_penalty": "pres {:g}",
            "brief": "full answer",  # shown only when False: the default asks RAG for one short sentence
        }
        sampling = [names[key].format(value) for key, value in self.sampling.items()]
        return " + ".join(parts) + (f" ({', '.join(sampling)})" if sampling else "")

    @classmethod
    def parse(cls, spec: str, domain: Domain | None = None, **sampling: Any) -> Setup:
        """The Setup a spec describes. A part without a name (`adapter`, `persona`, `rag`) takes the domain's;
        `sampling` values apply where the spec's `@...` does not set them. SpecError says what is wrong."""
        (model, *parts), tail = _pieces(spec.strip())
        values: dict[str, Any] = {}
        if model not in ("base", "adapter") and not model.startswith("adapter:"):
            raise SpecError(
                f"spec {spec!r}: expected base or adapter[:NAME] first, then +persona[:NAME], +rag[:NAME] "
                'or +prompt:"..." and optionally @temperature=0,max_tokens=64 (e.g. adapter+persona+rag)'
            )
        if model != "base":
            values["adapter"] = model.partition(":")[2] or _domain_name(domain, "adapter", spec)
        for part in parts:
            match = _PART.fullmatch(part)
            if not match:
                raise SpecError(f"spec {spec!r}: unknown part {part!r}; expected persona, rag or prompt")
            kind, value = match["kind"], match["value"]
            key = {"persona": "persona", "rag": "rag", "prompt": "system_prompt"}[kind]
            if key in values:
                raise SpecError(f"spec {spec!r}: {kind} given twice")
            if kind == "prompt":
                values[key] = _prompt(value, spec)
            else:
                values[key] = value or _domain_name(domain, kind, spec)
        values = {**sampling, **values, **_sampling(tail, spec)}
        try:
            return cls(**values)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'setup'}: {e['msg']}" for e in exc.errors())
            raise SpecError(f"spec {spec!r}: {problems}") from None


_DEFAULTS = Setup().model_dump()


def _number(value: float) -> str:
    """Shortest text that reads back as the same number: 0 for 0.0, 0.7 for 0.7."""
    return str(int(value)) if float(value).is_integer() else repr(value)


def _pieces(spec: str) -> tuple[list[str], str]:
    """The `+`-separated parts of a spec and its `@...` sampling tail; a quoted prompt may contain `+` and `@`."""
    parts: list[str] = []
    position = 0
    while True:
        match = _PIECE.match(spec, position)
        assert match is not None  # the pattern also matches the empty string
        parts.append(match.group(0).strip())
        position = match.end()
        if position >= len(spec):
            return parts, ""
        if spec[position] == "@":
            return parts, spec[position + 1 :]
        position += 1  # the "+"


def _prompt(value: str | None, spec: str) -> str:
    try:
        text = json.loads(value or "")
    except json.JSONDecodeError:
        text = None
    if not isinstance(text, str):
        raise SpecError(f'spec {spec!r}: a custom prompt is written as prompt:"..." (a JSON string)')
    return text


def _domain_name(domain: Domain | None, kind: str, spec: str) -> str:
    if domain is None:
        raise SpecError(f"spec {spec!r}: '{kind}' without a name needs a domain (or write {kind}:NAME)")
    name = {"adapter": domain.adapter, "persona": domain.persona, "rag": domain.knowledge_base}[kind]
    if name is None:
        raise SpecError(f"spec {spec!r}: domain '{domain.name}' has no knowledge base (add kb/{domain.name}/)")
    return name


def _sampling(tail: str, spec: str) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in tail.split(","))):
        key, sep, value = item.partition("=")
        if not sep or key not in SAMPLING:
            raise SpecError(f"spec {spec!r}: expected @key=value with keys {', '.join(SAMPLING)}, got {item!r}")
        values[key] = value
    return values


def canonical_specs(text: str) -> list[str]:
    """Comma-separated named specs ("base, adapter+rag+persona") in canonical order of parts, duplicates dropped.

    SpecError for an unknown one; used by `python -m app.eval --configs`."""
    specs: list[str] = []
    for raw in filter(None, (part.strip().lower() for part in text.split(","))):
        parts = raw.split("+")
        spec = "+".join([parts[0], *(p for p in ("persona", "rag") if p in parts[1:])])
        if spec not in RECIPES or len(set(parts[1:])) != len(parts) - 1 or not set(parts[1:]) <= {"persona", "rag"}:
            raise SpecError(f"configuration spec {raw!r}: expected base or adapter, then optionally +persona and +rag "
                            "(e.g. adapter+persona+rag)")  # fmt: skip
        if spec not in specs:
            specs.append(spec)
    if not specs:
        raise SpecError("no configuration given: expected e.g. base,base+persona,adapter+persona")
    return specs


def recipe_order(spec: str) -> tuple[int, str]:
    """Sort key that puts named specs in RECIPES order (others after, alphabetically)."""
    return (RECIPES.index(spec) if spec in RECIPES else len(RECIPES), spec)
