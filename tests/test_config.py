"""Settings: defaults, YAML < environment < command line, and one clear line per mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.__main__ import main, parse_args, settings_from_args
from app.config import ConfigError, load_settings


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_bind_to_loopback() -> None:
    settings = load_settings()
    assert settings.ui.host == "127.0.0.1"
    assert settings.vllm.host == "127.0.0.1"
    assert settings.ui.port == 7860
    assert settings.vllm.base_url == f"http://127.0.0.1:{settings.vllm.port}/v1"


def test_yaml_then_env_then_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write(tmp_path / "c.yaml", "vllm:\n  port: 9001\n  max_loras: 2\nui:\n  port: 7000\n")
    settings = load_settings(config)
    assert (settings.vllm.port, settings.vllm.max_loras, settings.ui.port) == (9001, 2, 7000)

    monkeypatch.setenv("ARENA_VLLM__PORT", "9002")
    settings = load_settings(config)
    assert settings.vllm.port == 9002, "environment must win over the YAML file"
    assert settings.vllm.max_loras == 2, "keys the environment does not set keep their YAML value"

    settings = load_settings(config, {"vllm.port": 9003, "ui.port": None})
    assert settings.vllm.port == 9003, "command-line flags must win over the environment"
    assert settings.ui.port == 7000, "an unset flag (None) must not override"


def test_config_file_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARENA_CONFIG", str(write(tmp_path / "c.yaml", "ui:\n  panels: 3\n")))
    assert load_settings().ui.panels == 3


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("vllm:\n  port: 99999\n", "vllm.port: input should be less than or equal to 65535 (got 99999)"),
        ("vllm:\n  port: abc\n", "vllm.port: input should be a valid integer"),
        ("ui:\n  panels: 7\n", "ui.panels: input should be less than or equal to 4"),
        ("vllm:\n  url: gpu-box:8000\n", "vllm.url: value error, expected an http(s):// url"),
        ("vllm:\n  max_lora: 4\n", "unknown key 'vllm.max_lora'"),
        ("modle:\n  path: x\n", "unknown key 'modle'"),
    ],
)
def test_bad_values_name_key_and_expectation(tmp_path: Path, yaml_text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path / "c.yaml", yaml_text))
    message = str(info.value)
    assert expected in message.lower(), message
    assert "\n" not in message, "a config error is one line"


def test_malformed_yaml_names_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"c\.yaml line 3: not valid YAML"):
        load_settings(write(tmp_path / "c.yaml", "vllm:\n  port: 1\n  : : [\n"))


def test_yaml_must_be_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="expected a mapping of sections"):
        load_settings(write(tmp_path / "c.yaml", "- just\n- a list\n"))


def test_missing_explicit_file() -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings("does-not-exist.yaml")


def test_bad_env_value_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARENA_UI__PORT", "seventy")
    with pytest.raises(ConfigError, match=r"ui\.port: input should be a valid integer"):
        load_settings()


def test_external_url_gets_v1_suffix() -> None:
    settings = load_settings(None, {"vllm.url": "http://gpu-box:8000/"})
    assert settings.vllm.base_url == "http://gpu-box:8000/v1"


def test_cli_flags_map_to_settings() -> None:
    args = parse_args(["--vllm-url", "http://10.1.2.3:8000/v1", "--port", "7999", "--model", "org/model"])
    settings = settings_from_args(args)
    assert settings.vllm.url == "http://10.1.2.3:8000/v1"
    assert settings.ui.port == 7999
    assert settings.model.path == "org/model"


def test_main_reports_config_error_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("config error: command line: ui.port:"), err
    assert len(err.splitlines()) == 1


def test_bad_override_names_section_and_key() -> None:
    with pytest.raises(ConfigError, match=r"^command line: paths\.data: input is not a valid path"):
        load_settings(None, {"paths.data": 5})
