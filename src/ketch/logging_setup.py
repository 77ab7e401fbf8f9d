"""Logging of ketch's server processes (scheduler, web, standalone).

One line per message with time, level and logger name, to stderr, at
``[logging] logging_level``; with ``[logging] json_format`` each line is a JSON object
(``ketch.logs.json_lines.JsonLogFormatter``) for collectors such as Fluent Bit or Loki.
Uvicorn is started with ``log_config=None`` so its loggers propagate here instead of
installing their own format. Task tries do not use this: their output is the task's
own stdout (see ``ketch.worker``).
"""

from __future__ import annotations

import logging
import sys

from ketch.config import Settings

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%dT%H:%M:%S%z"

# Libraries that are chatty at INFO; their warnings still show.
_QUIET = ("httpx", "httpcore", "watchfiles", "alembic.runtime.migration")


class _HideExecutionApiAccess(logging.Filter):
    """Drop access-log lines of the execution API: tries call it several times each, and
    a line per call would drown the REST API's access log (errors still show as 4xx/5xx,
    except 503: the database is unavailable, and ``ketch.api`` logs that once per outage)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 5:
            path, status = str(args[2]), args[4]
            if (
                path.startswith("/execution/")
                and isinstance(status, int)
                and (status < 400 or status == 503)
            ):
                return False
        return True


def configure_logging(settings: Settings) -> None:
    """Replace the root logger's handlers with one stderr handler (idempotent)."""
    level = getattr(logging, settings.logging.logging_level)
    handler = logging.StreamHandler(sys.stderr)
    if settings.logging.json_format:
        from ketch.logs.json_lines import JsonLogFormatter

        handler.setFormatter(JsonLogFormatter())
    else:
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
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, _HideExecutionApiAccess) for f in access.filters):
        access.addFilter(_HideExecutionApiAccess())
