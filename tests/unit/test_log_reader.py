"""Reading a try's log: the fixed fallback order, ranges, tails, following, and REST.

The sources are real: live files in the log folder, S3 on moto in server mode (behind
a :class:`TcpProxy` for an outage), the local folder archive. Only the pod's log is a
stand-in (:class:`PodLogStandIn`, what the reader uses of ``PodLog``: the Kubernetes
side has its own tests). Every source of one try holds the same byte stream at
different stages, so which source answered shows in how much of it comes back.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.config import Config
from fastapi.testclient import TestClient
from sqlalchemy import Engine, update
from sqlalchemy.orm import Session

from ketch.config import LoggingSettings, Settings, get_settings
from ketch.db.models import TaskInstance
from ketch.executors.base import TryKey
from ketch.logs.archive import Completion, LocalFolderArchive, LogArchive, S3Archive, log_key
from ketch.logs.reader import READ_CHUNK, LogReader, LogUnavailable, Waiting
from ketch.worker.task_log import log_path
from tests.support.moto_server import REGION, MotoServer
from tests.support.tcp_proxy import TcpProxy
from tests.unit import test_log_archive as archive_tests
from tests.unit import test_rest_api as rest_tests
from tests.unit.test_log_pump import PumpConfig, launch
from tests.unit.test_log_shipper import COMMANDED, Commanded

# Fixtures of the archive suite (moto, dummy credentials, a bucket per test) and of the
# REST suite (a client of the app over a database with DAG etl and its run r1).
s3_server = archive_tests.s3_server
aws_env = archive_tests.aws_env
bucket = archive_tests.bucket
client = rest_tests.client

KEY = TryKey("etl", "manual__2026-03-01T12:00:00+00:00", "load", 1)
LOG = b"".join(f"line {n:03d} of the log\n".encode() for n in range(100))  # 1900 bytes


class PodLogStandIn:
    """The pod's log so far (``read``) and its follow from a byte offset."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self) -> bytes:
        return self.data

    def follow(self, offset: int) -> Iterator[bytes]:
        if self.data[offset:]:
            yield self.data[offset:]


def s3_reader_settings(tmp_path: Path, bucket: str, endpoint: str) -> Settings:
    return Settings(
        logging=LoggingSettings(
            base_log_folder=tmp_path / "logs",
            remote_logging=True,
            remote_base_log_folder=f"s3://{bucket}/logs",
            s3_endpoint_url=endpoint,
            s3_region=REGION,
        )
    )


@pytest.fixture
def settings(tmp_path: Path, bucket: str, s3_server: MotoServer) -> Settings:
    return s3_reader_settings(tmp_path, bucket, s3_server.url)


@pytest.fixture
def archive(settings: Settings) -> S3Archive:
    return S3Archive.from_settings(settings.logging)


