"""The local gateway's models file: which model name is served by which OpenAI-compatible URL.

    models:
      - name: qwen3-0-6b-instruct          # what clients put in the body's "model"
        url: http://127.0.0.1:8001/v1      # the backend's OpenAI base URL, ending in /v1
        upstream_model: Qwen/Qwen3-0.6B    # optional: the name the backend knows it by
        api_key: sk-...                    # optional: sent upstream as a Bearer token

`{simulator_port}` in a URL is replaced by the simulator's port from the settings, so the
default file (config/models.local.yaml) follows MAAS_SIMULATOR_PORT with zero configuration.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

DEFAULT_MODELS_FILE = Path(__file__).resolve().parent.parent / "config" / "models.local.yaml"
_SIMULATOR_PLACEHOLDER = "{simulator_port}"


class ModelBackend(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=253)
    url: str = Field(description="OpenAI base URL of the backend, ending in /v1")
    upstream_model: str | None = Field(default=None, min_length=1)
    api_key: SecretStr | None = None

    @field_validator("url")
    @classmethod
    def _openai_base(cls, value: str) -> str:
        url = value.rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        if not url.endswith("/v1"):
            raise ValueError("must be the OpenAI base URL, ending in /v1")
        return url

    @property
    def served_model(self) -> str:
        """The model name to send upstream."""
        return self.upstream_model or self.name


def load_models_file(path: Path | None, *, simulator_port: int = 8001) -> list[ModelBackend]:
    """Read and validate a models file; None means the default file (the built-in simulator).

    Raises ValueError naming the file and the entry for anything wrong in it.
    """
    source = path if path is not None else DEFAULT_MODELS_FILE
    try:
        document = yaml.safe_load(source.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"models file {source}: cannot be read ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise ValueError(f"models file {source}: not valid YAML ({exc})") from exc
    if not isinstance(document, dict) or not isinstance(document.get("models"), list):
        raise ValueError(f"models file {source}: expected a list of models under 'models:'")

    backends: list[ModelBackend] = []
    seen: set[str] = set()
    for index, entry in enumerate(document["models"]):
        label = f"entry {index}"
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            label = f"entry {index} ({entry['name']!r})"
        if not isinstance(entry, dict):
            raise ValueError(f"models file {source}: {label} must be a mapping with name and url")
        if isinstance(entry.get("url"), str):
            entry = {**entry, "url": entry["url"].replace(_SIMULATOR_PLACEHOLDER, str(simulator_port))}
        try:
            backend = ModelBackend.model_validate(entry)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'entry'}: {err['msg']}" for err in exc.errors()
            )
            raise ValueError(f"models file {source}: {label}: {problems}") from exc
        if backend.name in seen:
            raise ValueError(f"models file {source}: {label}: model {backend.name!r} is listed twice")
        seen.add(backend.name)
        backends.append(backend)
    return backends
