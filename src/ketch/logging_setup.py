"""Logging of ketch's server processes (scheduler, web, standalone).

One line per message with time, level and logger name, to stderr, at
``[logging] logging_level``. Uvicorn is started with ``log_config=None`` so its
loggers propagate here instead of installing their own format. Task tries do not
use this: their output is the task's own stdout (see ``ketch.worker``).
"""

from __future__ import annotations

import logging
import sys

from ketch.config import Settings

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%dT%H:%M:%S%z"

# Libraries that are chatty at INFO; their warnings still show.
_QUIET = ("httpx", "httpcore", "watchfiles", "alembic.runtime.migration")


def configure_logging(settings: Settings) -> None:
    """Replace the root logger's handlers with one stderr handler (idempotent)."""
    level = getattr(logging, settings.logging.logging_level)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT, DATE_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in _QUIET:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
