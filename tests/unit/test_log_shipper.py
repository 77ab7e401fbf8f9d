"""Shipping a try's log to S3 from its pump, as a pod does, with moto over real HTTP.

Each test runs a real try (a process with its log pump, see ``test_log_pump``) whose
pump ships to a real :class:`S3Archive` on moto in server mode, reached through a
:class:`TcpProxy` the test can reset (an outage) or cut (a partition). The try obeys
commands on its stdin and acknowledges each once its pump has processed the output,
so a test knows what the live file holds before it looks at S3. Intervals are short or
long on purpose: what must happen is waited for, never timed.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ketch.executors.base import TryKey
from ketch.logs.archive import S3Archive, log_key
from ketch.logs.pump.config import PumpConfig
from ketch.logs.shipper import ShipperConfig
from tests.support.moto_server import REGION, MotoServer
from tests.support.tcp_proxy import TcpProxy
from tests.unit import test_log_archive as archive_tests
from tests.unit.test_log_archive import admin, s3_settings
from tests.unit.test_log_pump import Try, completion_of, launch, wait_for

# The archive suite's fixtures: moto in server mode, dummy credentials, a bucket per test.
s3_server = archive_tests.s3_server
aws_env = archive_tests.aws_env
bucket = archive_tests.bucket

KEY = log_key(TryKey("etl", "manual__2024-05-01T00:00:00+00:00", "load", 1))

COMMANDED = r"""
handle = start()
for count, command in enumerate(sys.stdin):
    name, _, arg = command.rstrip("\n").partition(" ")
    if name == "print":
        print(arg, flush=True)
    elif name == "lines":
        for n in range(int(arg)):
            print(f"line {n} " + "z" * 50)
        sys.stdout.flush()
    elif name == "partial":
        out(arg.encode())
    elif name == "finish":
        finish(handle, pump.default_finish_timeout(CONFIG))  # as the runner does
    handle.problem()  # returns once the pump has processed everything written so far
    note(f"ack{count}")
