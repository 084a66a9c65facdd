"""The ModelCatalog protocol: a models file on one machine, KServe in a cluster."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str
    namespace: str
    url: str
    ready: bool
    created: int  # unix seconds, for the OpenAI listing
    owned_by: str


@runtime_checkable
class ModelCatalog(Protocol):
    def list_models(self) -> list[ModelInfo]:
        """What `GET /models` shows (KServe InferenceServices in a cluster)."""
        ...

    def list_openai_models(self) -> list[ModelInfo]:
        """What `GET /v1/models` shows (KServe LLMInferenceServices in a cluster)."""
        ...
