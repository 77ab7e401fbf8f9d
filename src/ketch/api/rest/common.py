"""Dependencies shared by the REST routers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query
from sqlalchemy.orm import Session

from ketch.api.deps import get_session, settings_dep
from ketch.config import Settings

SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(settings_dep)]

MAX_PAGE_LIMIT = 1000

Limit = Annotated[
    int, Query(ge=1, le=MAX_PAGE_LIMIT, description="Page size (default 50, as Airflow's).")
]
Offset = Annotated[int, Query(ge=0, description="Entries to skip.")]
