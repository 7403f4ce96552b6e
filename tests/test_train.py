"""LoRA training (app.train): real PEFT on the real base model, a tiny run into tmp_path, plus the refusals.

.venv/bin/python -m pytest -q tests/test_train.py     # ~2-3 minutes on 2 CPU cores
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from app.config import Settings, load_settings
from app.content import TrainExample
from app.train import HUB_BASE_MODEL, IGNORE_INDEX, TrainConfig, encode, main, split, train

REPO = Path(__file__).resolve().parent.parent
RANK = 8
STEPS = 8
TINY = {
    "rank": RANK,
    "alpha": 16,
    "target_modules": ["q_proj", "v_proj"],
    "epochs": 50,  # max_steps ends the run first
    "max_steps": STEPS,
    "learning_rate": 2e-3,
    "warmup": 0,
    "max_length": 192,
    "batch_size": 4,
    "grad_accumulation": 1,
    "eval_fraction": 0.25,
    "save_steps": 4,
    "logging_steps": 1,
}


def tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def labelled_text(tok: Any, example: TrainExample, keep_system: bool = True) -> str:
    enc = encode(tok, example, 512, keep_system)
    assert len(enc.labels) == len(enc.input_ids)
    return tok.decode([t for t in enc.labels if t != IGNORE_INDEX])


def write_adapter(root: Path, name: str, lines: list[str], config: dict[str, Any] | None = None) -> Path:
    folder = root / "adapters" / name
    folder.mkdir(parents=True)
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "train.yaml").write_text(yaml.safe_dump(config or TINY), encoding="utf-8")
    return folder


def settings_for(model_dir: Path, root: Path) -> Settings:
    return load_settings(
        None, {"model.path": str(model_dir), "paths.adapters": str(root / "adapters"), "paths.data": str(root / "data")}
    )


def use_env(monkeypatch: pytest.MonkeyPatch, model_dir: Path | str, root: Path) -> None:
    monkeypatch.setenv("ARENA_MODEL__PATH", str(model_dir))
    monkeypatch.setenv("ARENA_PATHS__ADAPTERS", str(root / "adapters"))
    monkeypatch.setenv("ARENA_PATHS__DATA", str(root / "data"))


LEGAL_LINES = (REPO / "adapters" / "legal" / "train.jsonl").read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="module")
def trained(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], Settings]:
    """One tiny real training run: 16 legal examples (12 train, 4 eval), 8 optimizer steps, rank 8 on q/v."""
    root = tmp_path_factory.mktemp("train")
    folder = write_adapter(root, "tiny", LEGAL_LINES[:16])
    settings = settings_for(model_dir, root)
    config = TrainConfig.model_validate(yaml.safe_load((folder / "train.yaml").read_text()))
    facts = train("tiny", settings, config, root / "out")  # train.yaml's max_steps ends it
    return root / "out", facts, settings


def test_labels_cover_only_the_assistant_replies(model_dir: Path) -> None:
    tok = tokenizer(model_dir)
    example = TrainExample.model_validate(
        {
            "messages": [
                {"role": "system", "content": "You explain law."},
                {"role": "user", "content": "What is a tort?"},
                {"role": "assistant", "content": "A tort is a civil wrong."},
                {"role": "user", "content": "And a felony?"},
                {"role": "assistant", "content": "A serious crime."},
            ]
        }
    )
    assert labelled_text(tok, example) == "A tort is a civil wrong.<|im_end|>A serious crime.<|im_end|>"
    shipped = TrainExample.model_validate_json(LEGAL_LINES[0])
    reply = shipped.texts("assistant")[0]
    assert labelled_text(tok, shipped, keep_system=False) == reply + "<|im_end|>"
    full = tok.decode(encode(tok, shipped, 512, keep_system=False).input_ids)
    assert shipped.system not in full and shipped.texts("user")[0] in full
    assert shipped.system in tok.decode(encode(tok, shipped, 512, keep_system=True).input_ids)


def test_split_is_seeded_and_holds_out_a_share() -> None:
    items = list(range(40))
    train_a, eval_a = split(items, 0.1, seed=1)
    assert split(items, 0.1, seed=1) == (train_a, eval_a)
    assert split(items, 0.1, seed=2) != (train_a, eval_a)
    assert len(eval_a) == 4 and sorted(train_a + eval_a) == items
    assert split(items, 0, seed=1)[1] == []


def test_training_lowers_the_loss(trained: tuple[Path, dict[str, Any], Settings]) -> None:
    _, facts, _ = trained
    assert facts["steps"] == STEPS
    assert (facts["n_train"], facts["n_eval"]) == (12, 4)
    assert facts["eval_loss"] < facts["eval_loss_before"] - 0.1, facts
    assert facts["train_loss"] < facts["first_train_loss"], facts


def test_output_is_a_bf16_peft_folder_that_loads(
    model_dir: Path, trained: tuple[Path, dict[str, Any], Settings]
) -> None:
    import torch
    from peft import PeftModel
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    out, facts, _ = trained
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == RANK and config["lora_alpha"] == 16
    assert set(config["target_modules"]) == {"q_proj", "v_proj"}
    assert config["base_model_name_or_path"] == HUB_BASE_MODEL
    with safe_open(out / "adapter_model.safetensors", "pt") as weights:
        names = list(weights.keys())
        assert len(names) == 2 * 2 * 30  # A and B for q and v in each of the 30 layers
        assert {weights.get_slice(n).get_dtype() for n in names} == {"BF16"}
        assert all(weights.get_slice(n).get_shape()[0] == RANK for n in names if "lora_A" in n)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
    model = PeftModel.from_pretrained(base, out)
    b = next(p for n, p in model.named_parameters() if "lora_B" in n)
    assert b.abs().sum() > 0, "lora_B is still zero: the adapter would be a no-op"
    card = " ".join((out / "README.md").read_text().split())  # one line: sentences wrap in the file
    assert "12 training and 4 held-out examples from 16" in card
    assert f"{facts['eval_loss']:.4f}" in card and "not professional advice" in card and HUB_BASE_MODEL in card


def test_resume_continues_from_the_last_checkpoint(
    trained: tuple[Path, dict[str, Any], Settings], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, model_dir: Path
) -> None:
    _, _, settings = trained
    root = settings.paths.data.parent
    assert (settings.paths.data / "train" / "tiny" / f"checkpoint-{STEPS}").is_dir()
    use_env(monkeypatch, model_dir, root)
    assert main(["tiny", "--resume", "--max-steps", str(STEPS + 2), "--out", str(tmp_path / "resumed")]) == 0
    state = json.loads(
        (settings.paths.data / "train" / "tiny" / f"checkpoint-{STEPS + 2}" / "trainer_state.json").read_text()
    )
    assert state["global_step"] == STEPS + 2 and state["log_history"][0]["step"] == 1
    assert (tmp_path / "resumed" / "adapter_model.safetensors").is_file()


def test_resume_without_checkpoints_is_refused(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_adapter(tmp_path, "fresh", LEGAL_LINES[:4])
    use_env(monkeypatch, model_dir, tmp_path)
    assert main(["fresh", "--resume"]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_bad_data_line_is_refused(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = json.dumps({"messages": [{"role": "assistant", "content": "no question first"}, {"role": "user"}]})
    write_adapter(tmp_path, "broken", [LEGAL_LINES[0], bad, "{not json"])
    use_env(monkeypatch, model_dir, tmp_path)
    assert main(["broken", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "train.jsonl: line 2" in err and "train.jsonl: line 3: not valid JSON" in err
    assert not (tmp_path / "out").exists()


def test_missing_base_model_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_adapter(tmp_path, "nobase", LEGAL_LINES[:4])
    use_env(monkeypatch, tmp_path / "no-such-model", tmp_path)
    assert main(["nobase"]) == 2
    assert "run `make model`" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["../legal", "le gal", "legal/x", ""])
def test_bad_adapter_name_is_refused(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([name]) == 2
    assert "use only letters, digits" in capsys.readouterr().err


def test_bad_hyper_parameters_are_refused(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_adapter(tmp_path, "wide", LEGAL_LINES[:4], {**TINY, "rank": 64, "epoch": 3})
    use_env(monkeypatch, model_dir, tmp_path)
    assert main(["wide"]) == 2
    err = capsys.readouterr().err
    assert "train.yaml: rank: Input should be less than or equal to 16" in err
    assert "train.yaml: epoch: Extra inputs are not permitted" in err


def test_defaults_when_keys_are_absent(tmp_path: Path) -> None:
    (tmp_path / "train.yaml").write_text("rank: 8\n", encoding="utf-8")
    from app.train import load_train_config

    config = load_train_config(tmp_path / "train.yaml")
    assert config.rank == 8 and config.alpha == TrainConfig().alpha and config.seed == 42
    assert load_train_config(tmp_path / "absent.yaml") == TrainConfig()


def test_same_seed_same_adapter(model_dir: Path, tmp_path: Path) -> None:
    write_adapter(tmp_path, "seeded", LEGAL_LINES[:8])
    settings = settings_for(model_dir, tmp_path)
    config = TrainConfig.model_validate({**TINY, "eval_fraction": 0})
    for run in ("a", "b"):
        train("seeded", settings, config, tmp_path / run, max_steps=1)
    assert (tmp_path / "a" / "adapter_model.safetensors").read_bytes() == (
        tmp_path / "b" / "adapter_model.safetensors"
    ).read_bytes()


def test_data_mix_and_neftune_change_the_training(model_dir: Path, tmp_path: Path) -> None:
    """Mixing in train_kb.jsonl trains on both files; NEFTune's noise changes the result of the same seeded run."""
    folder = write_adapter(tmp_path, "mixed", LEGAL_LINES[:6])
    kb_lines = (REPO / "adapters" / "legal" / "train_kb.jsonl").read_text(encoding="utf-8").splitlines()[:4]
    (folder / "train_kb.jsonl").write_text("\n".join(kb_lines) + "\n", encoding="utf-8")
    settings = settings_for(model_dir, tmp_path)
    base = {**TINY, "eval_fraction": 0, "data": ["train.jsonl", "train_kb.jsonl"]}
    plain = train("mixed", settings, TrainConfig.model_validate(base), tmp_path / "plain", max_steps=1)
    assert plain["n_total"] == 10 and plain["data"] == "train.jsonl, train_kb.jsonl"
    assert "(train.jsonl, train_kb.jsonl)" in (tmp_path / "plain" / "README.md").read_text()
    train("mixed", settings, TrainConfig.model_validate({**base, "neftune_noise_alpha": 5}), tmp_path / "noisy",
          max_steps=1)  # fmt: skip
    assert (tmp_path / "plain" / "adapter_model.safetensors").read_bytes() != (
        tmp_path / "noisy" / "adapter_model.safetensors"
    ).read_bytes(), "the noise reaches the training"
    with pytest.raises(ValidationError):
        TrainConfig.model_validate({"data": []})
