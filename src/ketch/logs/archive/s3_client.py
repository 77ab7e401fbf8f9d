"""The S3 client of the log archive, and what its errors mean to ketch.

Apart from the archive's layout because others need it too (the S3KeySensor makes its
client the same way, from an Airflow-style aws connection), and because the one place
that decides which botocore errors are worth a retry (:class:`ArchiveUnavailable`) and
which are not (:class:`ArchiveError`) should be read on its own. boto3 and botocore are
imported only when a client is made or an error is translated (a try imports this).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ketch.logs.archive.base import ArchiveError, ArchiveUnavailable

if TYPE_CHECKING:
    from botocore.config import Config

# Error codes worth a retry later (besides any 5xx); KMS codes come as "KMS.<code>".
_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "RequestTimeout",
        "InternalError",
        "ServiceUnavailable",
    }
)
# HeadBucket's errors have no body, only a status: name them as the other calls do.
_BARE_STATUS = {
    "404": ("NoSuchBucket", "The specified bucket does not exist"),
    "403": ("AccessDenied", "Access Denied"),
}

ConnectionLookup = Callable[[str], Mapping[str, Any]]


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix/`` -> ``("bucket", "some/prefix")``."""
    if not url.startswith("s3://") or not url[5:].split("/", 1)[0]:
        raise ArchiveError(f"{url!r} is not an s3://bucket[/prefix] URL")
    bucket, _, prefix = url[5:].partition("/")
    return bucket, prefix.strip("/")


def make_client(
    *,
    region: str | None = None,
    endpoint_url: str | None = None,
    credentials: Mapping[str, str | None] | None = None,
    config: Config | None = None,
    verify: bool | str | None = None,
) -> Any:
    """An S3 client from a boto3 Session: the given credentials, else the chain.

    Without ``endpoint_url`` none is passed, so boto3 honours ``AWS_ENDPOINT_URL_S3``
    and ``AWS_ENDPOINT_URL`` itself. Timeouts are short and retries few: the caller
    (the log shipper) retries with its own backoff, and a try must not hang on S3."""
    import boto3
    from botocore.config import Config

    session = boto3.session.Session(region_name=region, **(credentials or {}))
    # total_max_attempts counts the first try, as AWS_MAX_ATTEMPTS does (botocore's
    # retries "max_attempts" would count retries only: 3 would mean 4 attempts).
    merged = Config(
        connect_timeout=5, read_timeout=20, retries={"mode": "standard", "total_max_attempts": 3}
    )
    if config is not None:
        merged = merged.merge(config)
    options: dict[str, Any] = {"endpoint_url": endpoint_url} if endpoint_url else {}
    if verify is not None:  # False, or a CA bundle's path (botocore's verify)
        options["verify"] = verify
    return session.client("s3", config=merged, **options)


def connection_settings(
    connection: Mapping[str, Any],
) -> tuple[dict[str, str | None], dict[str, Any]]:
    """An aws connection's credentials (login, password, extra's aws_session_token)
    and its extra (region_name, endpoint_url), as Airflow's aws connections have them."""
    extra = connection.get("extra") or {}
    if isinstance(extra, str):
        extra = json.loads(extra) if extra.strip() else {}
    if not isinstance(extra, dict):
        raise ValueError("its extra is not a JSON object")
    credentials = {
        "aws_access_key_id": connection.get("login") or None,
        "aws_secret_access_key": connection.get("password") or None,
        "aws_session_token": extra.get("aws_session_token") or None,
    }
    return credentials, extra


def one_line(text: str) -> str:
    return " ".join(text.split())


@contextmanager
def s3_calls(where: str) -> Iterator[None]:
    """Turn botocore's exceptions into ArchiveError / ArchiveUnavailable naming ``where``."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except (BotoCoreError, ClientError) as exc:
        raise s3_error(exc, where) from None


def s3_error(exc: Exception, where: str) -> ArchiveError:
    """The archive error a botocore exception means: unavailable (worth a retry later:
    5xx, throttling, unreachable, cut mid-body) or not (no credentials, access denied...)."""
    from botocore.exceptions import (
        ClientError,
        ConnectionError,
        HTTPClientError,
        IncompleteReadError,
    )

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        code = str(error.get("Code") or status)
        code, message = _BARE_STATUS.get(code, (code, str(error.get("Message") or "")))
        transient = status >= 500 or status == 429 or code.split(".")[-1] in _TRANSIENT_CODES
        kind = ArchiveUnavailable if transient else ArchiveError
        return kind(one_line(f"{where}: {code}: {message}".rstrip(": ")))
    text = one_line(f"{where}: {type(exc).__name__}: {exc}")
    if isinstance(exc, ConnectionError | HTTPClientError | IncompleteReadError):
        return ArchiveUnavailable(text)  # unreachable, timed out, cut mid-body
    return ArchiveError(text)  # no credentials, invalid parameters, ...
