"""Adapter management: validation refusals, runtime load/unload in the real vLLM server, PEFT merging, CLI and UI.

Test adapters are random LoRAs made here with PEFT on the real base model (`init_lora_weights=False`, so they change
the model's answers). Run: .venv/bin/python -m pytest -q tests/test_adapters.py
"""

from __future__ import annotations

import json
import math
import pickle
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import gradio as gr
import pytest
import torch
from gradio_client import Client
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedModel

from app.adapters import manage
from app.adapters import validate as adapters
from app.adapters.__main__ import main as adapters_main
from app.adapters.validate import AdapterError, validate_adapter
from app.config import Settings
from app.services import Services
from app.serving.client import ServingClient, ServingError
from app.serving.process import VLLMServer
from app.ui import adapters_tab
from tests.conftest import free_port

RANK = 4
ALPHA = 8  # scaling alpha / r = 2


def make_adapter(
    base: PreTrainedModel, out: Path, seed: int, rank: int = RANK, targets: tuple[str, ...] = ("q_proj", "v_proj")
) -> PreTrainedModel:
    """Save a random LoRA for `base` into `out`; return `base` without the LoRA layers, ready for the next one."""
    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(targets), init_lora_weights=False)
    model = get_peft_model(base, config)
    model.save_pretrained(out)
    return model.unload()


@pytest.fixture(scope="module")
def made(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Adapter folders made once: two r=4 ones for the served model, an r=2 one, an r=32 one, one for another model."""
    folder = tmp_path_factory.mktemp("made")
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    base = make_adapter(base, folder / "alpha", seed=1)
    base = make_adapter(base, folder / "beta", seed=2)
    base = make_adapter(base, folder / "small", seed=3, rank=2)
    make_adapter(base, folder / "wide", seed=4, rank=32, targets=("q_proj",))
    tiny_config = LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1
    )
    tiny = AutoModelForCausalLM.from_config(tiny_config)
    make_adapter(tiny, folder / "tiny", seed=5)
    config_path = folder / "tiny" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "base_model_name_or_path": "someone/tiny-llama-not-here"}))
    return {path.name: path for path in folder.iterdir()}


# --- validation ----------------------------------------------------------------------------------------------------


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "adapters").mkdir()
    return tmp_path / "adapters"


def copy(made: dict[str, Path], which: str, root: Path, name: str = "candidate") -> Path:
    return Path(shutil.copytree(made[which], root / name))


def test_a_good_adapter_passes(made: dict[str, Path], root: Path, model_dir: Path) -> None:
    info = validate_adapter(copy(made, "alpha", root, "good"), model_dir, 16, [root])
    assert (info.name, info.rank, info.path) == ("good", RANK, (root / "good").resolve())
    assert info.size_bytes > 100_000


def _bad_json(folder: Path) -> None:
    (folder / "adapter_config.json").write_text("{not json")


def _not_lora(folder: Path) -> None:
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "peft_type": "PREFIX_TUNING"}))


def _other_architecture(folder: Path) -> None:
    other = folder.parent.parent / "gpt2-base"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "hidden_size": 768}))
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": str(other)}))


def _missing_weights(folder: Path) -> None:
    (folder / "adapter_model.safetensors").unlink()


def _garbage_weights(folder: Path) -> None:
    (folder / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header")


def _nan_weights(folder: Path) -> None:
    tensors = load_file(folder / "adapter_model.safetensors")
    first = sorted(tensors)[0]
    tensors[first][0, 0] = math.nan
    save_file(tensors, folder / "adapter_model.safetensors")


def _unpaired(folder: Path) -> None:
    tensors = load_file(folder / "adapter_model.safetensors")
    save_file({k: v for k, v in tensors.items() if not k.endswith("layers.3.self_attn.q_proj.lora_B.weight")},
              folder / "adapter_model.safetensors")  # fmt: skip


def _weights_link_outside(folder: Path) -> None:
    outside = folder.parent.parent / "outside.safetensors"
    (folder / "adapter_model.safetensors").rename(outside)
    (folder / "adapter_model.safetensors").symlink_to(outside)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_bad_json, r"adapter_config.json: not readable JSON"),
        (_not_lora, r"not a LoRA adapter \(peft_type is 'PREFIX_TUNING', expected 'LORA'\)"),
        (_other_architecture, r"trained on .*gpt2-base \(GPT2LMHeadModel, hidden size 768\) but the server "
                              r"runs LlamaForCausalLM, hidden size 576"),
        (_missing_weights, r"the weights file adapter_model.safetensors is missing"),
        (_garbage_weights, r"adapter_model.safetensors: not a readable safetensors file"),
        (_nan_weights, r"holds NaN or infinite values"),
        (_unpaired, r"layers.3.self_attn.q_proj has only one"),
        (_weights_link_outside, r"is a link to a file outside the adapter folder"),
    ],
)  # fmt: skip
def test_refuses_bad_adapter(
    made: dict[str, Path], root: Path, model_dir: Path, damage: Callable[[Path], None], message: str
) -> None:
    folder = copy(made, "alpha", root)
    damage(folder)
    with pytest.raises(AdapterError, match=message):
        validate_adapter(folder, model_dir, 16, [root])


def test_refuses_adapter_for_another_hidden_size(made: dict[str, Path], root: Path, model_dir: Path) -> None:
    """The tiny adapter's base is not at hand: its weight shapes give it away, against the weights or the config."""
    tiny = copy(made, "tiny", root)
    with pytest.raises(AdapterError, match=r"does not fit the served model \(LlamaForCausalLM, hidden size 576\): its "
                                           r"model.layers.0.self_attn.q_proj LoRA maps 64 -> 64 features"):  # fmt: skip
        validate_adapter(tiny, model_dir, 16, [root])
    served_config = json.loads((model_dir / "config.json").read_text())
    with pytest.raises(AdapterError, match=r"maps 64 -> 64 features; it was trained on a different base model"):
        validate_adapter(tiny, served_config, 16, [root])
    validate_adapter(copy(made, "alpha", root, "fine"), served_config, 16, [root])


def test_refuses_rank_above_server_maximum(made: dict[str, Path], root: Path, model_dir: Path) -> None:
    with pytest.raises(AdapterError, match=r"LoRA rank 4 is above the server's maximum 2 \(vllm.max_lora_rank"):
        validate_adapter(copy(made, "alpha", root), model_dir, 2, [root])


def test_refuses_pickled_weights_without_unpickling(made: dict[str, Path], root: Path, model_dir: Path) -> None:
    folder = copy(made, "alpha", root)
    (folder / "adapter_model.safetensors").unlink()
    marker = root.parent / "unpickled"

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[Path]]:
            return Path.touch, (marker,)

    (folder / "adapter_model.bin").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(AdapterError, match=r"only pickled weights \(adapter_model.bin\), which are refused"):
        validate_adapter(folder, model_dir, 16, [root])
    assert not marker.exists(), "the pickle must never be loaded"


