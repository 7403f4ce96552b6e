"""Compare presets: set every panel to a named comparison for a domain (app.setups.PRESETS), and what a change of
domain does to panels the user has customised.

Picking another domain re-applies the preset only while the panels are as the last preset left them; once the user
changed one (another model, persona, prompt or knowledge base), the panels are kept and a note says how to set them
up for the new domain. `applied` is the per-session snapshot that tells the two apart.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from app.content import Domain
from app.rag import ALL
from app.services import Services, status_line
from app.serving.client import ServingError
from app.setups import PRESETS, Setup
from app.ui.panel import NO_PERSONA, PanelControls

PRESET_FIELDS = ("model", "persona", "system_prompt", "use_rag", "kb")  # what a preset sets in each panel
Updates = dict[Any, Any]


def preset_setup(spec: str, domain: Domain | None) -> Setup:
    """The preset's Setup for the domain; without a domain (or its knowledge base) the parts it lacks are left out."""
    if domain is None:
        return Setup()
    if "rag" in spec and domain.knowledge_base is None:
        spec = spec.replace("+rag", "")
    return Setup.parse(spec, domain)


class Presets:
    """The preset controls' handlers; `applied` is a gr.State holding what the last preset set, per panel."""

    def __init__(
        self, services: Services, *, status: gr.Markdown, count: gr.Radio, example: gr.Dropdown,
        question: gr.Textbox, panels: list[PanelControls],
    ) -> None:  # fmt: skip
        self.services, self.panels = services, panels
        self.status, self.count, self.example, self.question = status, count, example, question
        self.applied = gr.State(None)
        content = services.content
        self.examples = {name: domain.examples for name, domain in content.domains.items()}
        self.known_examples = {text for texts in self.examples.values() for text in texts}

    @property
    def panel_inputs(self) -> list[Any]:
        return [getattr(panel, name) for panel in self.panels for name in PRESET_FIELDS]

    @property
    def outputs(self) -> list[Any]:
        return [self.status, self.count, self.example, self.question, self.applied, *self.panel_inputs]

    def examples_for(self, domain_name: str | None, current_question: str) -> Updates:
        updates: Updates = {self.example: gr.Dropdown(choices=self.examples.get(domain_name or "", []), value=None)}
        examples = self.examples.get(domain_name or "")
        if examples and (not current_question or current_question in self.known_examples):
            updates[self.question] = examples[0]  # an example of another domain is replaced too
        return updates

    async def apply(self, domain_name: str | None, preset_name: str, current_question: str) -> Updates:
        """Set the panels to the preset's setups for the domain (an unserved adapter falls back to the base model,
        with a warning)."""
        return await self.set_up(domain_name, preset_name, current_question, warn=True)

    async def on_load(self, domain_name: str | None, preset_name: str, current_question: str) -> Updates:
        """The same on opening the page, without a warning: a server without adapters is no news on every visit."""
        return await self.set_up(domain_name, preset_name, current_question, warn=False)

    async def set_up(self, domain_name: str | None, preset_name: str, current_question: str, *, warn: bool) -> Updates:
        client, content, kbs = self.services.client, self.services.content, self.services.rag.names()
        specs = PRESETS.get(preset_name) or next(iter(PRESETS.values()))
        try:
            models = await client.list_models()
        except ServingError as exc:
            return {self.status: status_line(client.base_url, None, str(exc))}
        served = [m.id for m in models]
        base = next((m.id for m in models if not m.is_adapter), "")
        domain = content.domains.get(domain_name or "")
        updates: Updates = {self.status: status_line(client.base_url, models), self.count: len(specs)}
        updates.update(self.examples_for(domain_name, current_question))
        missing, applied = set(), []
        for index, controls in enumerate(self.panels):
            setup = preset_setup(specs[index % len(specs)], domain)
            if setup.adapter and setup.adapter not in served:
                missing.add(setup.adapter)
            values = (
                setup.adapter if setup.adapter in served else base,
                setup.persona if setup.persona in content.personas else NO_PERSONA,
                setup.system_text(content.personas) or "",
                bool(setup.rag),
                setup.rag if setup.rag in kbs else ALL,
            )
            applied.append(list(values))
            updates[controls.model] = gr.Dropdown(choices=served, value=values[0])
            updates.update(dict(zip([controls.persona, controls.system_prompt, controls.use_rag, controls.kb],
                                    values[1:], strict=True)))  # fmt: skip
        updates[self.applied] = applied
        if missing and warn:
            gr.Warning(f"No adapter named {', '.join(sorted(missing))} is served: those panels use the base model.")
        return updates

    async def on_domain(self, domain_name: str | None, preset_name: str, current_question: str,
                        applied: list[list[Any]] | None, *current: Any) -> Updates:  # fmt: skip
        """Re-apply the preset for the new domain, unless the user has customised the panels since the last one."""
        width = len(PRESET_FIELDS)
        now = [list(current[i : i + width]) for i in range(0, len(current), width)]
        if applied is None or now == applied:
            return await self.set_up(domain_name, preset_name, current_question, warn=True)
        gr.Info(f"Your panels keep their settings: press Apply preset to set them up for {domain_name}.")
        return self.examples_for(domain_name, current_question)

    def wire(self, demo: gr.Blocks, domain: gr.Dropdown, preset: gr.Dropdown, apply: gr.Button) -> None:
        event: dict[str, Any] = {"inputs": [domain, preset, self.question], "outputs": self.outputs}
        apply.click(self.apply, **event, api_name="apply_preset")
        demo.load(self.on_load, **event, api_visibility="private")
        domain.change(self.on_domain, inputs=[domain, preset, self.question, self.applied, *self.panel_inputs],
                      outputs=self.outputs, api_name="compare_domain")  # fmt: skip
