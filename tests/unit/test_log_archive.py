"""The log archives' behaviour, the same suite over a local folder and S3.

S3 is moto in server mode, spoken to over real HTTP by boto3 (one bucket per test);
an outage is moto behind a TCP proxy that resets or holds every connection. Cases
that only one archive can have (gaps, encryption, credentials; symlinks, file modes)
follow the shared suite.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import stat
import tracemalloc
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from botocore.config import Config
from botocore.stub import Stubber

from ketch.config import LoggingSettings, Settings
from ketch.executors.base import TryKey
from ketch.logs.archive import (
    ArchiveError,
    ArchiveUnavailable,
    Completion,
    LocalFolderArchive,
    LogArchive,
    S3Archive,
    log_key,
    open_archive,
)
from ketch.logs.archive import s3 as s3_module
from ketch.logs.archive.s3_layout import join_chunks
from ketch.worker.task_log import log_path, open_log_file
from tests.support.moto_server import (
    DUMMY_CREDENTIALS,
    REGION,
    MotoProcess,
    MotoServer,
    create_bucket,
    s3_client,
    start_moto,
)
from tests.support.tcp_proxy import TcpProxy

KEY = log_key(TryKey("etl", "manual__2024-05-01T00:00:00+00:00", "load", 1))
OTHER = log_key(TryKey("etl", "manual__2024-05-01T00:00:00+00:00", "load", 10))


# -- fixtures ----------------------------------------------------------------------------


@functools.cache
def admin(url: str) -> Any:
    """One S3 client per server for the tests' own calls (making a client takes 0.1 s)."""
    return s3_client(url)


@pytest.fixture(scope="module")
def s3_server() -> Iterator[MotoServer]:
    server = start_moto()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Dummy credentials, and nothing of this machine's AWS configuration."""
    for name, value in DUMMY_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_MAX_ATTEMPTS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


@pytest.fixture
def bucket(s3_server: MotoServer, aws_env: None) -> str:
    name = f"ketch-logs-{uuid.uuid4().hex[:12]}"
    create_bucket(admin(s3_server.url), name)
    return name


def s3_settings(
    bucket: str, endpoint_url: str | None, prefix: str = "/logs", **logging: Any
) -> Settings:
    return Settings(
        logging=LoggingSettings(
            remote_logging=True,
            remote_base_log_folder=f"s3://{bucket}{prefix}",
            s3_endpoint_url=endpoint_url,
            s3_region=REGION,
            **logging,
        )
    )


@pytest.fixture(params=["local", "s3"])
def archive(request: pytest.FixtureRequest, tmp_path: Path) -> LogArchive:
    if request.param == "local":
        settings = Settings(logging=LoggingSettings(base_log_folder=tmp_path / "logs"))
        made = open_archive(settings)
        assert isinstance(made, LocalFolderArchive)
        return made
    bucket = request.getfixturevalue("bucket")
    server = request.getfixturevalue("s3_server")
    made = open_archive(s3_settings(bucket, server.url))
    assert isinstance(made, S3Archive)
    return made


def write_in_chunks(archive: LogArchive, key: str, data: bytes, size: int) -> None:
    for offset in range(0, len(data), size):
        archive.write_chunk(key, offset, data[offset : offset + size])


# -- both archives -----------------------------------------------------------------------


def test_chunks_in_order(archive: LogArchive) -> None:
    archive.write_chunk(KEY, 0, b"hello ")
    archive.write_chunk(KEY, 6, b"world\n")
    assert archive.size(KEY) == 12
    assert archive.read(KEY, 0, 100) == b"hello world\n"
    assert archive.completion(KEY) is None


def test_chunks_out_of_order(archive: LogArchive) -> None:
    archive.write_chunk(KEY, 12, b"third\n")
    archive.write_chunk(KEY, 6, b"world\n")
    archive.write_chunk(KEY, 0, b"hello ")
    assert archive.size(KEY) == 18
    assert archive.read(KEY, 0, 100) == b"hello world\nthird\n"


def test_overlapping_and_repeated_chunks(archive: LogArchive) -> None:
    data = bytes(range(65, 105))
    for start, end in [(0, 10), (5, 20), (0, 10), (12, 15), (20, 40), (20, 40), (19, 21)]:
        archive.write_chunk(KEY, start, data[start:end])
    assert archive.size(KEY) == 40
    assert archive.read(KEY, 0, 40) == data
    assert b"".join(archive.iter_bytes(KEY, chunk_size=3)) == data


def test_reads_across_chunk_boundaries(archive: LogArchive) -> None:
    data = b"0123456789abcdef"
    write_in_chunks(archive, KEY, data, 4)
    assert archive.read(KEY, 2, 7) == data[2:9]
    assert archive.read(KEY, 3, 1) == b"3"
    assert archive.read(KEY, 4, 4) == b"4567"
    assert archive.read(KEY, 0, 16) == data
    assert archive.read(KEY, 5, 0) == b""


