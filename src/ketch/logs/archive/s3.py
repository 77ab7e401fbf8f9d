"""The archive in S3 (or an S3-compatible store): one object per shipped chunk.

Layout below ``s3://bucket/prefix`` (an empty prefix adds no leading slash)::

    {prefix}/{key}/{offset:016d}.chunk    bytes [offset, offset + Size) of the log
    {prefix}/{key}/complete.json          the log's Completion, once it is complete

S3 cannot append, so every write is a new object named by the offset of its first
byte (zero-padded, so the listing is in offset order too); a try killed mid-write
loses at most the chunk it was writing, and the try's pump and the scheduler's
rescue never overwrite each other.

Reading joins the chunks: list ``{prefix}/{key}/`` (ListObjectsV2; an object's Size
is the chunk's length), sort the chunks by offset and move a cursor from 0 — a chunk
wholly below the cursor is skipped (a repeat), one starting at or below it extends
it (an overlap holds the same bytes), one starting above it is a gap, and the log's
available size ends there. The bytes are then fetched with ranged GetObjects of only
the needed parts, and streamed piece by piece for a download (one GetObject per
chunk, its body read in pieces: memory stays flat for a log of any size).

**The listing is cached** per log (an LRU of :data:`LISTING_CACHE_SIZE` logs): once
``complete.json`` is listed and the chunks reach its ``size``, the log's listing can
no longer change and is never asked for again (a 200 MB log read in 64 KiB ranges
costs one LIST, not thousands). A log still being written keeps its last listing too:
a range inside the chunks already known is read without listing again; a size, a
download, or a range reaching past the known end lists afresh (new chunks arrive). A
chunk that is gone when fetched (retention deleted the log) drops the log's listing.
boto3 is imported only when the client is made (a try imports this module).

The client and its errors are in ``s3_client``, the layout and the joining of chunks in
``s3_layout``; this module is the archive itself: writing, the cached listing, reading,
retention.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from ketch.logs.archive.base import ArchiveError, ArchiveUnavailable, Completion
from ketch.logs.archive.s3_client import (
    ConnectionLookup,
    connection_settings,
    make_client,
    one_line,
    parse_s3_url,
    s3_calls,
)
from ketch.logs.archive.s3_layout import (
    CHUNK_NAME,
    COMPLETE_NAME,
    Listing,
    Piece,
    clip,
    join_chunks,
)

if TYPE_CHECKING:
    from botocore.config import Config

    from ketch.config import LoggingSettings

DELETE_BATCH = 1000  # DeleteObjects' limit per call
LISTING_CACHE_SIZE = 256  # logs whose chunk listing is kept (a few KB each: one Piece a chunk)


class S3Archive:
    """Logs kept as chunk objects below ``s3://bucket/prefix``.

    ``client_factory`` makes the boto3 client on first use (so building the archive
    costs nothing and never fails); ``encrypt``/``kms_key_id`` choose SSE-S3 or SSE-KMS
    for every object written."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        client_factory: Callable[[], Any] | None = None,
        encrypt: bool = False,
        kms_key_id: str | None = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._client_factory = client_factory or make_client
        self._client: Any = None
        self._lock = threading.Lock()
        self._sse = self._encryption(encrypt, kms_key_id)
        self._listings: OrderedDict[str, Listing] = OrderedDict()  # log key -> last listing
        self._listings_lock = threading.Lock()

    @classmethod
    def from_settings(
        cls,
        logging: LoggingSettings,
        connection_lookup: ConnectionLookup | None = None,
        *,
        config: Config | None = None,
    ) -> S3Archive:
        """The archive ``[logging]`` describes; ``config`` overrides botocore's (tests
        shorten timeouts with it). The connection is looked up when the client is made."""
        bucket, prefix = parse_s3_url(logging.remote_base_log_folder or "")
        conn_id = logging.remote_log_conn_id
        where = f"s3://{bucket}/{prefix}".rstrip("/")
        if conn_id and connection_lookup is None:
            raise ArchiveError(f"{where}: remote_log_conn_id {conn_id!r} needs a connection lookup")

        def factory() -> Any:
            credentials: dict[str, str | None] = {}
            extra: dict[str, Any] = {}
            if conn_id and connection_lookup is not None:
                try:
                    credentials, extra = connection_settings(connection_lookup(conn_id))
                except Exception as exc:  # an unknown id, a malformed extra
                    raise ArchiveError(
                        one_line(f"{where}: connection {conn_id!r}: {exc}")
                    ) from None
            return make_client(
                region=logging.s3_region or extra.get("region_name"),
                endpoint_url=logging.s3_endpoint_url or extra.get("endpoint_url"),
                credentials=credentials,
                config=config,
            )

        return cls(
            bucket,
            prefix,
            client_factory=factory,
            encrypt=logging.encrypt_s3_logs,
            kms_key_id=logging.s3_kms_key_id,
        )

    @staticmethod
    def _encryption(encrypt: bool, kms_key_id: str | None) -> dict[str, str]:
        if not encrypt:
            return {}
        if kms_key_id:
            return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": kms_key_id}
        return {"ServerSideEncryption": "AES256"}

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    @property
    def client(self) -> Any:
        """The boto3 client, made on first use and then kept (boto3 clients are thread-safe)."""
        with self._lock:
            if self._client is None:
                try:
                    with self._calls():
                        self._client = self._client_factory()
                except ValueError as exc:  # boto3's for bad settings (an invalid endpoint URL)
                    raise ArchiveError(one_line(f"{self.describe()}: {exc}")) from None
            return self._client

    # -- names -------------------------------------------------------------------------

    def _log_prefix(self, key: str) -> str:
        return f"{self.prefix}/{key}/" if self.prefix else f"{key}/"

    def chunk_name(self, key: str, offset: int) -> str:
        return f"{self._log_prefix(key)}{offset:016d}.chunk"

    def completion_name(self, key: str) -> str:
        return self._log_prefix(key) + COMPLETE_NAME

    # -- errors ------------------------------------------------------------------------

    def _calls(self) -> AbstractContextManager[None]:
        """Turn botocore's exceptions into ArchiveError / ArchiveUnavailable."""
        return s3_calls(self.describe())

    # -- writing -----------------------------------------------------------------------

    def check(self) -> None:
        """HeadBucket: the bucket exists and these credentials may use it."""
        with self._calls():
            self.client.head_bucket(Bucket=self.bucket)

    def write_chunk(self, key: str, offset: int, data: bytes) -> None:
        if offset < 0:
            raise ValueError(f"negative offset {offset}")
        if not data:
            return  # an empty chunk adds nothing to the log
        name = self.chunk_name(key, offset)
        with self._calls():
            self.client.put_object(Bucket=self.bucket, Key=name, Body=data, **self._sse)

    def complete(self, key: str, completion: Completion) -> None:
        body = json.dumps(completion.to_json()).encode()
        with self._calls():
            self.client.put_object(
                Bucket=self.bucket,
                Key=self.completion_name(key),
                Body=body,
                ContentType="application/json",
                **self._sse,
            )

    # -- reading -----------------------------------------------------------------------

    def completion(self, key: str) -> Completion | None:
        body = self._get(self.completion_name(key))
        if body is None:
            return None
        with self._calls():
            text = body.read()
        try:
            return Completion.from_json(json.loads(text))
        except (ValueError, KeyError, TypeError) as exc:
            raise ArchiveError(
                f"{self.describe()}: {self.completion_name(key)} is not a completion record: {exc}"
            ) from None

    def _list(self, key: str) -> Listing:
        """One (paginated) listing of the log's objects: its chunks joined, and whether
        it is final. The completion record is read only when it is listed, to check that
        the chunks reach its size (a listing made while the last chunks were written is
        not final)."""
        prefix = self._log_prefix(key)
        chunks: list[tuple[int, int, str]] = []
        completed = False
        with self._calls():
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    name = obj["Key"][len(prefix) :]
                    if match := CHUNK_NAME.fullmatch(name):
                        chunks.append((int(match[1]), int(obj["Size"]), obj["Key"]))
                    elif name == COMPLETE_NAME:
                        completed = True
        listing = Listing(tuple(join_chunks(chunks)), final=False)
        if completed:
            completion = self.completion(key)
            final = completion is not None and listing.end >= completion.size
            listing = Listing(listing.pieces, final=final)
        return listing

    def _listing(self, key: str, *, reaching: int | None = None) -> Listing:
        """The log's listing: the cached one if it is final, or if ``reaching`` (the end
        of a range) lies within the chunks it knows; else a fresh one (then cached)."""
        with self._listings_lock:
            cached = self._listings.get(key)
            if cached is not None:
                self._listings.move_to_end(key)
                if cached.final or (reaching is not None and reaching <= cached.end):
                    return cached
        listing = self._list(key)
        with self._listings_lock:
            self._listings[key] = listing
            self._listings.move_to_end(key)
            while len(self._listings) > LISTING_CACHE_SIZE:
                self._listings.popitem(last=False)
        return listing

    def _forget(self, *keys: str) -> None:
        with self._listings_lock:
            for key in keys:
                self._listings.pop(key, None)

    def _get(self, name: str, byte_range: str | None = None) -> Any:
        """The object's streaming Body (of the range only), or None if it is absent."""
        from botocore.exceptions import ClientError

        ranged = {"Range": byte_range} if byte_range else {}
        client = self.client
        with self._calls():
            try:
                return client.get_object(Bucket=self.bucket, Key=name, **ranged)["Body"]
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "NoSuchKey":
                    raise
        return None

    def size(self, key: str) -> int:
        return self._listing(key).end

    def read(self, key: str, offset: int, limit: int) -> bytes:
        if offset < 0 or limit < 0:
            raise ValueError(f"negative offset {offset} or limit {limit}")
        if limit == 0:
            return b""
        listing = self._listing(key, reaching=offset + limit)
        return b"".join(self._stream(key, listing, offset, offset + limit, chunk_size=limit))

    def iter_bytes(self, key: str, offset: int = 0, chunk_size: int = 65536) -> Iterator[bytes]:
        """The log from ``offset`` to its end as listed when the first piece is asked for:
        one listing (none for a final log already listed), then one ranged GetObject per
        chunk, streamed in pieces of ``chunk_size``."""
        if offset < 0 or chunk_size <= 0:
            raise ValueError(f"negative offset {offset} or chunk size {chunk_size}")

        def stream() -> Iterator[bytes]:
            yield from self._stream(key, self._listing(key), offset, None, chunk_size)

        return stream()

    def _stream(
        self, key: str, listing: Listing, start: int, stop: int | None, chunk_size: int
    ) -> Iterator[bytes]:
        """Bytes ``[start, stop)``, one ranged GetObject per chunk, each body read in
        pieces of ``chunk_size`` (memory stays flat for a log of any size).

        A body cut mid-way (the connection of a slow reader's stream dropped while it
        waited) is fetched again from where it broke, once per chunk."""
        for piece in clip(listing.pieces, start, stop):
            at, resumed = piece.start, False
            while True:
                rest = Piece(piece.name, piece.base, at, piece.end)
                body = self._get(piece.name, rest.range_header())
                if body is None:
                    self._forget(key)  # deleted since the listing (retention): the log ends
                    return
                try:
                    with self._calls():
                        for data in body.iter_chunks(chunk_size):
                            at += len(data)
                            yield data
                    break
                except ArchiveUnavailable:
                    if resumed or at >= piece.end:
                        raise
                    resumed = True
                finally:
                    body.close()

    # -- retention ---------------------------------------------------------------------

    def delete_older_than(self, cutoff: dt.datetime) -> int:
        """Delete every log whose newest object is older than ``cutoff``.

        The whole prefix is listed once and grouped by log key in memory (a name and a
        date per object); objects that are neither chunks nor completions are left."""
        if cutoff.tzinfo is None:
            cutoff = cutoff.replace(tzinfo=dt.UTC)
        newest, names = self._objects_by_log()
        old = [log for log, moment in newest.items() if moment < cutoff]
        doomed = [name for log in old for name in names[log]]
        for start in range(0, len(doomed), DELETE_BATCH):
            self._delete(doomed[start : start + DELETE_BATCH])
        self._forget(*old)
        return len(old)

    def _objects_by_log(self) -> tuple[dict[str, dt.datetime], dict[str, list[str]]]:
        root = f"{self.prefix}/" if self.prefix else ""
        newest: dict[str, dt.datetime] = {}
        names: dict[str, list[str]] = defaultdict(list)
        with self._calls():
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=root
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    log, _, name = obj["Key"][len(root) :].rpartition("/")
                    if not log or not (name == COMPLETE_NAME or CHUNK_NAME.fullmatch(name)):
                        continue
                    names[log].append(obj["Key"])
                    if log not in newest or obj["LastModified"] > newest[log]:
                        newest[log] = obj["LastModified"]
        return newest, names

    def _delete(self, batch: list[str]) -> None:
        with self._calls():
            response = self.client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": name} for name in batch], "Quiet": True},
            )
        errors = response.get("Errors") or []
        if errors:
            first = errors[0]
            raise ArchiveError(
                one_line(
                    f"{self.describe()}: {first.get('Code')}: {first.get('Message')} "
                    f"({len(errors)} objects not deleted, e.g. {first.get('Key')})"
                )
            )
