"""Adapters tab: the models the server has (base + LoRA adapters) and forms to load, unload and merge adapters.

The work is done by app.adapters (validation, runtime load/unload through ServingClient, PEFT merging); this module
only lays out the forms and shows results. `app.ui.build_app` renders it; start the whole app with `python -m app`.
"""

from __future__ import annotations

import html
from typing import Any

import gradio as gr
from gradio.events import Dependency

from app.adapters import manage
from app.adapters.validate import AdapterError, allowed_roots
from app.config import Settings
from app.serving.client import ServingClient, ServingError

HELP = (
    "Adapters are loaded into the running vLLM server without a restart. A folder must lie inside `{roots}` and "
    "passes checks first (LoRA config, safetensors weights, rank, fits the served model). Merging uses PEFT's "
    "`add_weighted_adapter`; the new adapter is saved under `{merged}` and loaded."
)


def render(settings: Settings, client: ServingClient, demo: gr.Blocks) -> list[Dependency]:
    """Build the tab inside the current Blocks context.

    Returns the events that change the server's model list (load, unload, merge): chain `.success(...)` on them to
    refresh other tabs; they only succeed when the server's list did change.
    """
    roots = allowed_roots(settings)
    gr.Markdown(HELP.format(roots="`, `".join(map(str, roots)), merged=roots[1]))
    table = gr.Dataframe(headers=manage.TABLE_HEADERS, interactive=False, label="Served models", wrap=True)
    message = gr.Markdown()
    with gr.Row(equal_height=True):
        path = gr.Textbox(label="Adapter folder", placeholder=f"{roots[0]}/legal", scale=3)
        name = gr.Textbox(label="Name", placeholder="letters, digits, - and _", scale=1)
        load = gr.Button("Validate and load", variant="primary", scale=1)
    with gr.Row(equal_height=True):
        loaded = gr.Dropdown(label="Loaded adapter", choices=[], allow_custom_value=True, scale=4)
        unload = gr.Button("Unload", scale=1)
    with gr.Accordion("Merge adapters", open=False):
        with gr.Row():
            parents = gr.Textbox(label="Parents and weights", placeholder="support=0.5, finance=0.5", scale=3)
            merged_name = gr.Textbox(label="New adapter name", placeholder="support-finance", scale=1)
        with gr.Row():
            combination = gr.Dropdown(list(manage.COMBINATIONS), value="linear", label="Combination type")
            density = gr.Slider(0.05, 1.0, value=0.7, step=0.05, label="Density (ties, dare_linear only)")
        merge = gr.Button("Merge and load")
    outputs = [message, table, loaded]

    async def show(note: str) -> tuple[str, list[list[str]], Any]:
        try:
            rows = await manage.table(client)
        except ServingError as exc:
            return f"⚠️ {html.escape(str(exc))}", [], gr.Dropdown(choices=[])
        names = [row[0] for row in rows if row[1] == "adapter"]
        return note, rows, gr.Dropdown(choices=names, value=names[0] if names else None)

    async def on_load(folder: str, adapter_name: str) -> tuple[str, list[list[str]], Any]:
        try:
            info = await manage.load(client, settings, adapter_name.strip(), folder.strip())
        except (AdapterError, ServingError) as exc:
            raise gr.Error(html.escape(str(exc))) from exc
        return await show(
            f"Loaded **{html.escape(info.name)}** (rank {info.rank}) from `{html.escape(str(info.path))}`."
        )

    async def on_unload(adapter_name: str | None) -> tuple[str, list[list[str]], Any]:
        try:
            await manage.unload(client, (adapter_name or "").strip())
        except (AdapterError, ServingError) as exc:
            raise gr.Error(html.escape(str(exc))) from exc
        return await show(f"Unloaded **{html.escape(adapter_name or '')}**.")

    async def on_merge(spec: str, new_name: str, kind: str, share: float) -> tuple[str, list[list[str]], Any]:
        try:
            info = await manage.merge_and_load(
                client,
                settings,
                manage.parse_parents([spec]),
                new_name.strip(),
                combination=kind,
                density=share if kind in manage.NEEDS_DENSITY else None,
            )
        except (AdapterError, ServingError) as exc:
            raise gr.Error(html.escape(str(exc))) from exc
        return await show(f"Merged into `{html.escape(str(info.path))}` and loaded as **{html.escape(info.name)}**.")

    async def on_refresh() -> tuple[str, list[list[str]], Any]:
        return await show("")

    gr.Button("Refresh", size="sm").click(on_refresh, outputs=outputs, api_name="adapters_refresh")
    demo.load(on_refresh, outputs=outputs, api_visibility="private")
    return [
        load.click(on_load, inputs=[path, name], outputs=outputs, api_name="adapters_load"),
        unload.click(on_unload, inputs=[loaded], outputs=outputs, api_name="adapters_unload"),
        merge.click(
            on_merge, inputs=[parents, merged_name, combination, density], outputs=outputs, api_name="adapters_merge"
        ),
    ]