def test_read_past_the_end(archive: LogArchive) -> None:
    write_in_chunks(archive, KEY, b"0123456789", 4)
    assert archive.read(KEY, 8, 100) == b"89"
    assert archive.read(KEY, 10, 5) == b""
    assert archive.read(KEY, 1000, 5) == b""
    assert list(archive.iter_bytes(KEY, offset=10)) == []


def test_completion_round_trip(archive: LogArchive) -> None:
    archive.write_chunk(KEY, 0, b"done\n")
    assert archive.completion(KEY) is None
    archive.complete(KEY, Completion(size=5, ended_at="2024-05-01T00:01:02.000Z"))
    assert archive.completion(KEY) == Completion(size=5, ended_at="2024-05-01T00:01:02.000Z")
    rescued = Completion(size=5, captured_by="scheduler", reason="pod evicted")
    archive.complete(KEY, rescued)  # a second record replaces the first
    assert archive.completion(KEY) == rescued
    assert archive.read(KEY, 0, 100) == b"done\n"  # the record is not part of the log


def test_absent_log(archive: LogArchive) -> None:
    assert archive.size(KEY) == 0
    assert archive.read(KEY, 0, 100) == b""
    assert list(archive.iter_bytes(KEY)) == []
    assert archive.completion(KEY) is None


def test_iter_bytes_of_a_multi_chunk_log(archive: LogArchive) -> None:
    data = b"".join(f"line {n}\n".encode() for n in range(500))
    offset = 0
    for size in (1, 7, 100, 1000, 2000):  # chunks of uneven sizes, then the rest
        archive.write_chunk(KEY, offset, data[offset : offset + size])
        offset += size
    archive.write_chunk(KEY, offset, data[offset:])
    pieces = list(archive.iter_bytes(KEY, chunk_size=64))
    assert b"".join(pieces) == data
    assert all(0 < len(piece) <= 64 for piece in pieces)
    assert b"".join(archive.iter_bytes(KEY, offset=1234)) == data[1234:]


def test_a_growing_log_is_read_fresh(archive: LogArchive) -> None:
    """Reads of a log still being written see the chunks that arrive after them, and
    completing it changes nothing in its bytes."""
    archive.write_chunk(KEY, 0, b"first\n")
    assert (archive.size(KEY), archive.read(KEY, 0, 100)) == (6, b"first\n")
    assert archive.read(KEY, 2, 3) == b"rst"
    archive.write_chunk(KEY, 6, b"second\n")
    assert archive.size(KEY) == 13
    assert archive.read(KEY, 3, 100) == b"st\nsecond\n"
    archive.write_chunk(KEY, 13, b"third\n")
    assert b"".join(archive.iter_bytes(KEY, offset=6)) == b"second\nthird\n"
    assert archive.read(KEY, 19, 10) == b""
    archive.write_chunk(KEY, 19, b"last\n")
    archive.complete(KEY, Completion(size=24))
    assert archive.read(KEY, 19, 10) == b"last\n"
    assert archive.size(KEY) == 24
    assert b"".join(archive.iter_bytes(KEY)) == b"first\nsecond\nthird\nlast\n"


def test_binary_and_invalid_utf8_round_trip(archive: LogArchive) -> None:
    data = bytes(range(256)) * 3 + b"\xff\xfe\xc3\x28\xed\xa0\x80\x00\r\n\xe2\x82"
    write_in_chunks(archive, KEY, data, 100)
    assert archive.size(KEY) == len(data)
    assert archive.read(KEY, 0, len(data)) == data
    assert b"".join(archive.iter_bytes(KEY, chunk_size=33)) == data


def test_delete_older_than(archive: LogArchive) -> None:
    for key in (KEY, OTHER):
        archive.write_chunk(key, 0, b"a log\n")
        archive.write_chunk(key, 6, b"more\n")
        archive.complete(key, Completion(size=11))
    now = dt.datetime.now(dt.UTC)
    assert archive.delete_older_than(now - dt.timedelta(days=1)) == 0
    assert archive.size(KEY) == archive.size(OTHER) == 11
    assert archive.delete_older_than(now + dt.timedelta(days=1)) == 2
    for key in (KEY, OTHER):
        assert archive.size(key) == 0
        assert archive.completion(key) is None
    assert archive.delete_older_than(now + dt.timedelta(days=1)) == 0