@pytest.mark.parametrize("name", ["../evil", "a b", "x;rm -rf", "", "é", "n" * 65])
def test_refuses_unsafe_names(made: dict[str, Path], root: Path, model_dir: Path, name: str) -> None:
    with pytest.raises(AdapterError, match=r"adapter name .* is not allowed: use 1-64 letters, digits, '-' or '_'"):
        validate_adapter(copy(made, "alpha", root), model_dir, 16, [root], name=name)


def test_refuses_paths_outside_allowed_roots(made: dict[str, Path], root: Path, model_dir: Path) -> None:
    elsewhere = copy(made, "alpha", root.parent, "elsewhere")
    (root / "linked").symlink_to(elsewhere, target_is_directory=True)
    for path in (elsewhere, root / ".." / "elsewhere", root / "linked"):
        with pytest.raises(AdapterError, match=r"resolves to .*elsewhere, outside the adapter folders"):
            validate_adapter(path, model_dir, 16, [root])
    with pytest.raises(AdapterError, match="outside the adapter folders"):
        validate_adapter(root, model_dir, 16, [root], name="root")  # the root itself is not an adapter
    with pytest.raises(AdapterError, match="no such adapter folder"):
        validate_adapter(root / "missing", model_dir, 16, [root])


# --- the running server ---------------------------------------------------------------------------------------------


@pytest.fixture
async def client(vllm_server: VLLMServer) -> AsyncIterator[ServingClient]:
    """A client; afterwards the server is back to the base model alone (other test files expect that)."""
    client = vllm_server.client()
    yield client
    for model in await client.list_models():
        if model.is_adapter:
            await client.unload_adapter(model.id)
    await client.close()


@pytest.fixture(scope="module")
def data_adapters(server_settings: Settings, made: dict[str, Path]) -> Path:
    """The server's adapter folder (data/adapters) with the made adapters copied in."""
    folder = server_settings.paths.data / "adapters"
    for name in ("alpha", "beta", "small", "wide"):
        shutil.copytree(made[name], folder / name)
    return folder


async def answer(client: ServingClient, model: str) -> str:
    messages = [{"role": "user", "content": "What is a contract? Answer in one sentence."}]
    return "".join([d.text async for d in client.stream_chat(model, messages, temperature=0.0, max_tokens=24)])


