"""One Compare answer panel: its components, and the Setup its values make.

A panel picks a model (the base model or any served adapter), a persona (or none, or an edited system prompt for a
custom one), RAG on/off with a knowledge base, and sampling. Its raw conversation is a `gr.State`; the Chatbot only
shows it (app.ui.display).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import gradio as gr
from pydantic import ValidationError

from app.config import Settings
from app.content import Persona
from app.rag import ALL
from app.setups import DEFAULT_TEMPERATURE, DEFAULT_TOP_P, RECOMMENDED, REPETITION, Setup
from app.ui.display import sources_markdown

NO_PERSONA = "none"
CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # all but tab, newline, carriage return
FIELDS = ("model", "history", "persona", "system_prompt", "temperature", "top_p", "max_tokens", "seed",
          "repetition_penalty", "frequency_penalty", "presence_penalty", "use_rag", "kb", "brief")  # fmt: skip


@dataclass
class PanelControls:
    """The components of one answer panel."""

    column: gr.Column
    model: gr.Dropdown
    persona: gr.Dropdown
    system_prompt: gr.Textbox
    temperature: gr.Slider
    top_p: gr.Slider
    max_tokens: gr.Slider
    seed: gr.Textbox
    repetition_penalty: gr.Slider
    frequency_penalty: gr.Slider
    presence_penalty: gr.Slider
    use_rag: gr.Checkbox
    kb: gr.Dropdown
    brief: gr.Checkbox
    chatbot: gr.Chatbot
    history: gr.State  # the raw conversation: [{"role", "content"}, ...]
    stats: gr.Markdown
    marks: gr.HTML
    citations: gr.State

    @property
    def inputs(self) -> list[Any]:
        """The answer event's inputs of this panel, in FIELDS order."""
        return [getattr(self, name) for name in FIELDS]


def repetition_sliders() -> tuple[gr.Slider, gr.Slider, gr.Slider]:
    """The repetition controls, starting at the values the eval chose (app.setups.RECOMMENDED)."""
    return (
        gr.Slider(1.0, 2.0, value=RECOMMENDED["repetition_penalty"], step=0.05, label="Repetition penalty (1 = off)"),
        gr.Slider(0.0, 2.0, value=RECOMMENDED["frequency_penalty"], step=0.1, label="Frequency penalty"),
        gr.Slider(0.0, 2.0, value=RECOMMENDED["presence_penalty"], step=0.1, label="Presence penalty"),
    )


def build_panel(index: int, settings: Settings, persona_names: list[str], kb_names: list[str]) -> PanelControls:
    """Lay out panel `index` (0-based) inside the current Blocks context."""
    with gr.Column(min_width=280, visible=index < settings.ui.panels) as column:
        model = gr.Dropdown(label=f"Panel {index + 1} model", choices=[], interactive=True, allow_custom_value=True)
        with gr.Row():
            persona = gr.Dropdown([NO_PERSONA, *persona_names], value=NO_PERSONA, label="Persona", min_width=120)
            use_rag = gr.Checkbox(label="RAG", value=False, min_width=70, scale=0)
            kb = gr.Dropdown(kb_names, value=ALL if ALL in kb_names else None, label="Knowledge base", min_width=110,
                             allow_custom_value=True)  # fmt: skip  # a bad name fails in this panel, not the request
        with gr.Accordion("System prompt and sampling", open=False):
            system_prompt = gr.Textbox(label="System prompt (edit it for a custom one)", lines=4)
            temperature = gr.Slider(0.0, 1.5, value=DEFAULT_TEMPERATURE, step=0.05, label="Temperature")
            top_p = gr.Slider(0.05, 1.0, value=DEFAULT_TOP_P, step=0.05, label="Top-p")
            max_tokens = gr.Slider(16, settings.ui.max_tokens * 4, value=settings.ui.max_tokens, step=16,
                                   label="Max tokens")  # fmt: skip
            # A Textbox, not a Number: Gradio 6.31's Number turns blank into 0 once its accordion is opened.
            seed = gr.Textbox(label="Seed (blank = random)", placeholder="random", max_lines=1)
            repetition_penalty, frequency_penalty, presence_penalty = repetition_sliders()
            brief = gr.Checkbox(True, label="RAG: ask for one short sentence (fewer made-up figures, fewer terms)")
        chatbot = gr.Chatbot(label=f"Panel {index + 1}", height=380, sanitize_html=True, allow_tags=False,
                             buttons=["copy", "copy_all"])  # fmt: skip
        history = gr.State([])
        stats = gr.Markdown()
        marks = gr.HTML(label="Term check")
        citations = gr.State([])
        sources = gr.Markdown()
        with gr.Accordion("Retrieved passages", open=False):
            passages = gr.Markdown()
        citations.change(sources_markdown, inputs=citations, outputs=[sources, passages], api_visibility="private")
    return PanelControls(column, model, persona, system_prompt, temperature, top_p, max_tokens, seed,
                         repetition_penalty, frequency_penalty, presence_penalty, use_rag, kb, brief, chatbot, history,
                         stats, marks, citations)  # fmt: skip


def panel_setup(values: Mapping[str, Any], base_model: str, personas: Mapping[str, Persona]) -> Setup:
    """The Setup a panel's values make. The system prompt counts as the persona's when it is the persona's text
    (surrounding whitespace aside), else as a custom prompt. ValueError saying which value is wrong."""
    persona = personas.get(values["persona"] or "")
    prompt = (values["system_prompt"] or "").strip()
    is_persona = persona is not None and prompt == persona.system_prompt.strip()
    try:
        seed = parse_seed(values["seed"])
    except ValueError as exc:
        raise ValueError(f"seed: {exc}") from None
    try:
        return Setup(
            adapter=None if values["model"] in (None, "", base_model) else values["model"],
            persona=persona.name if persona and is_persona else None,
            system_prompt=prompt if prompt and not is_persona else None,
            rag=(values["kb"] or ALL) if values["use_rag"] else None,
            brief=values["brief"] or not values["use_rag"],  # it only means something with RAG
            temperature=values["temperature"],
            top_p=values["top_p"],
            max_tokens=int(values["max_tokens"]),
            seed=seed,
            **{name: values[name] for name in REPETITION},
        )
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'panel'}: {e['msg']}" for e in exc.errors())
        raise ValueError(problems) from None


def parse_seed(value: object) -> int | None:
    """Blank (or None) means random; otherwise a whole number of 0 or more."""
    text = "" if value is None else str(value).strip()
    if not text:
        return None
    if not text.isdigit():
        raise ValueError(f"expected a whole number of 0 or more, or blank for random; got {text!r}")
    return int(text)


def checked_prompt(text: str | None, limit: int, what: str = "prompt") -> str:
    """The user's text, stripped, without control characters or unpaired surrogates (which no tokenizer or HTTP
    body wants); gr.Error when it is empty or longer than ui.max_prompt_chars (checked here, on the server: a client
    can send anything)."""
    text = CONTROL_CHARACTERS.sub("", (text or "").encode("utf-8", "replace").decode("utf-8")).strip()
    if not text:
        raise gr.Error(f"Type a {what} first.")
    if len(text) > limit:
        raise gr.Error(f"Your {what} is {len(text):,} characters; the limit is {limit:,} (ui.max_prompt_chars). "
                       "Shorten it, or ask about one part at a time.")  # fmt: skip
    return text
