"""Where tries' logs are archived: a local folder, or S3 when ``remote_logging`` is on.

:func:`open_archive` picks the archive the settings describe; everything else
depends only on the :class:`LogArchive` protocol. Importing this package is cheap
(boto3 is imported only when an S3 archive makes its client).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ketch.logs.archive.base import (
    ArchiveError,
    ArchiveUnavailable,
    Completion,
    LogArchive,
    log_key,
)
from ketch.logs.archive.local import LocalFolderArchive
from ketch.logs.archive.s3 import ConnectionLookup, S3Archive

if TYPE_CHECKING:
    from ketch.config import Settings

__all__ = [
    "ArchiveError",
    "ArchiveUnavailable",
    "Completion",
    "ConnectionLookup",
    "LocalFolderArchive",
    "LogArchive",
    "S3Archive",
    "log_key",
    "open_archive",
]


def open_archive(
    settings: Settings, connection_lookup: ConnectionLookup | None = None
) -> LogArchive:
    """The S3 archive of ``[logging] remote_base_log_folder`` when ``remote_logging`` is
    on (its ``remote_log_conn_id`` resolved with ``connection_lookup``: a connection's
    ``login``, ``password`` and ``extra``), else the local log folder itself."""
    if settings.logging.remote_logging:
        return S3Archive.from_settings(settings.logging, connection_lookup)
    return LocalFolderArchive(settings.log_folder)
