"""What answers in one panel: a named, storable `Configuration` and the `PanelConfig` it resolves to.

A `Configuration` says *which* setup answers (base model or a LoRA adapter, a persona by name, RAG over a knowledge
base, sampling); it is what arena votes and eval results store (`model_dump()`, plain JSON) and what ratings and
tables are labelled by. `PanelConfig` is the same thing resolved for one request: the served model's name and the
persona's system prompt text (the Compare tab also builds it directly, e.g. from a custom system prompt).

    Configuration(adapter="legal", persona="legal", rag="legal").label  # "legal adapter + legal persona + RAG(legal)"
    Configuration.for_domain("adapter+persona+rag", "legal")              # the same, by spec
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.content import NAME_PATTERN, Persona

DEFAULT_TEMPERATURE = 0.7
DEFAULT_TOP_P = 1.0
DEFAULT_MAX_TOKENS = 256
# The classic comparisons, as specs for one domain (see Configuration.for_domain); the first is the default.
PRESETS: dict[str, tuple[str, ...]] = {
    "base + persona vs adapter + persona": ("base+persona", "adapter+persona"),
    "adapter + persona vs base + persona + RAG": ("adapter+persona", "base+persona+rag"),
    "base vs base + persona": ("base", "base+persona"),
    "classic four-way": ("base+persona", "adapter+persona", "base+persona+rag", "adapter+rag"),
}


@dataclass(frozen=True)
class PanelConfig:
    """What answers in one panel, resolved: the model name the server knows, the system prompt text, the KB."""

    model: str | None
    system_prompt: str | None = None
    kb: str | None = None  # knowledge base to retrieve from; None = RAG off
    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = DEFAULT_TOP_P
    max_tokens: int = DEFAULT_MAX_TOKENS
    seed: int | None = None


class Configuration(BaseModel):
    """One competing setup, by name. Stored as JSON with votes and eval results; read back with `model_validate`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    adapter: str | None = Field(None, pattern=NAME_PATTERN, description="LoRA adapter name; None = the base model")
    persona: str | None = Field(None, pattern=NAME_PATTERN, description="persona whose system prompt is used")
    rag: str | None = Field(None, pattern=NAME_PATTERN, description="knowledge base to retrieve from; None = no RAG")
    temperature: float = Field(DEFAULT_TEMPERATURE, ge=0.0, le=2.0)
    top_p: float = Field(DEFAULT_TOP_P, gt=0.0, le=1.0)
    max_tokens: int = Field(DEFAULT_MAX_TOKENS, ge=1)
    seed: int | None = None

    @property
    def label(self) -> str:
        """Stable human name, e.g. "legal adapter + legal persona + RAG(legal)"; sampling shown when not default."""
        parts = [f"{self.adapter} adapter" if self.adapter else "base model"]
        if self.persona:
            parts.append(f"{self.persona} persona")
        if self.rag:
            parts.append(f"RAG({self.rag})")
        sampling = []
        if self.temperature != DEFAULT_TEMPERATURE:
            sampling.append(f"T={self.temperature:g}")
        if self.top_p != DEFAULT_TOP_P:
            sampling.append(f"top-p={self.top_p:g}")
        if self.max_tokens != DEFAULT_MAX_TOKENS:
            sampling.append(f"{self.max_tokens} tokens")
        if self.seed is not None:
            sampling.append(f"seed {self.seed}")
        return " + ".join(parts) + (f" ({', '.join(sampling)})" if sampling else "")

    @classmethod
    def for_domain(cls, spec: str, domain: str, **sampling: Any) -> Configuration:
        """A configuration from a spec such as "adapter+persona+rag": `base` or `adapter` (the domain's adapter),
        then optionally `persona` (the domain's persona) and `rag` (the domain's knowledge base)."""
        parts = [part.strip().lower() for part in spec.split("+")]
        if not parts or parts[0] not in ("base", "adapter") or not set(parts[1:]) <= {"persona", "rag"}:
            raise ValueError(
                f"configuration spec {spec!r}: expected base or adapter, then optionally +persona and +rag "
                "(e.g. adapter+persona+rag)"
            )
        return cls(
            adapter=domain if parts[0] == "adapter" else None,
            persona=domain if "persona" in parts else None,
            rag=domain if "rag" in parts else None,
            **sampling,
        )

    def resolve(self, personas: Mapping[str, Persona], base_model: str) -> PanelConfig:
        """The request-ready form; raises ValueError naming the persona when it is not among `personas`."""
        if self.persona and self.persona not in personas:
            known = ", ".join(sorted(personas)) or "none"
            raise ValueError(f"unknown persona '{self.persona}' (known: {known}); add personas/{self.persona}.yaml")
        return PanelConfig(
            model=self.adapter or base_model,
            system_prompt=personas[self.persona].system_prompt if self.persona else None,
            kb=self.rag,
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=self.max_tokens,
            seed=self.seed,
        )
