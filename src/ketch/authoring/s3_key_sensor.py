"""``S3KeySensor``: waits for keys in S3 (Airflow's ``airflow.providers.amazon.aws.sensors.s3``).

``bucket_key`` is one key or a list (all must exist), a full ``s3://bucket/key`` URL when
``bucket_name`` is not given; with ``wildcard_match`` each is an ``fnmatch`` pattern and any
matching object counts (listed under the pattern's literal prefix). ``check_fn`` receives
the found objects' metadata (``Size``, plus ``metadata_keys``) and decides. Credentials and
the endpoint come from the ketch connection ``aws_conn_id`` of type ``aws`` (its ``login``,
``password`` and extra ``region_name``, ``endpoint_url``, ``aws_session_token``: the same
reading as the log archive's ``remote_log_conn_id``), else from boto3's chain, which
honours ``AWS_ENDPOINT_URL``. As in Airflow, a missing ``aws_default`` connection means the
chain. boto3 is imported by the poke only: DAG files stay light.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ketch.authoring.sensors import BaseSensor
from ketch.authoring.tasks import TaskResult
from ketch.authoring.xcom_args import XComPull

if TYPE_CHECKING:
    from ketch.authoring.context import Context

DEFAULT_CONN_ID = "aws_default"
_WILDCARD = re.compile(r"[*?\[]")


def split_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> ``("bucket", "key")``; ValueError saying what is wrong."""
    if not url.startswith("s3://"):
        raise ValueError(f"bucket_key {url!r} is not an s3:// URL and no bucket_name is given")
    bucket, _, key = url[5:].partition("/")
    if not bucket or not key:
        raise ValueError(f"bucket_key {url!r} names no bucket or no key")
    return bucket, key


def literal_prefix(pattern: str) -> str:
    """The part of an fnmatch pattern before its first wildcard: what to list under."""
    match = _WILDCARD.search(pattern)
    return pattern[: match.start()] if match else pattern


class S3KeySensor(BaseSensor):
    """Pokes until every ``bucket_key`` exists in S3 (or matches, with ``wildcard_match``)."""

    template_fields: tuple[str, ...] = ("bucket_key", "bucket_name")

    def __init__(
        self,
        task_id: str,
        bucket_key: str | Sequence[str],
        *,
        bucket_name: str | None = None,
        wildcard_match: bool = False,
        check_fn: Callable[..., bool] | None = None,
        aws_conn_id: str | None = DEFAULT_CONN_ID,
        verify: bool | str | None = None,
        use_regex: bool = False,
        metadata_keys: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("deferrable", None)  # no triggerer in ketch: reschedule mode frees the slot
        super().__init__(task_id, **kwargs)
        self.bucket_key = bucket_key
        self.bucket_name = bucket_name
        self.wildcard_match = wildcard_match
        self.check_fn = check_fn
        self.aws_conn_id = aws_conn_id
        self.verify = verify
        self.use_regex = use_regex
        self.metadata_keys = metadata_keys or []

    def _run(self, context: Context, xcom_pull: XComPull) -> TaskResult:
        from ketch.authoring.templating import render_fields, report_rendered

        rendered = render_fields(
            self,
            context,
            {"bucket_key": self.bucket_key, "bucket_name": self.bucket_name},
            xcom_pull=xcom_pull,
        )
        report_rendered(rendered)
        keys = rendered["bucket_key"]
        self._keys = [keys] if isinstance(keys, str) else list(keys)
        self._bucket = rendered["bucket_name"]
        self._client: Any = None
        return super()._run(context, xcom_pull)

    def poke(self, context: Context) -> bool:
        found = [self._check_key(key) for key in self._keys]
        if not all(found):
            return False
        if self.check_fn is None:
            return True
        objects = [obj for batch in found for obj in batch]
        return bool(self.check_fn(objects))

    def _check_key(self, key: str) -> list[dict[str, Any]]:
        """The objects ``key`` names (several for a pattern); empty when there is none."""
        bucket, key = (self._bucket, key) if self._bucket else split_s3_url(key)
        print(f"Poking for key : s3://{bucket}/{key}", flush=True)
        if self.wildcard_match or self.use_regex:
            return self._matching(bucket, key)
        head = self._head(bucket, key)
        return [head] if head is not None else []

    def _matching(self, bucket: str, pattern: str) -> list[dict[str, Any]]:
        prefix = "" if self.use_regex else literal_prefix(pattern)
        paginator = self.client().get_paginator("list_objects_v2")
        out: list[dict[str, Any]] = []
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                name = obj["Key"]
                hit = re.match(pattern, name) if self.use_regex else fnmatch.fnmatch(name, pattern)
                if hit:
                    out.append({"Key": name, "Size": obj["Size"]})
        return out

    def _head(self, bucket: str, key: str) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        try:
            head = self.client().head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        meta: dict[str, Any] = {"Key": key, "Size": head.get("ContentLength")}
        for name in self.metadata_keys:
            meta[name] = head.get(name)
        return meta

    def client(self) -> Any:
        """One S3 client per try, from the connection (or boto3's chain)."""
        if getattr(self, "_client", None) is None:
            self._client = make_s3_client(self.aws_conn_id, self.verify)
        return self._client


def make_s3_client(conn_id: str | None, verify: bool | str | None) -> Any:
    """An S3 client from the ketch connection ``conn_id`` (type aws), read through the
    execution API; boto3's chain when ``conn_id`` is None or a missing ``aws_default``."""
    from ketch.logs.archive.s3 import connection_settings, make_client

    credentials: dict[str, str | None] = {}
    extra: dict[str, Any] = {}
    if conn_id:
        connection = _aws_connection(conn_id)
        if connection is not None:
            credentials, extra = connection_settings(connection)
    return make_client(
        region=extra.get("region_name"),
        endpoint_url=extra.get("endpoint_url"),
        credentials=credentials,
        verify=verify if verify is not None else extra.get("verify"),
    )


def _aws_connection(conn_id: str) -> dict[str, Any] | None:
    from ketch.authoring.connection import Connection

    try:
        conn = Connection.get(conn_id)
    except KeyError:
        if conn_id == DEFAULT_CONN_ID:
            print(f"no connection {conn_id!r}: using boto3's default credentials", flush=True)
            return None
        raise
    if conn.conn_type != "aws":
        raise ValueError(f"connection {conn_id!r} is of type {conn.conn_type!r}, not aws")
    return {"login": conn.login, "password": conn.password, "extra": conn.extra}