@pytest.mark.parametrize(
    "try_key",
    [
        TryKey("my dag", "manual run 1", "a task", 1),
        TryKey("données", "run_id=ünïcode ✓", "tâche", 2),
        TryKey("a+b", "scheduled__2024-05-01T00:00:00+00:00", "x=y&z%20", 3),
    ],
    ids=["spaces", "unicode", "plus-equals"],
)
def test_awkward_keys(archive: LogArchive, try_key: TryKey) -> None:
    key = log_key(try_key)
    archive.write_chunk(key, 0, b"first\n")
    archive.write_chunk(key, 6, b"second\n")
    archive.complete(key, Completion(size=13))
    assert archive.size(key) == 13
    assert archive.read(key, 3, 6) == b"st\nsec"
    assert archive.completion(key) == Completion(size=13)
    assert archive.size(KEY) == 0


def test_logs_do_not_mix(archive: LogArchive) -> None:
    """attempt=1.log and attempt=10.log share a name prefix, not their bytes."""
    archive.write_chunk(KEY, 0, b"one\n")
    archive.write_chunk(OTHER, 0, b"ten ten\n")
    assert archive.read(KEY, 0, 100) == b"one\n"
    assert archive.read(OTHER, 0, 100) == b"ten ten\n"


def test_check_passes(archive: LogArchive) -> None:
    archive.check()


# -- S3 only -----------------------------------------------------------------------------


@pytest.fixture
def s3_archive(bucket: str, s3_server: MotoServer) -> S3Archive:
    return S3Archive.from_settings(s3_settings(bucket, s3_server.url).logging)


def object_names(server: MotoServer, bucket: str) -> list[str]:
    listing = admin(server.url).list_objects_v2(Bucket=bucket)
    return sorted(obj["Key"] for obj in listing.get("Contents", []))


def test_s3_layout(s3_archive: S3Archive, s3_server: MotoServer, bucket: str) -> None:
    s3_archive.write_chunk(KEY, 0, b"hello ")
    s3_archive.write_chunk(KEY, 6, b"world\n")
    s3_archive.complete(KEY, Completion(size=12))
    assert object_names(s3_server, bucket) == [
        f"logs/{KEY}/0000000000000000.chunk",
        f"logs/{KEY}/0000000000000006.chunk",
        f"logs/{KEY}/complete.json",
    ]
    no_prefix = open_archive(s3_settings(bucket, s3_server.url, prefix="/"))
    no_prefix.write_chunk(KEY, 0, b"x")
    assert f"{KEY}/0000000000000000.chunk" in object_names(s3_server, bucket)
    assert no_prefix.describe() == f"s3://{bucket}"
    assert s3_archive.describe() == f"s3://{bucket}/logs"


def test_s3_join_chunks() -> None:
    """Sorted by offset: a repeat is skipped, an overlap extends, a gap ends the log."""
    chunks = [(4, 4, "b"), (0, 4, "a"), (2, 2, "repeat"), (6, 4, "c"), (12, 1, "after-gap")]
    pieces = join_chunks(chunks)
    assert [(p.name, p.base, p.start, p.end) for p in pieces] == [
        ("a", 0, 0, 4),
        ("b", 4, 4, 8),
        ("c", 6, 8, 10),
    ]
    assert pieces[2].range_header() == "bytes=2-3"
    assert join_chunks([(1, 5, "late")]) == []


def test_s3_gap_stops_the_size(s3_archive: S3Archive) -> None:
    s3_archive.write_chunk(KEY, 10, b"later")
    assert s3_archive.size(KEY) == 0
    s3_archive.write_chunk(KEY, 0, b"first")
    assert s3_archive.size(KEY) == 5
    assert s3_archive.read(KEY, 0, 100) == b"first"
    assert s3_archive.read(KEY, 7, 5) == b""
    assert b"".join(s3_archive.iter_bytes(KEY)) == b"first"
    s3_archive.write_chunk(KEY, 5, b"-mid-")
    assert s3_archive.size(KEY) == 15
    assert s3_archive.read(KEY, 0, 100) == b"first-mid-later"


def test_s3_reads_fetch_only_the_needed_ranges(s3_archive: S3Archive) -> None:
    write_in_chunks(s3_archive, KEY, b"0123456789abcdef", 4)
    ranges: list[tuple[str, str]] = []

    def record(params: dict[str, Any], **_: Any) -> None:
        ranges.append((params["Key"].rsplit("/", 1)[1], params.get("Range", "")))

    s3_archive.client.meta.events.register("provide-client-params.s3.GetObject", record)
    assert s3_archive.read(KEY, 2, 7) == b"2345678"
    assert ranges == [
        ("0000000000000000.chunk", "bytes=2-3"),
        ("0000000000000004.chunk", "bytes=0-3"),
        ("0000000000000008.chunk", "bytes=0-0"),
    ]


