"""The model listings' bodies and who may see which model.

The admin key sees every model; an API key sees the models its key may use (an empty
`models_allowed` means all), which is the quickstart's TODO "user-scoped model access listing".
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from shared.auth import may_use_model
from shared.catalog.base import ModelCatalog, ModelInfo
from shared.settings import Settings
from shared.store import ApiKey


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)  # compiled on first use


class ModelPublic(_Model):
    name: str
    namespace: str
    url: str
    ready: bool


class ModelList(_Model):
    models: list[ModelPublic]


class OpenAIModel(_Model):
    id: str
    created: int
    object: Literal["model"] = "model"
    owned_by: str


class OpenAIModelList(_Model):
    data: list[OpenAIModel]
    object: Literal["list"] = "list"


def visible(models: list[ModelInfo], key: ApiKey | None) -> list[ModelInfo]:
    """What a caller may see: everything for the admin (key None), else the key's models."""
    if key is None:
        return models
    return [m for m in models if may_use_model(key, m.name)]


def model_list(models: list[ModelInfo]) -> ModelList:
    return ModelList(
        models=[ModelPublic(name=m.name, namespace=m.namespace, url=m.url, ready=m.ready) for m in models]
    )


def openai_model_list(models: list[ModelInfo]) -> OpenAIModelList:
    return OpenAIModelList(
        data=[OpenAIModel(id=m.name, created=m.created, owned_by=m.owned_by) for m in models]
    )


def open_catalog(settings: Settings) -> ModelCatalog:
    """KServe in a cluster (MAAS_STORE=kubernetes), the models file on one machine."""
    if settings.store == "kubernetes":
        # Imported here so that only a cluster deployment loads the kubernetes client.
        from shared.catalog.kserve import KServeCatalog

        return KServeCatalog.from_settings(settings)
    from shared.catalog.filecatalog import FileModelCatalog

    return FileModelCatalog.from_settings(settings)
