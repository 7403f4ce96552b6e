"""The deployment files agree with the app: the Space front matter, compose.yaml's settings, the Dockerfiles.

Fast checks of the files only; `make container-test` builds and runs the image for real (docs/deploy.md).
"""

from __future__ import annotations

import re

import pytest
import yaml

from app.config import Settings
from tests.conftest import REPO

# https://huggingface.co/docs/hub/spaces-config-reference
SPACE_COLORS = {"red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray"}


def front_matter() -> dict:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n"), "a Space reads its configuration from the README's first lines"
    return yaml.safe_load(text.split("---\n", 2)[1])


def test_readme_front_matter_is_a_docker_space_on_the_apps_port() -> None:
    space = front_matter()
    assert space["sdk"] == "docker"
    assert space["app_port"] == Settings().ui.port, "the Space sends traffic to the port the app listens on"
    assert {space["colorFrom"], space["colorTo"]} <= SPACE_COLORS
    assert 0 < len(space["short_description"]) <= 60, "the Hub caps short_description at 60 characters"
    assert space["suggested_hardware"] == "cpu-basic" and space["title"] and space["emoji"]


def setting_exists(variable: str) -> bool:
    """ARENA_SECTION__KEY names a field of Settings."""
    section, _, key = variable.removeprefix("ARENA_").lower().partition("__")
    model = Settings.model_fields.get(section)
    return model is not None and key in model.annotation.model_fields  # type: ignore[union-attr]


def test_compose_sets_only_real_settings_and_points_the_app_at_its_vllm_service() -> None:
    compose = yaml.safe_load((REPO / "compose.yaml").read_text(encoding="utf-8"))
    services = compose["services"]
    assert {"vllm", "app", "postgres"} <= set(services)
    app_env = services["app"]["environment"]
    for variable in (name for service in services.values() for name in service.get("environment", {})):
        if variable.startswith("ARENA_"):
            assert setting_exists(variable), f"{variable} is not a setting of app/config.py"
    port = next(arg for arg in services["vllm"]["command"] if arg.startswith("--port=")).split("=")[1]
    assert app_env["ARENA_VLLM__URL"] == f"http://vllm:{port}/v1"
    assert services["postgres"]["profiles"] == ["postgres"], "PostgreSQL is optional"
    served = {arg.split("=")[0] for arg in services["vllm"]["command"] if re.fullmatch(r"\w+=adapters/\w+", arg)}
    shipped = {path.name for path in (REPO / "adapters").iterdir() if (path / "adapter_config.json").is_file()}
    assert served == shipped, "the vLLM service serves every shipped adapter"


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu"])
def test_dockerfiles_run_as_uid_1000_with_a_health_check(name: str) -> None:
    text = (REPO / name).read_text(encoding="utf-8")
    assert "\nUSER 1000\n" in text, "a Space runs as uid 1000; the app never needs root"
    assert "\nHEALTHCHECK " in text and "/data" in text
