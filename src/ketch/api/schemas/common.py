"""What every resource's models share: the error body and the strict request body."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ErrorResponse(BaseModel):
    """An error: 400, 401, 403, 404, 409, 503 (a 422 has FastAPI's validation shape)."""

    detail: str


class StrictBody(BaseModel):
    """A request body: unknown fields are an error (422) rather than silently ignored."""

    model_config = ConfigDict(extra="forbid")
