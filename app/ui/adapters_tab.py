"""Adapters tab (admins only): the models the server has (base + LoRA adapters) and forms to load, unload and merge.

The work is done by app.adapters (validation, runtime load/unload through ServingClient, PEFT merging); this module
lays out the forms and shows results. A refused or failed action only writes its reason on the message line: the
table and the forms stay as they were. Unloading asks for a confirmation naming the adapter, and nothing is
selected until the user picks one. Every handler checks the admin role server-side (app.auth), because an endpoint
can be called without the page.
"""

from __future__ import annotations

from typing import Any

import gradio as gr
from gradio.events import Dependency

from app.adapters import manage
from app.adapters.validate import AdapterError, allowed_roots
from app.inert import md_code, md_text
from app.services import Services
from app.serving.client import ServingError

HELP = (
    "Adapters are loaded into the running vLLM server without a restart. A folder must lie inside `{roots}` and "
    "passes checks first (LoRA config, safetensors weights, rank, fits the served model). Merging uses PEFT's "
    "`add_weighted_adapter`; the new adapter is saved under `{merged}` and loaded."
)
Updates = dict[Any, Any]


class _AdaptersTab:
    def __init__(self, services: Services) -> None:
        self.services = services
        roots = allowed_roots(services.settings)
        gr.Markdown(HELP.format(roots="`, `".join(map(str, roots)), merged=roots[1]))
        self.table = gr.Dataframe(headers=manage.TABLE_HEADERS, interactive=False, label="Served models", wrap=True)
        self.message = gr.Markdown()
        with gr.Row(equal_height=True):
            self.path = gr.Textbox(label="Adapter folder", placeholder=f"{roots[0]}/legal", scale=3)
            self.name = gr.Textbox(label="Name", placeholder="letters, digits, - and _", scale=1)
            self.load = gr.Button("Validate and load", variant="primary", scale=1)
        with gr.Row(equal_height=True):
            self.loaded = gr.Dropdown(label="Adapter to unload", choices=[], value=None, scale=4)
            self.unload = gr.Button("Unload…", scale=1)
        with gr.Row(visible=False) as self.confirm_row:
            self.confirm_text = gr.Markdown()
            self.confirm = gr.Button("Yes, unload it", variant="stop", scale=0, min_width=160)
            self.cancel = gr.Button("Cancel", scale=0, min_width=100)
        with gr.Accordion("Merge adapters", open=False):
            with gr.Row():
                self.parents = gr.Textbox(label="Parents and weights", placeholder="support=0.5, finance=0.5", scale=3)
                self.merged_name = gr.Textbox(label="New adapter name", placeholder="support-finance", scale=1)
            with gr.Row():
                self.combination = gr.Dropdown(list(manage.COMBINATIONS), value="linear", label="Combination type")
                self.density = gr.Slider(0.05, 1.0, value=0.7, step=0.05, label="Density (ties, dare_linear only)")
            self.merge = gr.Button("Merge and load")

    @property
    def outputs(self) -> list[Any]:
        return [self.message, self.table, self.loaded, self.confirm_row]

    def refused(self, request: gr.Request | None) -> Updates | None:
        """The message for a visitor who may not administer, else None."""
        if self.services.access.may_administer(getattr(request, "username", None)):
            return None
        return {self.message: f"⚠️ {self.services.access.refusal()}", self.confirm_row: gr.Row(visible=False)}

    async def show(self, note: str, keep: str | None = None) -> Updates:
        """The table and the unload choices as the server has them now; `note` on the message line."""
        try:
            rows = await manage.table(self.services.client)
        except ServingError as exc:  # keep what the tab shows; say why it could not be refreshed
            return {self.message: f"⚠️ {md_text(str(exc))}", self.confirm_row: gr.Row(visible=False)}
        names = [row[0] for row in rows if row[1] == "adapter"]
        return {
            self.message: note,
            self.table: rows,
            self.loaded: gr.Dropdown(choices=names, value=keep if keep in names else None),
            self.confirm_row: gr.Row(visible=False),
        }

    async def on_refresh(self, request: gr.Request) -> Updates:
        return self.refused(request) or await self.show("")

    async def on_load(self, folder: str, adapter_name: str, request: gr.Request) -> Updates:
        if refusal := self.refused(request):
            return refusal
        try:
            info = await manage.load(self.services.client, self.services.settings, adapter_name.strip(),
                                     folder.strip())  # fmt: skip
        except (AdapterError, ServingError) as exc:
            return {self.message: f"⚠️ {md_text(str(exc))}"}
        return await self.show(f"Loaded **{md_text(info.name)}** (rank {info.rank}) from {md_code(str(info.path))}.")

    def on_ask_unload(self, adapter_name: str | None, request: gr.Request) -> Updates:
        """The first click only asks: which adapter, and that its panels and arena rounds will stop working."""
        if refusal := self.refused(request):
            return refusal
        if not adapter_name:
            return {self.message: "⚠️ Pick the adapter to unload first.", self.confirm_row: gr.Row(visible=False)}
        return {
            self.confirm_text: f"Unload **{md_text(adapter_name)}** from the server? Panels and arena rounds using it "
            "fail until it is loaded again.",
            self.confirm_row: gr.Row(visible=True),
            self.message: "",
        }

    async def on_unload(self, adapter_name: str | None, request: gr.Request) -> Updates:
        if refusal := self.refused(request):
            return refusal
        name = (adapter_name or "").strip()
        try:
            await manage.unload(self.services.client, name)
        except (AdapterError, ServingError) as exc:
            return {self.message: f"⚠️ {md_text(str(exc))}", self.confirm_row: gr.Row(visible=False)}
        return await self.show(f"Unloaded **{md_text(name)}**.")

    async def on_merge(self, spec: str, new_name: str, kind: str, share: float, request: gr.Request) -> Updates:
        if refusal := self.refused(request):
            return refusal
        try:
            info = await manage.merge_and_load(
                self.services.client,
                self.services.settings,
                manage.parse_parents([spec]),
                new_name.strip(),
                combination=kind,
                density=share if kind in manage.NEEDS_DENSITY else None,
            )
        except (AdapterError, ServingError) as exc:
            return {self.message: f"⚠️ {md_text(str(exc))}"}
        return await self.show(f"Merged into {md_code(str(info.path))} and loaded as **{md_text(info.name)}**.")

    def wire(self, demo: gr.Blocks) -> list[Dependency]:
        outputs = [*self.outputs, self.confirm_text]
        gr.Button("Refresh", size="sm").click(self.on_refresh, outputs=outputs, api_name="adapters_refresh")
        demo.load(self.on_refresh, outputs=outputs, api_visibility="private")
        self.unload.click(self.on_ask_unload, inputs=[self.loaded], outputs=outputs, api_visibility="private")
        self.cancel.click(lambda: gr.Row(visible=False), outputs=self.confirm_row, api_visibility="private")
        # One load, unload or merge at a time, app-wide: they change the one server every user shares.
        admin: dict[str, Any] = {"outputs": outputs, "concurrency_limit": 1, "concurrency_id": "adapters"}
        return [
            self.load.click(self.on_load, inputs=[self.path, self.name], api_name="adapters_load", **admin),
            self.confirm.click(self.on_unload, inputs=[self.loaded], api_name="adapters_unload", **admin),
            self.merge.click(
                self.on_merge,
                inputs=[self.parents, self.merged_name, self.combination, self.density],
                api_name="adapters_merge",
                **admin,
            ),
        ]


def render(services: Services, demo: gr.Blocks) -> list[Dependency]:
    """Build the tab inside the current Blocks context.

    Returns the events that may change the server's model list (load, unload, merge): chain `.success(...)` on them
    to refresh the models other tabs offer.
    """
    return _AdaptersTab(services).wire(demo)