"""


class Commanded:
    """A try that runs the commands the test sends it."""

    def __init__(self, started: Try) -> None:
        self.started = started
        self.count = 0

    @property
    def log(self) -> Path:
        return self.started.log

    def send(self, command: str) -> None:
        stdin = self.started.proc.stdin
        assert stdin is not None
        stdin.write(f"{command}\n".encode())
        stdin.flush()
        self.started.note(f"ack{self.count}")
        self.count += 1

    def finish(self) -> bool:
        """The try ends as the runner ends it; True if its pump ended within the bound
        the runner gives it (``final_flush_timeout`` + 5 s)."""
        stdin = self.started.proc.stdin
        assert stdin is not None
        stdin.write(b"finish\n")
        stdin.close()
        assert self.started.wait() == 0
        return self.started.notes()["finished"] == "True"

    def text(self) -> str:
        return self.log.read_text()


@pytest.fixture
def proxy(s3_server: MotoServer) -> Iterator[TcpProxy]:
    with TcpProxy(s3_server.port) as made:
        yield made


@pytest.fixture
def archive(bucket: str, s3_server: MotoServer) -> S3Archive:
    """The same bucket, read by the test directly (not through the proxy)."""
    made = S3Archive.from_settings(s3_settings(bucket, s3_server.url).logging)
    return made


def start_try(tmp_path: Path, bucket: str, proxy: TcpProxy, **ship: Any) -> Commanded:
    config = ShipperConfig(
        key=KEY,
        remote_base_log_folder=f"s3://{bucket}/logs",
        endpoint_url=f"http://127.0.0.1:{proxy.port}",
        region=REGION,
        **ship,
    )
    started = launch(tmp_path, COMMANDED, PumpConfig(ship=config.to_json()), stdin=subprocess.PIPE)
    return Commanded(started)


def chunk_offsets(server: MotoServer, bucket: str) -> list[int]:
    listing = admin(server.url).list_objects_v2(Bucket=bucket, Prefix=f"logs/{KEY}/")
    names = [obj["Key"].rsplit("/", 1)[1] for obj in listing.get("Contents", [])]
    return sorted(int(name.split(".")[0]) for name in names if name.endswith(".chunk"))


def archived(archive: S3Archive) -> bytes:
    return archive.read(KEY, 0, 1 << 30)


def test_first_bytes_at_once_then_by_size_and_the_final_flush_completes(
    tmp_path: Path, bucket: str, proxy: TcpProxy, archive: S3Archive, s3_server: MotoServer
) -> None:
    """With a one-minute interval, the first line reaches S3 at once and a backlog of
    ``size_bytes`` goes as soon as it is there; the final flush sends the rest."""
    running = start_try(tmp_path, bucket, proxy, interval=60.0, size_bytes=4096)
    running.send("print the first line")
    wait_for(lambda: archived(archive) == b"the first line\n", "the first line in S3")
    assert archive.completion(KEY) is None
    running.send("lines 100")  # 5.8 KB: at least size_bytes go before the interval
    wait_for(lambda: archive.size(KEY) >= 15 + 4096, "size_bytes more in S3")
    assert running.log.read_bytes().startswith(archived(archive))
    assert chunk_offsets(s3_server, bucket)[:2] == [0, 15]
    running.send("print a short last line")  # below size_bytes: only the final flush
    assert running.finish()
    data = running.log.read_bytes()
    assert archived(archive) == data and data.endswith(b"a short last line\n")
    completion = archive.completion(KEY)
    assert completion is not None and completion.size == len(data)
    assert completion.captured_by == "try"
    assert completion_of(running.log).size == len(data)  # and the live file's own record


def test_chunks_every_interval(
    tmp_path: Path, bucket: str, proxy: TcpProxy, archive: S3Archive, s3_server: MotoServer
) -> None:
    running = start_try(tmp_path, bucket, proxy, interval=0.2, size_bytes=1 << 20)
    for n in range(3):
        running.send(f"print line {n}")
        size = running.log.stat().st_size
        wait_for(lambda size=size: archive.size(KEY) == size, f"line {n} in S3")  # type: ignore[misc]
    assert chunk_offsets(s3_server, bucket) == [0, 7, 14]
    assert archive.completion(KEY) is None
    assert running.finish()
    assert archived(archive) == b"line 0\nline 1\nline 2\n"
    completion = archive.completion(KEY)
    assert completion is not None and completion.size == 21


def test_an_outage_loses_nothing_and_is_told_in_the_log(
    tmp_path: Path, bucket: str, proxy: TcpProxy, archive: S3Archive
) -> None:
    running = start_try(tmp_path, bucket, proxy, interval=0.2, size_bytes=1 << 20)
    running.send("print before the outage")
    wait_for(lambda: archive.size(KEY) == running.log.stat().st_size, "the first line in S3")
    proxy.reset()  # S3 refuses every connection
    running.send("lines 50")
    wait_for(lambda: "log archive unavailable" in running.text(), "the pump to tell")
    running.send("print still running")
    proxy.heal()
    wait_for(lambda: "reachable again" in running.text(), "the pump to tell it is back")
    running.send("print after the outage")
    wait_for(lambda: archive.size(KEY) == running.log.stat().st_size, "the backlog in S3")
    assert running.finish()
    data = running.log.read_bytes()
    assert archived(archive) == data  # not a byte lost, none twice
    completion = archive.completion(KEY)
    assert completion is not None and completion.size == len(data)
    lines = data.decode().splitlines()
    assert lines[0] == "before the outage" and lines[-1] == "after the outage"
    assert sum(line.startswith("line ") for line in lines) == 50
    (down,) = [line for line in lines if "log archive unavailable" in line]
    assert f"ketch: log archive unavailable: s3://{bucket}/logs: " in down
    assert down.endswith(
        "the log waits on this machine's disk and is retried with backoff (the task keeps running)"
    )
    (up,) = [line for line in lines if "reachable again" in line]
    assert up.endswith(f"ketch: log archive s3://{bucket}/logs reachable again")
    assert lines.index(down) < lines.index("still running") < lines.index(up)


def test_a_missing_bucket_is_named_in_the_first_lines_and_blocks_nothing(
    tmp_path: Path, proxy: TcpProxy, aws_env: None
) -> None:
    missing = f"ketch-missing-{uuid.uuid4().hex[:8]}"
    running = start_try(tmp_path, missing, proxy, interval=0.2, final_flush_timeout=0.5)
    running.send("print the task starts")
    wait_for(lambda: "NoSuchBucket" in running.text(), "the error line")
    first, error = running.text().splitlines()[:2]
    assert first == "the task starts"
    assert f"ketch: log archive unavailable: s3://{missing}/logs: NoSuchBucket: " in error
    assert error.endswith("is retried (the task keeps running)")
    running.send("lines 20000")  # 1.2 MB more: the try is not held back
    running.send("print the task ends")
    assert running.finish()  # the final flush gave up within its bound
    lines = running.text().splitlines()
    assert sum("NoSuchBucket" in line for line in lines) == 1  # said once, not per retry
    assert lines[-1] == "the task ends"
    assert completion_of(running.log).size == running.log.stat().st_size


def test_a_final_flush_that_cannot_reach_s3_gives_up_in_time(
    tmp_path: Path, bucket: str, proxy: TcpProxy, archive: S3Archive
) -> None:
    """S3 partitioned away (every request hangs): the pump gives up after
    ``final_flush_timeout`` (the try's wait for it is that plus 5 s), and the log is
    not marked complete; what S3 has is the start of the file."""
    running = start_try(
        tmp_path, bucket, proxy, interval=0.2, size_bytes=1 << 20, final_flush_timeout=1.0
    )
    running.send("print shipped before the partition")
    wait_for(lambda: archive.size(KEY) == running.log.stat().st_size, "the first line in S3")
    proxy.cut()
    running.send("lines 10")
    assert running.finish()  # the pump ended within the try's bound
    assert archive.completion(KEY) is None
    data = running.log.read_bytes()
    assert data.startswith(archived(archive)) and len(archived(archive)) < len(data)
    assert completion_of(running.log).size == len(data)  # the scheduler's rescue uses it


def test_s3_back_for_the_final_flush_is_told_in_the_log(
    tmp_path: Path, bucket: str, proxy: TcpProxy, archive: S3Archive
) -> None:
    """S3 answers again only when the try ends (the shipping thread waits ``interval``
    before its next attempt): the final flush says it is back, and ships that line too."""
    running = start_try(tmp_path, bucket, proxy, interval=60.0, size_bytes=1 << 20)
    proxy.reset()
    running.send("print during the outage")
    wait_for(lambda: "log archive unavailable" in running.text(), "the pump to tell")
    proxy.heal()
    assert running.finish()
    data = running.log.read_bytes()
    assert archived(archive) == data
    completion = archive.completion(KEY)
    assert completion is not None and completion.size == len(data)
    lines = data.decode().splitlines()
    assert len(lines) == 3 and lines[0] == "during the outage"
    assert "ketch: log archive unavailable: " in lines[1]
    assert lines[2].endswith(f"ketch: log archive s3://{bucket}/logs reachable again")
