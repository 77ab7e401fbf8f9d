"""Import errors of DAG files (``/api/v1/importErrors``)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from ketch.db.models import ImportError_


class ImportErrorResponse(BaseModel):
    """``stack_trace`` is Airflow's REST field; ``stacktrace`` (the column's name, and
    Airflow's model attribute) carries the same text for clients written against either."""

    import_error_id: int
    filename: str
    stack_trace: str
    stacktrace: str
    timestamp: datetime

    @classmethod
    def from_model(cls, row: ImportError_) -> ImportErrorResponse:
        return cls(
            import_error_id=row.id,
            filename=row.filename,
            stack_trace=row.stacktrace,
            stacktrace=row.stacktrace,
            timestamp=row.timestamp,
        )


class ImportErrorCollectionResponse(BaseModel):
    import_errors: list[ImportErrorResponse]
    total_entries: int
