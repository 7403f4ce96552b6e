"""One Compare panel's inputs to the `/answer_all` endpoint, in app.ui.panel.FIELDS order (its conversation is
session State, not an input)."""

from __future__ import annotations

from typing import Any


def panel(model: str | None = "base", *, persona: str = "none", system: str = "", temperature: float = 0.0,
          top_p: float = 1.0, tokens: int = 32, seed: int | None = None, repetition_penalty: float = 1.0,
          frequency_penalty: float = 0.0, presence_penalty: float = 0.0, rag: bool = False,
          kb: str | None = "support", brief: bool = True) -> list[Any]:  # fmt: skip
    seed_text = "" if seed is None else str(seed)  # a Textbox: blank means random
    return [model, persona, system, temperature, top_p, tokens, seed_text, repetition_penalty, frequency_penalty,
            presence_penalty, rag, kb, brief]  # fmt: skip