async def test_load_answer_unload(client: ServingClient, server_settings: Settings, data_adapters: Path) -> None:
    info = await manage.load(client, server_settings, "alpha-live", data_adapters / "alpha")
    assert info.rank == RANK
    models = {m.id: m for m in await client.list_models()}
    assert models["alpha-live"].parent == "base"
    assert models["alpha-live"].root == str((data_adapters / "alpha").resolve())
    base_text, adapter_text = await answer(client, "base"), await answer(client, "alpha-live")
    assert adapter_text.strip() and adapter_text != base_text, "a random LoRA must change the answer at temperature 0"
    rows = {row[0]: row for row in await manage.table(client)}
    assert rows["alpha-live"][1:4] == ["adapter", "base", str(RANK)] and rows["alpha-live"][5].endswith("alpha")
    assert rows["base"][1] == "base model"

    with pytest.raises(AdapterError, match="the server already has a model named 'alpha-live'"):
        await manage.load(client, server_settings, "alpha-live", data_adapters / "beta")
    await manage.unload(client, "alpha-live")
    assert [m.id for m in await client.list_models()] == ["base"]
    with pytest.raises(ServingError, match="model 'alpha-live': server said 404"):
        await answer(client, "alpha-live")


async def test_unload_refusals(client: ServingClient) -> None:
    with pytest.raises(AdapterError, match=r"no adapter named 'nope' is loaded \(loaded adapters: none\)"):
        await manage.unload(client, "nope")
    with pytest.raises(AdapterError, match="'base' is the base model; only adapters can be unloaded"):
        await manage.unload(client, "base")


async def test_refused_load_leaves_nothing_behind(
    client: ServingClient, server_settings: Settings, data_adapters: Path
) -> None:
    # Our check is told the limit is 64, so only vLLM (started with 16) refuses the rank-32 adapter.
    lenient = server_settings.model_copy(update={"vllm": server_settings.vllm.model_copy(update={"max_lora_rank": 64})})
    with pytest.raises(AdapterError, match=r"vLLM refused adapter 'wide' from .*wide: cannot load adapter 'wide'"):
        await manage.load(client, lenient, "wide", data_adapters / "wide")
    assert [m.id for m in await client.list_models()] == ["base"]
    with pytest.raises(AdapterError, match="LoRA rank 32 is above the server's maximum 16"):
        await manage.load(client, server_settings, "wide", data_adapters / "wide")


