"""The health check's response (``/api/v1/health``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class HealthResponse(BaseModel):
    status: Literal["ok", "unhealthy"]
    database: str
    log_archive: str = Field(
        default="ok",
        description="'ok', or why task logs cannot be archived or read from the archive "
        "(the web still answers: tries keep their logs on local disk meanwhile)",
    )
