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
from ketch.logs.archive.s3 import S3Archive
from ketch.logs.archive.s3_client import ConnectionLookup

if TYPE_CHECKING:
    from ketch.config import Settings
    from ketch.logs.shipper import ShipperConfig

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


def s3_archive_for_try(config: ShipperConfig) -> LogArchive:
    """The S3 archive a pod's log pump ships to. Credentials come from the pod's identity
    (the boto3 chain), or from ``remote_log_conn_id`` read through the execution API with
    the try's token (the pump reads it once, when it first ships)."""
    from ketch.config import LoggingSettings

    logging = LoggingSettings(
        remote_logging=True,
        remote_base_log_folder=config.remote_base_log_folder,
        remote_log_conn_id=config.conn_id,
        s3_endpoint_url=config.endpoint_url,
        s3_region=config.region,
        encrypt_s3_logs=config.encrypt,
        s3_kms_key_id=config.kms_key_id,
    )
    return S3Archive.from_settings(logging, _connection_through_api if config.conn_id else None)


def _connection_through_api(conn_id: str) -> dict[str, object]:
    from ketch.worker.client import task_client

    data = dict(task_client().get_connection(conn_id))
    return {
        "login": data.get("login"),
        "password": data.get("password"),
        "extra": data.get("extra"),
    }
