"""The health check's answer: its own module, since the health target (a liveness probe, and
what a cold start is measured on) needs no other model (shared/fields.py)."""

from __future__ import annotations

from typing import Literal

from shared.fields import Response


class Health(Response):
    status: Literal["healthy", "degraded"]
    store: str
    version: str