async def test_linear_merge_follows_peft_and_loads(
    client: ServingClient, server_settings: Settings, data_adapters: Path
) -> None:
    parents = manage.parse_parents(["alpha=0.7, beta=0.3"])
    info = await manage.merge_and_load(client, server_settings, parents, "alpha-beta")
    assert info.path == (data_adapters / "alpha-beta").resolve()
    models = {m.id: m for m in await client.list_models()}
    assert models["alpha-beta"].parent == "base"
    assert await answer(client, "alpha-beta") != await answer(client, "base")

    # PEFT's "linear" (tuners/lora/model.py, _generalized_task_arithmetic_weighted_adapter) weights each parent's A
    # and B by sqrt(weight * scaling) and sums them; the merged config has lora_alpha = r, so scaling 1.
    merged = load_file(info.path / "adapter_model.safetensors")
    alpha, beta = (load_file(data_adapters / name / "adapter_model.safetensors") for name in ("alpha", "beta"))
    scaling = ALPHA / RANK
    assert set(merged) == set(alpha)
    for key, tensor in merged.items():
        expected = math.sqrt(0.7 * scaling) * alpha[key] + math.sqrt(0.3 * scaling) * beta[key]
        torch.testing.assert_close(tensor, expected)
    config = json.loads((info.path / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (RANK, RANK)
    card = (info.path / "README.md").read_text()
    assert "| alpha | 0.7 |" in card and "| beta | 0.3 |" in card and "combination type: `linear`" in card
    assert not [p for p in data_adapters.iterdir() if p.name.startswith(".")], "no staging folder may remain"


def test_merge_refusals(server_settings: Settings, data_adapters: Path) -> None:
    cases = [
        (["alpha=1"], "linear", None, "at least two parent adapters"),
        (["alpha=0.5", "small=0.5"], "linear", None, r"'linear' needs parents of equal rank, got alpha r=4, small r=2"),
        (["alpha=0.5", "beta=0.5"], "ties", None, "'ties' needs a density between 0"),
        (["alpha=0.5", "beta=0.5"], "svd", None, "combination type 'svd' is not one of"),
        (["alpha=0.5", "nothing=0.5"], "linear", None, "no adapter folder named 'nothing'"),
        (["alpha=0.5", "alpha=0.5"], "linear", None, "each parent adapter may appear only once"),
        (["alpha=0.5", "wide=0.5"], "cat", None, "LoRA rank 32 is above the server's maximum 16"),
    ]
    for specs, combination, density, message in cases:
        with pytest.raises(AdapterError, match=message):
            parents = manage.parse_parents(specs)
            manage.merge_adapters(server_settings, parents, "x", combination=combination, density=density)
    with pytest.raises(AdapterError, match="write each parent as NAME=WEIGHT"):
        manage.parse_parents(["alpha:0.5"])


def test_cli(
    vllm_server: VLLMServer,
    server_settings: Settings,
    data_adapters: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("ARENA_VLLM__URL", vllm_server.base_url)
    monkeypatch.setenv("ARENA_VLLM__API_KEY", vllm_server.api_key)
    monkeypatch.setenv("ARENA_PATHS__DATA", str(server_settings.paths.data))
    monkeypatch.setenv("ARENA_PATHS__ADAPTERS", str(server_settings.paths.adapters))
    monkeypatch.setenv("ARENA_MODEL__PATH", server_settings.model.path)
    try:
        assert adapters_main(["validate", str(data_adapters / "beta")]) == 0
        assert "OK: beta at" in capsys.readouterr().out
        assert adapters_main(["load", "beta-cli", str(data_adapters / "beta")]) == 0
        assert adapters_main(["list"]) == 0
        out = capsys.readouterr().out
        assert "loaded 'beta-cli'" in out and any(line.split()[:3] == ["beta-cli", "adapter", "base"]
                                                  for line in out.splitlines())  # fmt: skip
        merge = ["merge", "ties-mix", "alpha=0.6", "beta=0.4", "--combination", "ties", "--density", "0.5", "--no-load"]
        assert adapters_main(merge) == 0
        card = (data_adapters / "ties-mix" / "README.md").read_text()
        assert "combination type: `ties`" in card and "density: 0.5" in card
        assert adapters_main(["unload", "beta-cli"]) == 0
        assert adapters_main(["unload", "beta-cli"]) == 1
        assert "error: no adapter named 'beta-cli' is loaded" in capsys.readouterr().err
        assert adapters_main(["load", "escape", str(data_adapters / ".." / "..")]) == 1
        assert "outside the adapter folders" in capsys.readouterr().err
    finally:
        shutil.rmtree(data_adapters / "ties-mix", ignore_errors=True)


@pytest.fixture(scope="module")
def ui(vllm_server: VLLMServer, server_settings: Settings) -> Iterator[Client]:
    with gr.Blocks() as demo:
        adapters_tab.render(Services.build(server_settings, vllm_server.client()), demo)
    port = free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield Client(f"http://127.0.0.1:{port}/", verbose=False)
    finally:
        demo.close()


async def test_ui_loads_and_unloads(ui: Client, client: ServingClient, data_adapters: Path) -> None:
    message, table, loaded, *_ = ui.predict(str(data_adapters / "alpha"), "alpha-ui", api_name="/adapters_load")
    assert "Loaded **alpha\\-ui** (rank 4)" in message, "names are shown as literal Markdown"
    assert loaded["value"] is None and "alpha-ui" in [c[0] for c in loaded["choices"]], "offered, not pre-selected"
    assert ["alpha-ui", "adapter", "base", "4"] in [row[:4] for row in table["data"]]
    assert "alpha-ui" in [m.id for m in await client.list_models()]
    message, kept, *_ = ui.predict("/etc", "etc", api_name="/adapters_load")
    assert message.startswith("⚠️") and "outside the adapter folders" in message, "a refusal is a message"
    assert "data" not in kept, "and the table is left as it was (no new value is sent)"
    message, table, *_ = ui.predict("alpha-ui", api_name="/adapters_unload")
    assert "Unloaded **alpha\\-ui**" in message and [row[0] for row in table["data"]] == ["base"]


def test_start_up_serves_good_adapters_and_skips_broken_ones(
    made: dict[str, Path], tmp_path: Path, server_settings: Settings
) -> None:
    shipped = tmp_path / "adapters"
    copy(made, "alpha", shipped, "good")
    broken = copy(made, "beta", shipped, "broken")
    (broken / "adapter_config.json").write_text("{not json")
    (shipped / "notes").mkdir()  # no adapter_config.json: not an adapter at all
    settings = server_settings.model_copy(
        update={"paths": server_settings.paths.model_copy(update={"adapters": shipped})}
    )
    good, warnings = adapters.servable_adapters(settings)
    assert good == {"good": (shipped / "good").resolve()}
    assert len(warnings) == 1 and warnings[0].startswith("adapter 'broken' not loaded:")
    command = VLLMServer(settings, adapters=good).command()
    assert command[command.index("--lora-modules") + 1 :] == [f"good={(shipped / 'good').resolve()}"]