def s3_requests(archive: S3Archive) -> Counter[str]:
    """Every HTTP request the archive's client sends from now on, by kind: ``LIST``
    (ListObjectsV2), ``GET`` of an object (``GET complete.json`` for the completion
    record), ``PUT``, ... (botocore's before-send event: retries count too)."""
    seen: Counter[str] = Counter()

    def record(request: Any, **_: Any) -> None:
        url = urlsplit(request.url)
        if request.method == "GET" and parse_qs(url.query).get("list-type") == ["2"]:
            seen["LIST"] += 1
        elif request.method == "GET" and url.path.endswith("/complete.json"):
            seen["GET complete.json"] += 1
        else:
            seen[request.method] += 1

    archive.client.meta.events.register("before-send.s3", record)
    return seen


def test_s3_a_complete_log_is_listed_once(s3_archive: S3Archive) -> None:
    """Once complete, the log's listing cannot change: sizes, ranges and streams of it
    never list it again (they did once per read: thousands for a 200 MB log)."""
    data = bytes(range(256)) * 160  # 40 KiB in 10 chunks of 4 KiB
    write_in_chunks(s3_archive, KEY, data, 4096)
    s3_archive.complete(KEY, Completion(size=len(data)))
    requests = s3_requests(s3_archive)
    assert s3_archive.size(KEY) == len(data)
    got = b""
    for offset in range(0, len(data), 1000):  # 41 ranges, some across two chunks
        got += s3_archive.read(KEY, offset, 1000)
    assert got == data
    assert s3_archive.size(KEY) == len(data)
    assert b"".join(s3_archive.iter_bytes(KEY, offset=5000)) == data[5000:]
    assert s3_archive.read(KEY, len(data), 10) == b""
    assert requests["LIST"] == 1, requests
    assert requests["GET complete.json"] == 1, requests  # its size checked, once
    # one GET per chunk a range touches, one per chunk the stream needs
    touched = sum(
        len({o // 4096, (min(o + 1000, len(data)) - 1) // 4096}) for o in range(0, len(data), 1000)
    )
    assert requests["GET"] == touched + 9, requests
    assert set(requests) == {"LIST", "GET", "GET complete.json"}


def test_s3_a_running_log_is_listed_only_past_what_is_known(s3_archive: S3Archive) -> None:
    """A log still being written: a range inside the chunks already listed is read
    without listing; a size, a stream or a range past the known end lists afresh."""
    s3_archive.write_chunk(KEY, 0, b"0123456789")
    s3_archive.write_chunk(KEY, 10, b"abcdefghij")
    requests = s3_requests(s3_archive)
    assert s3_archive.size(KEY) == 20
    assert s3_archive.read(KEY, 5, 10) == b"56789abcde"
    assert s3_archive.read(KEY, 0, 20) == b"0123456789abcdefghij"
    assert requests["LIST"] == 1, requests
    s3_archive.write_chunk(KEY, 20, b"KLMNO")
    assert s3_archive.read(KEY, 15, 10) == b"fghijKLMNO"  # past the known end: listed
    assert requests["LIST"] == 2, requests
    assert s3_archive.read(KEY, 22, 3) == b"MNO"  # known now
    assert requests["LIST"] == 2, requests
    s3_archive.write_chunk(KEY, 25, b"pq")
    assert s3_archive.size(KEY) == 27  # a size is always fresh while incomplete
    assert b"".join(s3_archive.iter_bytes(KEY, offset=24)) == b"Opq"
    assert requests["LIST"] == 4, requests
    s3_archive.complete(KEY, Completion(size=27))
    assert s3_archive.size(KEY) == 27  # lists once more, and sees the completion
    assert s3_archive.read(KEY, 20, 100) == b"KLMNOpq"
    assert b"".join(s3_archive.iter_bytes(KEY)) == b"0123456789abcdefghijKLMNOpq"
    assert s3_archive.size(KEY) == 27
    assert requests["LIST"] == 5, requests


def test_s3_a_completion_beyond_the_chunks_listed_is_not_final(s3_archive: S3Archive) -> None:
    """complete.json listed but the chunks do not reach its size (the listing raced the
    last writes): the listing is not kept as final."""
    s3_archive.write_chunk(KEY, 0, b"01234")
    s3_archive.complete(KEY, Completion(size=10))
    assert s3_archive.size(KEY) == 5
    s3_archive.write_chunk(KEY, 5, b"56789")
    assert s3_archive.size(KEY) == 10
    assert s3_archive.read(KEY, 0, 100) == b"0123456789"
    requests = s3_requests(s3_archive)
    assert s3_archive.size(KEY) == 10 and s3_archive.read(KEY, 3, 3) == b"345"
    assert requests["LIST"] == 0, requests  # final now


def test_s3_iter_bytes_lists_once_and_gets_each_chunk_once(s3_archive: S3Archive) -> None:
    data = b"".join(f"line {n:04d}\n".encode() for n in range(1000))  # 10 000 bytes
    write_in_chunks(s3_archive, KEY, data, 2000)
    ranges: list[tuple[str, str]] = []
    s3_archive.client.meta.events.register(
        "provide-client-params.s3.GetObject",
        lambda params, **_: ranges.append((params["Key"].rsplit("/", 1)[1], params["Range"])),
    )
    requests = s3_requests(s3_archive)
    pieces = list(s3_archive.iter_bytes(KEY, offset=3500, chunk_size=300))
    assert b"".join(pieces) == data[3500:]
    assert max(len(piece) for piece in pieces) == 300
    assert requests == Counter({"LIST": 1, "GET": 4}), requests
    assert ranges == [
        ("0000000000002000.chunk", "bytes=1500-1999"),  # the first chunk from the offset on
        ("0000000000004000.chunk", "bytes=0-1999"),
        ("0000000000006000.chunk", "bytes=0-1999"),
        ("0000000000008000.chunk", "bytes=0-1999"),
    ]


def test_s3_a_deleted_log_is_not_served_from_the_listing(
    s3_archive: S3Archive, bucket: str, s3_server: MotoServer
) -> None:
    """Retention deletes a log whose listing is kept: here or by another process."""
    for key in (KEY, OTHER):
        write_in_chunks(s3_archive, key, b"0123456789", 5)
        s3_archive.complete(key, Completion(size=10))
        assert s3_archive.size(key) == 10  # listed, final
    assert s3_archive.delete_older_than(dt.datetime.now(dt.UTC) + dt.timedelta(days=1)) == 2
    assert s3_archive.size(KEY) == 0 and s3_archive.read(KEY, 0, 10) == b""
    s3_archive.write_chunk(OTHER, 0, b"again")
    s3_archive.complete(OTHER, Completion(size=5))
    assert s3_archive.read(OTHER, 0, 10) == b"again"
    elsewhere = S3Archive.from_settings(s3_settings(bucket, s3_server.url).logging)
    assert elsewhere.delete_older_than(dt.datetime.now(dt.UTC) + dt.timedelta(days=1)) == 1
    assert s3_archive.read(OTHER, 0, 10) == b""  # its chunk is gone: the listing too
    assert s3_archive.size(OTHER) == 0


def test_s3_listings_kept_are_bounded(
    s3_archive: S3Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(s3_module, "LISTING_CACHE_SIZE", 2)
    keys = [log_key(TryKey("etl", "r", "t", n)) for n in (1, 2, 3)]
    for key in keys:
        s3_archive.write_chunk(key, 0, b"x")
        s3_archive.complete(key, Completion(size=1))
    requests = s3_requests(s3_archive)
    for key in keys:
        assert s3_archive.size(key) == 1
    assert requests["LIST"] == 3
    assert s3_archive.size(keys[2]) == s3_archive.size(keys[1]) == 1  # the newest two kept
    assert requests["LIST"] == 3
    assert s3_archive.size(keys[0]) == 1  # the oldest was dropped: listed again
    assert requests["LIST"] == 4
    assert len(s3_archive._listings) == 2


def test_s3_overlap_is_read_once(s3_archive: S3Archive) -> None:
    s3_archive.write_chunk(KEY, 0, b"abcdef")
    s3_archive.write_chunk(KEY, 3, b"defghi")
    ranges: list[str] = []
    s3_archive.client.meta.events.register(
        "provide-client-params.s3.GetObject", lambda params, **_: ranges.append(params["Range"])
    )
    assert s3_archive.read(KEY, 0, 9) == b"abcdefghi"
    assert ranges == ["bytes=0-5", "bytes=3-5"]  # the second chunk from the cursor on


@pytest.mark.parametrize(
    ("kms_key_id", "expected"),
    [
        (None, {"ServerSideEncryption": "AES256"}),
        (
            "alias/ketch-logs",
            {"SSEKMSKeyId": "alias/ketch-logs", "ServerSideEncryption": "aws:kms"},
        ),
    ],
    ids=["sse-s3", "sse-kms"],
)
def test_s3_server_side_encryption(
    bucket: str, s3_server: MotoServer, kms_key_id: str | None, expected: dict[str, str]
) -> None:
    settings = s3_settings(bucket, s3_server.url, encrypt_s3_logs=True, s3_kms_key_id=kms_key_id)
    archive = open_archive(settings)
    archive.write_chunk(KEY, 0, b"secret-ish\n")
    archive.complete(KEY, Completion(size=11))
    client = admin(s3_server.url)
    for name in object_names(s3_server, bucket):
        head = client.head_object(Bucket=bucket, Key=name)
        assert {k: head[k] for k in expected} == expected, name


def test_s3_unencrypted_by_default(
    s3_archive: S3Archive, s3_server: MotoServer, bucket: str
) -> None:
    s3_archive.write_chunk(KEY, 0, b"plain\n")
    head = admin(s3_server.url).head_object(Bucket=bucket, Key=s3_archive.chunk_name(KEY, 0))
    assert "ServerSideEncryption" not in head


def test_s3_missing_bucket(s3_server: MotoServer, aws_env: None) -> None:
    archive = open_archive(s3_settings("ketch-no-such-bucket", s3_server.url))
    calls = [
        archive.check,
        lambda: archive.write_chunk(KEY, 0, b"x"),
        lambda: archive.size(KEY),
        lambda: archive.completion(KEY),
        lambda: archive.delete_older_than(dt.datetime.now(dt.UTC)),
    ]
    for call in calls:
        with pytest.raises(ArchiveError) as caught:
            call()
        assert not isinstance(caught.value, ArchiveUnavailable)
        message = str(caught.value)
        assert message.startswith("s3://ketch-no-such-bucket/logs: NoSuchBucket: "), message
        assert "does not exist" in message and "\n" not in message


@pytest.mark.parametrize("failure", ["reset", "cut"])
def test_s3_outage_then_recovery(bucket: str, s3_server: MotoServer, failure: str) -> None:
    quick = Config(
        connect_timeout=0.5, read_timeout=0.5, retries={"mode": "standard", "total_max_attempts": 2}
    )
    with TcpProxy(s3_server.port) as proxy:
        settings = s3_settings(bucket, f"http://127.0.0.1:{proxy.port}")
        archive = S3Archive.from_settings(settings.logging, config=quick)
        archive.write_chunk(KEY, 0, b"before the outage\n")
        getattr(proxy, failure)()
        with pytest.raises(ArchiveUnavailable) as caught:
            archive.write_chunk(KEY, 18, b"during\n")
        assert str(caught.value).startswith(f"s3://{bucket}/logs: ")
        with pytest.raises(ArchiveUnavailable):
            archive.size(KEY)
        proxy.heal()
        archive.write_chunk(KEY, 18, b"during\n")  # the shipper sends it again
        archive.write_chunk(KEY, 25, b"after\n")
        assert archive.read(KEY, 0, 100) == b"before the outage\nduring\nafter\n"


def test_s3_a_stream_cut_mid_chunk_carries_on(bucket: str, s3_server: MotoServer) -> None:
    """A download's connection is dropped in the middle of a chunk's body (a slow client
    kept it waiting): the rest of that chunk is fetched again from where it broke."""
    chunk = 4 * 1024 * 1024  # well past what the sockets buffer
    data = b"".join(bytes([65 + n]) * chunk for n in range(2))
    quick = Config(connect_timeout=2, read_timeout=2, retries={"total_max_attempts": 1})
    with TcpProxy(s3_server.port) as proxy:
        settings = s3_settings(bucket, f"http://127.0.0.1:{proxy.port}")
        archive = S3Archive.from_settings(settings.logging, config=quick)
        write_in_chunks(archive, KEY, data, chunk)
        ranges: list[str] = []
        archive.client.meta.events.register(
            "provide-client-params.s3.GetObject",
            lambda params, **_: ranges.append(params["Range"]),
        )
        stream = archive.iter_bytes(KEY, offset=100)
        got = next(stream)
        proxy.reset()  # the open body's connection goes
        proxy.heal()
        got += b"".join(stream)
    assert got == data[100:]
    assert ranges[0] == f"bytes=100-{chunk - 1}"
    assert len(ranges) == 3, ranges  # the first chunk twice (from where it broke), the second
    resumed_from = int(ranges[1].removeprefix("bytes=").split("-")[0])
    assert 100 < resumed_from < chunk and ranges[2] == f"bytes=0-{chunk - 1}"


def test_s3_endpoint_from_the_environment(
    bucket: str, s3_server: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without s3_endpoint_url no endpoint is passed: boto3 honours AWS_ENDPOINT_URL_S3."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server.url)
    archive = open_archive(s3_settings(bucket, None))
    assert isinstance(archive, S3Archive)
    archive.write_chunk(KEY, 0, b"via the environment\n")
    assert archive.client.meta.endpoint_url == s3_server.url
    assert f"logs/{KEY}/0000000000000000.chunk" in object_names(s3_server, bucket)


def test_s3_connection_credentials(bucket: str, s3_server: MotoServer) -> None:
    """remote_log_conn_id: the connection's keys, token, region and endpoint are used."""
    looked_up: list[str] = []
    extra = {
        "endpoint_url": s3_server.url,
        "region_name": "eu-central-1",
        "aws_session_token": "tok",
    }

    def lookup(conn_id: str) -> dict[str, Any]:
        looked_up.append(conn_id)
        return {"login": "AKIACONNECTION", "password": "conn-secret", "extra": json.dumps(extra)}

    settings = Settings(
        logging=LoggingSettings(
            remote_logging=True,
            remote_base_log_folder=f"s3://{bucket}/logs",
            remote_log_conn_id="aws_logs",
        )
    )
    archive = open_archive(settings, lookup)
    assert looked_up == []  # looked up when the client is first needed
    headers: list[dict[str, str]] = []
    assert isinstance(archive, S3Archive)
    archive.client.meta.events.register(
        "before-send.s3", lambda request, **_: headers.append(dict(request.headers))
    )
    archive.write_chunk(KEY, 0, b"with the connection's keys\n")
    assert looked_up == ["aws_logs"]
    auth = str(headers[-1]["Authorization"])
    assert "Credential=AKIACONNECTION/" in auth and "/eu-central-1/s3/" in auth
    assert headers[-1]["X-Amz-Security-Token"] in ("tok", b"tok")
    assert archive.read(KEY, 0, 100) == b"with the connection's keys\n"


def test_s3_connection_problems(bucket: str, s3_server: MotoServer) -> None:
    settings = s3_settings(bucket, s3_server.url, remote_log_conn_id="aws_logs")
    with pytest.raises(ArchiveError, match=r"aws_logs.*needs a connection lookup"):
        open_archive(settings)

    def unknown(conn_id: str) -> dict[str, Any]:
        raise KeyError(f"no connection {conn_id}")

    with pytest.raises(ArchiveError, match=f"s3://{bucket}/logs: connection 'aws_logs'"):
        open_archive(settings, unknown).size(KEY)
    bad_extra = open_archive(settings, lambda _: {"login": "a", "password": "b", "extra": "{"})
    with pytest.raises(ArchiveError, match="connection 'aws_logs'"):
        bad_extra.size(KEY)


@pytest.mark.parametrize(
    ("code", "status", "transient"),
    [
        ("SlowDown", 503, True),
        ("InternalError", 500, True),
        ("ServiceUnavailable", 503, True),
        ("Throttling", 400, True),
        ("KMS.ThrottlingException", 400, True),
        ("AccessDenied", 403, False),
        ("InvalidAccessKeyId", 403, False),
        ("SignatureDoesNotMatch", 403, False),
        ("KMS.NotFoundException", 400, False),
        ("KMS.KMSInvalidStateException", 400, False),
        ("NoSuchBucket", 404, False),
    ],
)
def test_s3_error_mapping(code: str, status: int, transient: bool, aws_env: None) -> None:
    archive = S3Archive(
        "ketch-logs", "team/a", client_factory=lambda: s3_client("http://127.0.0.1:9")
    )
    with Stubber(archive.client) as stub:
        stub.add_client_error(
            "put_object",
            service_error_code=code,
            service_message="Says S3",
            http_status_code=status,
        )
        with pytest.raises(ArchiveError) as caught:
            archive.write_chunk(KEY, 0, b"x")
    assert isinstance(caught.value, ArchiveUnavailable) is transient
    assert str(caught.value) == f"s3://ketch-logs/team/a: {code}: Says S3"


def test_s3_delete_batches_and_foreign_objects(
    s3_archive: S3Archive, s3_server: MotoServer, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(s3_module, "DELETE_BATCH", 3)
    for key in (KEY, OTHER):
        write_in_chunks(s3_archive, key, b"0123456789", 3)  # 4 chunks
    client = admin(s3_server.url)
    client.put_object(Bucket=bucket, Key="logs/README.txt", Body=b"not a log")
    client.put_object(Bucket=bucket, Key=f"logs/{KEY}/notes.txt", Body=b"not a chunk")
    deletes: list[int] = []
    s3_archive.client.meta.events.register(
        "provide-client-params.s3.DeleteObjects",
        lambda params, **_: deletes.append(len(params["Delete"]["Objects"])),
    )
    assert s3_archive.delete_older_than(dt.datetime.now(dt.UTC) + dt.timedelta(days=1)) == 2
    assert deletes == [3, 3, 2]
    assert object_names(s3_server, bucket) == ["logs/README.txt", f"logs/{KEY}/notes.txt"]


def test_s3_download_memory_stays_flat(aws_env: None) -> None:
    """A 24 MiB log in 3 chunks streams in 64 KiB pieces: this process never holds a
    chunk, let alone the log (moto runs in its own process so only ours is measured)."""
    chunk = 8 * 1024 * 1024
    server = MotoProcess()
    server.start()
    try:
        create_bucket(admin(server.url), "ketch-big-logs")
        archive = open_archive(s3_settings("ketch-big-logs", server.url))
        for n in range(3):
            archive.write_chunk(KEY, n * chunk, bytes([65 + n]) * chunk)
        tracemalloc.start()
        try:
            sizes = [len(piece) for piece in archive.iter_bytes(KEY)]
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    finally:
        server.stop()
    assert sum(sizes) == 3 * chunk and max(sizes) == 65536
    assert peak < chunk / 4, f"peak {peak / 2**20:.1f} MiB"


def test_open_archive_parses_the_url(aws_env: None) -> None:
    settings = s3_settings("ketch-logs", None)
    settings.logging.remote_base_log_folder = "s3://ketch-logs/a/b/"
    archive = open_archive(settings)
    assert isinstance(archive, S3Archive)
    assert (archive.bucket, archive.prefix) == ("ketch-logs", "a/b")
    config = archive.client.meta.config
    assert (config.connect_timeout, config.read_timeout) == (5, 20)
    assert config.retries == {"mode": "standard", "total_max_attempts": 3}


# -- the local folder only ---------------------------------------------------------------


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path / "logs"


@pytest.fixture
def local(folder: Path) -> LocalFolderArchive:
    return LocalFolderArchive(folder)


def test_local_log_is_the_live_file(local: LocalFolderArchive, folder: Path) -> None:
    try_key = TryKey("etl", "run 1", "load", 2)
    fd = open_log_file(log_path(folder, try_key))
    os.write(fd, b"written live\n")
    os.close(fd)
    assert local.read(log_key(try_key), 0, 100) == b"written live\n"


def test_local_modes(local: LocalFolderArchive, folder: Path) -> None:
    local.write_chunk(KEY, 0, b"secret-ish\n")
    local.complete(KEY, Completion(size=11))
    path = folder / KEY
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(Path(f"{path}.complete").stat().st_mode) == 0o600
    directory = path.parent
    while directory != folder.parent:
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
        directory = directory.parent
    assert sorted(p.name for p in path.parent.iterdir()) == [
        "attempt=1.log",
        "attempt=1.log.complete",
    ]


def test_local_symlink_escaping_the_folder(
    local: LocalFolderArchive, folder: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"not yours\n")
    path = folder / KEY
    path.parent.mkdir(parents=True)
    path.symlink_to(outside)
    for call in (
        lambda: local.read(KEY, 0, 100),
        lambda: list(local.iter_bytes(KEY)),
        lambda: local.size(KEY),
        lambda: local.write_chunk(KEY, 0, b"overwrite"),
    ):
        with pytest.raises(ArchiveError, match="symlink pointing outside"):
            call()
    assert outside.read_bytes() == b"not yours\n"
    path.unlink()
    inside = folder / "elsewhere.log"
    inside.write_bytes(b"inside\n")
    path.symlink_to(inside)  # a link within the folder is fine
    assert local.read(KEY, 0, 100) == b"inside\n"


def test_local_folder_link_escaping_the_folder(
    local: LocalFolderArchive, folder: Path, tmp_path: Path
) -> None:
    (tmp_path / "elsewhere").mkdir()
    folder.mkdir()
    (folder / "dag_id=etl").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ArchiveError, match="outside the log folder"):
        local.write_chunk(KEY, 0, b"x")
    for key in ("../escape.log", "/etc/passwd", ""):
        with pytest.raises(ArchiveError, match="outside the log folder"):
            local.read(key, 0, 1)
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_local_delete_by_mtime(local: LocalFolderArchive, folder: Path) -> None:
    local.write_chunk(KEY, 0, b"old\n")
    local.complete(KEY, Completion(size=4))
    local.write_chunk(OTHER, 0, b"new\n")
    week_ago = (dt.datetime.now(dt.UTC) - dt.timedelta(days=7)).timestamp()
    os.utime(folder / KEY, (week_ago, week_ago))
    assert local.delete_older_than(dt.datetime.now(dt.UTC) - dt.timedelta(days=1)) == 1
    assert local.size(KEY) == 0 and local.completion(KEY) is None
    assert local.read(OTHER, 0, 10) == b"new\n"
    other_run = folder / "dag_id=etl" / "run_id=manual__2024-05-01T00:00:00+00:00"
    assert other_run.is_dir()
    assert local.delete_older_than(dt.datetime.now() + dt.timedelta(days=1)) == 1  # naive: UTC
    assert folder.is_dir() and list(folder.iterdir()) == []  # empty folders go, the root stays


def test_local_check(tmp_path: Path) -> None:
    LocalFolderArchive(tmp_path / "new" / "logs").check()
    assert stat.S_IMODE((tmp_path / "new" / "logs").stat().st_mode) == 0o700
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ArchiveError) as caught:
        LocalFolderArchive(tmp_path / "a-file").check()
    assert str(caught.value) == f"{tmp_path / 'a-file'}: [Errno 20] Not a directory"


def test_local_bad_completion_record(local: LocalFolderArchive, folder: Path) -> None:
    local.write_chunk(KEY, 0, b"x")
    Path(f"{folder / KEY}.complete").write_text("{not json")
    with pytest.raises(ArchiveError, match="not a completion record"):
        local.completion(KEY)