def write_live(settings: Settings, data: bytes, key: TryKey = KEY) -> Path:
    path = log_path(settings.log_folder, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def archive_part(archive: LogArchive, data: bytes, *, complete: bool = False) -> None:
    archive.write_chunk(log_key(KEY), 0, data)
    if complete:
        archive.complete(log_key(KEY), Completion(size=len(data)))


def reader_with_pod(settings: Settings, archive: LogArchive, pod: bytes | None) -> LogReader:
    return LogReader(settings, archive, lambda key: None if pod is None else PodLogStandIn(pod))


def answer(reader: LogReader, live: bool, **kwargs: Any) -> tuple[str, bytes]:
    piece = reader.read(KEY, live, 0, 1 << 20, **kwargs)
    return piece.source, piece.data


# -- the fixed order ---------------------------------------------------------------------


def test_running_order_complete_archive_then_live_file_then_pod_then_chunks(
    settings: Settings, archive: S3Archive
) -> None:
    archive_part(archive, LOG[:100])  # the newest chunks: behind the other sources
    assert answer(reader_with_pod(settings, archive, None), True) == ("archive", LOG[:100])
    with_pod = reader_with_pod(settings, archive, LOG[:500])
    assert answer(with_pod, True) == ("pod", LOG[:500])
    write_live(settings, LOG[:1000])
    assert answer(with_pod, True) == ("live file", LOG[:1000])
    archive_part(archive, LOG, complete=True)  # the try already flushed: nothing is newer
    assert answer(with_pod, True) == ("archive", LOG)
    assert with_pod.read(KEY, True, 0, 10).complete


def test_finished_order_archive_then_live_file_then_pod(
    settings: Settings, archive: S3Archive
) -> None:
    with pytest.raises(LogUnavailable) as nothing:
        answer(reader_with_pod(settings, archive, None), False)
    assert nothing.value.status == 404
    assert str(nothing.value) == (
        f"no log for try 1 of task 'load' in run {KEY.run_id!r}: nothing in the archive"
        f" ({archive.describe()}), no live file, no pod"
    )
    with_pod = reader_with_pod(settings, archive, LOG[:500])
    assert answer(with_pod, False) == ("pod", LOG[:500])  # a pod not deleted yet
    write_live(settings, LOG[:1000])
    assert answer(with_pod, False) == ("live file", LOG[:1000])
    archive_part(archive, LOG[:1500])  # not yet complete: still the best source
    piece = with_pod.read(KEY, False, 0, 1 << 20)
    assert (piece.source, piece.data, piece.complete) == ("archive", LOG[:1500], False)


def test_no_file_yet_with_the_local_archive(tmp_path: Path) -> None:
    """The local folder archive and no file yet: a reader of a queued try gets the
    (empty) archive, where its log will begin; an ended try without any log is a 404
    saying where it looked."""
    settings = Settings(logging=LoggingSettings(base_log_folder=tmp_path / "logs"))
    reader = LogReader(settings, LocalFolderArchive(settings.log_folder))
    assert answer(reader, True, state="queued") == ("archive", b"")
    with pytest.raises(LogUnavailable, match=r"nothing in the archive .*no live file, no pod"):
        answer(reader, False)


@pytest.fixture
def proxy(s3_server: MotoServer) -> Iterator[TcpProxy]:
    with TcpProxy(s3_server.port) as made:
        yield made


QUICK = Config(connect_timeout=0.5, read_timeout=1, retries={"total_max_attempts": 1})


def proxied(tmp_path: Path, bucket: str, proxy: TcpProxy) -> tuple[Settings, S3Archive]:
    settings = s3_reader_settings(tmp_path, bucket, f"http://127.0.0.1:{proxy.port}")
    return settings, S3Archive.from_settings(settings.logging, config=QUICK)


def test_archive_down_is_503_unless_another_source_has_the_log(
    tmp_path: Path, bucket: str, proxy: TcpProxy
) -> None:
    settings, archive = proxied(tmp_path, bucket, proxy)
    archive_part(archive, LOG, complete=True)
    proxy.reset()
    reader = LogReader(settings, archive)
    for live in (True, False):
        with pytest.raises(LogUnavailable) as down:
            reader.read(KEY, live, 0, 100)
        assert down.value.status == 503
        assert str(down.value).startswith(f"log archive unavailable: s3://{bucket}/logs: ")
    write_live(settings, LOG[:700])
    assert answer(reader, False) == ("live file", LOG[:700])
    proxy.heal()
    assert answer(reader, False) == ("archive", LOG)


# -- ranges and tails --------------------------------------------------------------------


@pytest.mark.parametrize("where", ["live file", "archive"])
def test_ranges_and_tails(settings: Settings, archive: S3Archive, where: str) -> None:
    big = b"".join(f"row {n}\n".encode() for n in range(30_000))  # over 3 read blocks
    assert len(big) > 3 * READ_CHUNK
    if where == "live file":
        write_live(settings, big)
    else:
        archive_part(archive, big[:100_000])
        archive.write_chunk(log_key(KEY), 100_000, big[100_000:])
    reader = LogReader(settings, archive)
    piece = reader.read(KEY, False, 10, 25)
    assert (piece.source, piece.data, piece.offset, piece.next_offset) == (
        where,
        big[10:35],
        10,
        35,
    )
    assert reader.read(KEY, False, len(big) - 3, 100).data == big[-3:]
    assert reader.read(KEY, False, len(big) + 5, 100).data == b""
    source = reader.best(KEY, False)
    assert b"".join(reader.pieces(source, 1000)) == big[1000:]
    lines = big.splitlines(keepends=True)
    for count in (1, 2, 10, 12_345, 29_999):
        assert big[reader.tail_offset(source, count) :] == b"".join(lines[-count:]), count
    assert reader.tail_offset(source, 30_000) == 0
    assert reader.tail_offset(source, 10**6) == 0
    last_two = b"".join(lines[-2:])
    piece = reader.read(KEY, False, 0, 5, tail_lines=2)  # from the tail's start, 5 bytes
    assert (piece.data, piece.offset) == (last_two[:5], len(big) - len(last_two))
    piece = reader.read(KEY, False, len(big) - 3, 100, tail_lines=2)  # the offset is further
    assert (piece.data, piece.offset) == (big[-3:], len(big) - 3)


def test_a_finished_s3_log_is_read_and_followed_with_one_listing(
    settings: Settings, archive: S3Archive
) -> None:
    """A complete log in S3 (5 chunks, 8 reads of 64 KiB): a full read, a follow and a
    tail list it once between them and fetch each chunk once per stream (they listed
    it once, sometimes twice, per 64 KiB)."""
    data = b"".join(f"row {n:06d} of a big log\n".encode() for n in range(20_000))[:500_000]
    for offset in range(0, len(data), 100_000):
        archive.write_chunk(log_key(KEY), offset, data[offset : offset + 100_000])
    archive.complete(log_key(KEY), Completion(size=len(data)))
    requests = archive_tests.s3_requests(archive)
    reader = LogReader(settings, archive)
    source = reader.best(KEY, False)
    assert source.name == "archive"
    assert b"".join(reader.pieces(source)) == data
    assert drain(reader.follow(KEY, 0, State("success"))) == (data, "success")
    start = reader.tail_offset(source, 10)
    assert data[start:] == b"".join(data.splitlines(keepends=True)[-10:])
    assert requests["LIST"] == 1, requests
    assert requests["GET"] == 5 + 5 + 1, requests  # each chunk per stream, the tail's block
    assert requests["GET complete.json"] == 2, requests  # the listing's, the follow's end


def test_tail_of_a_log_without_a_final_newline(tmp_path: Path) -> None:
    settings = Settings(logging=LoggingSettings(base_log_folder=tmp_path / "logs"))
    write_live(settings, b"a\nb\nprogress 50%")
    reader = LogReader(settings, LocalFolderArchive(settings.log_folder))
    source = reader.best(KEY, True)
    assert source.name == "live file"
    assert reader.tail_offset(source, 1) == 4  # the unfinished line is the last one
    assert reader.tail_offset(source, 2) == 2


# -- following -------------------------------------------------------------------------------


class State:
    """The try's state as the route's check gives it: None while it may still write."""

    def __init__(self, value: str) -> None:
        self.value = value

    def __call__(self) -> str | None:
        return None if self.value in ("queued", "running") else self.value


def drain(steps: Iterator[bytes | str | Waiting]) -> tuple[bytes, str]:
    data = b""
    for step in steps:
        if isinstance(step, str):
            return data, step
        assert isinstance(step, bytes), step  # no pod here: nothing waits for one
        data += step
    raise AssertionError("the follow ended without the try's state")


def test_follow_yields_bytes_then_the_final_state(tmp_path: Path) -> None:
    settings = Settings(logging=LoggingSettings(base_log_folder=tmp_path / "logs"))
    path = write_live(settings, b"first\n")
    state = State("running")
    steps = LogReader(settings, LocalFolderArchive(settings.log_folder)).follow(KEY, 2, state)
    assert next(steps) == b"rst\n"  # from the offset asked for
    assert next(steps) == b""  # waiting
    with path.open("ab") as fh:
        fh.write(b"second\n")
    data = b""
    while len(data) < 7:
        step = next(steps)
        assert isinstance(step, bytes)
        data += step
    assert data == b"second\n"
    Path(f"{path}.complete").write_text('{"size": 13}')
    state.value = "failed"
    assert drain(steps) == (b"", "failed")


def test_follow_switches_from_the_live_file_to_s3_without_gap_or_repeat(
    settings: Settings, archive: S3Archive
) -> None:
    """Running, the follower reads the live file; then the try ends, its log is whole in
    S3 and the live file is deleted: the follower carries on at the same offset."""
    path = write_live(settings, LOG[:777])
    state = State("running")
    steps = LogReader(settings, archive).follow(KEY, 0, state)
    seen = b""
    while len(seen) < 777:
        step = next(steps)
        assert isinstance(step, bytes)
        seen += step
    assert seen == LOG[:777]
    archive.write_chunk(log_key(KEY), 0, LOG[:500])
    archive.write_chunk(log_key(KEY), 500, LOG[500:])
    archive.complete(log_key(KEY), Completion(size=len(LOG)))
    state.value = "success"
    path.unlink()
    rest, final = drain(steps)
    assert seen + rest == LOG
    assert final == "success"


def test_a_follower_of_a_queued_try_gets_everything_from_the_first_line(
    tmp_path: Path,
) -> None:
    """Started before the try: it waits, then follows the real try's pump from the first
    byte to its end, and ends with the state."""
    settings = Settings(logging=LoggingSettings(base_log_folder=tmp_path / "logs"))
    state = State("queued")
    steps = LogReader(settings, LocalFolderArchive(settings.log_folder)).follow(KEY, 0, state)
    got: list[bytes | str | Waiting] = []
    waiting = threading.Event()

    def follow() -> None:
        for step in steps:
            got.append(step)
            if len(got) >= 3:
                waiting.set()

    follower = threading.Thread(target=follow)
    follower.start()
    assert waiting.wait(30) and b"".join(s for s in got if isinstance(s, bytes)) == b""
    state.value = "running"
    path = log_path(settings.log_folder, KEY)
    running = Commanded(launch(tmp_path, COMMANDED, PumpConfig(), log=path, stdin=-1))
    running.send("print the first line")
    running.send("lines 300")
    assert running.finish()
    state.value = "success"
    follower.join(30)
    assert not follower.is_alive()
    data = b"".join(s for s in got if isinstance(s, bytes))
    assert data == path.read_bytes() and data.startswith(b"the first line\n")
    assert got[-1] == "success"


def test_a_follower_waits_for_an_archive_that_is_down(
    tmp_path: Path, bucket: str, proxy: TcpProxy
) -> None:
    """A finished try whose log is only in S3, unreachable when the follower looks: it
    waits for S3 rather than end without the log, then reads it all."""
    settings, archive = proxied(tmp_path, bucket, proxy)
    archive_part(archive, LOG, complete=True)
    proxy.reset()
    steps = LogReader(settings, archive).follow(KEY, 100, State("success"))
    for _ in range(3):
        assert next(steps) == b""  # not the end: the archive may come back
    proxy.heal()
    assert drain(steps) == (LOG[100:], "success")


# -- REST --------------------------------------------------------------------------------

API = "/api/v1/dags/etl/dagRuns/r1/taskInstances"


def rest_log(task_id: str, data: bytes, *, complete: bool = False) -> Path:
    path = log_path(get_settings().log_folder, TryKey("etl", "r1", task_id, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if complete:
        Path(f"{path}.complete").write_text(f'{{"size": {len(data)}}}')
    return path


def test_rest_range_headers(client: TestClient) -> None:
    rest_log("extract", LOG, complete=True)
    response = client.get(f"{API}/extract/logs/1", params={"offset": 20, "limit": 38})
    assert response.status_code == 200
    assert response.content == LOG[20:58]
    assert response.headers["X-Log-Source"] == "archive"
    assert response.headers["X-Log-Complete"] == "true"
    assert response.headers["X-Log-Offset"] == "20"
    assert response.headers["X-Log-Next-Offset"] == "58"
    end = client.get(f"{API}/extract/logs/1", params={"offset": len(LOG), "limit": 10})
    assert end.content == b"" and end.headers["X-Log-Next-Offset"] == str(len(LOG))


def test_rest_running_try_reads_its_live_file(
    client: TestClient,
    sqlite_engine: Engine,
) -> None:
    with Session(sqlite_engine) as session:
        session.execute(
            update(TaskInstance).where(TaskInstance.task_id == "transform").values(state="running")
        )
        session.commit()
    rest_log("transform", b"so far\n")
    response = client.get(f"{API}/transform/logs/1", params={"limit": 100})
    assert response.content == b"so far\n"
    assert response.headers["X-Log-Source"] == "live file"
    assert response.headers["X-Log-Complete"] == "false"


def test_rest_tail_lines_and_download(client: TestClient) -> None:
    rest_log("extract", LOG)
    tail = client.get(f"{API}/extract/logs/1", params={"tail_lines": 3})
    assert tail.content == b"".join(LOG.splitlines(keepends=True)[-3:])
    assert tail.headers["X-Log-Complete"] == "false"
    download = client.get(f"{API}/extract/logs/1", params={"download": "true"})
    assert download.content == LOG
    assert download.headers["Content-Disposition"] == 'attachment; filename="etl-r1-extract-1.log"'


def test_rest_tail_lines_with_a_limit(client: TestClient) -> None:
    """tail_lines picks where the answer starts, limit bounds the bytes from there, and
    X-Log-Next-Offset goes on from it; an offset further on than the tail wins."""
    rest_log("extract", LOG, complete=True)
    last = b"".join(LOG.splitlines(keepends=True)[-3:])
    start = len(LOG) - len(last)
    url = f"{API}/extract/logs/1"
    first = client.get(url, params={"tail_lines": 3, "limit": 10})
    assert first.status_code == 200
    assert first.content == last[:10]
    assert first.headers["X-Log-Offset"] == str(start)
    assert first.headers["X-Log-Next-Offset"] == str(start + 10)
    rest = client.get(url, params={"offset": start + 10, "limit": 1000})
    assert first.content + rest.content == last
    further = client.get(url, params={"tail_lines": 3, "limit": 4, "offset": len(LOG) - 5})
    assert further.content == LOG[-5:-1]
    assert further.headers["X-Log-Offset"] == str(len(LOG) - 5)
    everything = client.get(url, params={"tail_lines": 1000, "limit": 100})
    assert everything.content == LOG[:100] and everything.headers["X-Log-Offset"] == "0"


def test_rest_follow_from_an_offset(client: TestClient) -> None:
    rest_log("extract", b"line one\nline two\n", complete=True)
    url = f"{API}/extract/logs/1"
    with client.stream("GET", url, params={"follow": "true", "offset": 9}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        body = "".join(response.iter_text())
    assert body == "event: log\ndata: line two\ndata: \n\nevent: end\ndata: success\n\n"


def test_a_pod_source_reads_the_pod_log_once_per_request_not_per_call() -> None:
    """The API gives a pod's log whole: a request's size-then-range (a tail) reuses one
    read; a later request (after the snapshot's age) reads again and sees new bytes."""
    from ketch.logs.reader import PodSource

    class CountingPodLog:
        def __init__(self) -> None:
            self.reads = 0
            self.data = b"one\ntwo\nthree\n"

        def read(self) -> bytes:
            self.reads += 1
            return self.data

    pod_log = CountingPodLog()
    source = PodSource(pod_log)
    size = source.size()
    assert source.read(size - 6, 6) == b"three\n"
    assert b"".join(source.stream(4)) == b"two\nthree\n"
    assert pod_log.reads == 1
    pod_log.data += b"four\n"
    source._snapshot = (source._snapshot[0] - PodSource.SNAPSHOT_SECONDS - 1, b"")  # type: ignore[index]
    assert source.read(14, 100) == b"four\n"
    assert pod_log.reads == 2


def test_sse_sends_why_a_pod_waits_as_its_own_event_not_as_log() -> None:
    from ketch.api.rest.logs import sse_events

    steps: list[bytes | str | Waiting] = [
        Waiting("pod Pending for 3s; PodScheduled: Unschedulable: 0/1 nodes"),
        b"line 1\n",
        "success",
    ]
    sent = b"".join(sse_events(iter(steps))).decode()
    assert sent.index("event: waiting") < sent.index("event: log") < sent.index("event: end")
    assert "data: pod Pending for 3s; PodScheduled: Unschedulable: 0/1 nodes" in sent
    assert "data: line 1" in sent
