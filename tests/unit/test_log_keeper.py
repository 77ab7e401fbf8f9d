"""The scheduler's log keeper with a real SQLite database, real tries and S3 on moto.

The database holds a DAG, a run and its task instances with their try rows, as the
scheduler writes them; a try is a real process with its log pump writing the live file
where the local executor puts it (``test_log_pump``); the archive is S3 on moto in
server mode or the local folder. Each test calls :meth:`LogKeeper.run_once` itself
(the keeper's thread calls it every ``chunk_interval_seconds``) and changes the
database as the scheduler would when a try ends.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from ketch.config import CoreSettings, LoggingSettings, Settings
from ketch.db.models import TaskInstance, TaskInstanceTry
from ketch.executors.base import TryKey
from ketch.logs import keeper as keeper_module
from ketch.logs.archive import LocalFolderArchive, LogArchive, S3Archive, log_key, open_archive
from ketch.logs.keeper import PUMP_GONE_REASON, LogKeeper
from ketch.logs.pump.config import PumpConfig
from ketch.logs.pump.notes import add_note, note_line
from ketch.worker.task_log import log_path
from tests.support.moto_server import REGION, MotoServer
from tests.support.tcp_proxy import TcpProxy
from tests.unit import test_log_archive as archive_tests
from tests.unit.test_log_archive import admin
from tests.unit.test_log_pump import completion_of, gone, launch, wait_for
from tests.unit.test_log_shipper import COMMANDED, Commanded
from tests.unit.test_operations import add_dag, add_run, serialized_chain

# The archive suite's fixtures: moto in server mode, dummy credentials, a bucket per test.
s3_server = archive_tests.s3_server
aws_env = archive_tests.aws_env
bucket = archive_tests.bucket

RUN = "manual__2026-03-01T12:00:00+00:00"
FOOTER = re.compile(
    rb"\[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z\] ketch: the end of this log was captured by"
    rb" the scheduler from the try's live file: " + re.escape(PUMP_GONE_REASON.encode()) + rb"\n"
)


def try_key(task_id: str) -> TryKey:
    return TryKey("etl", RUN, task_id, 1)


@pytest.fixture
def database(sqlite_engine: Engine) -> Engine:
    """A run whose four tasks are running, each with its try row."""
    with Session(sqlite_engine) as session:
        dag = add_dag(session, serialized_chain())
        tasks = ("extract", "transform", "load", "report")
        add_run(session, dag, RUN, {task: "running" for task in tasks})
        session.commit()
    return sqlite_engine


def end_try(engine: Engine, task_id: str, state: str, ago: dt.timedelta | None = None) -> None:
    """What the scheduler does when a try ends: the try row and the TI get the state."""
    when = dt.datetime.now(dt.UTC) - (ago or dt.timedelta(0))
    with Session(engine) as session:
        ti = session.scalars(select(TaskInstance).where(TaskInstance.task_id == task_id)).one()
        session.execute(
            update(TaskInstanceTry)
            .where(TaskInstanceTry.task_instance_id == ti.id)
            .values(state=state, end_date=when)
        )
        ti.state = state
        ti.end_date = when
        session.commit()


def s3_folder_settings(tmp_path: Path, bucket: str, server: MotoServer, **logging: Any) -> Settings:
    return Settings(
        core=CoreSettings(executor="local"),
        logging=LoggingSettings(
            base_log_folder=tmp_path / "logs",
            remote_logging=True,
            remote_base_log_folder=f"s3://{bucket}/logs",
            s3_endpoint_url=server.url,
            s3_region=REGION,
            **logging,
        ),
    )


def local_settings(tmp_path: Path, **logging: Any) -> Settings:
    return Settings(
        core=CoreSettings(executor="local"),
        logging=LoggingSettings(base_log_folder=tmp_path / "logs", **logging),
    )


@pytest.fixture
def s3_settings(tmp_path: Path, bucket: str, s3_server: MotoServer) -> Settings:
    return s3_folder_settings(tmp_path, bucket, s3_server)


def start_try(tmp_path: Path, settings: Settings, task_id: str) -> Commanded:
    """A local try of ``task_id``: its pump writes the live file and ships nothing."""
    path = log_path(settings.log_folder, try_key(task_id))
    return Commanded(launch(tmp_path, COMMANDED, PumpConfig(), log=path, stdin=subprocess.PIPE))


def whole(archive: LogArchive, task_id: str) -> bytes:
    return archive.read(log_key(try_key(task_id)), 0, 1 << 30)


def chunk_offsets(server: MotoServer, bucket: str, task_id: str) -> list[int]:
    prefix = f"logs/{log_key(try_key(task_id))}/"
    listing = admin(server.url).list_objects_v2(Bucket=bucket, Prefix=prefix)
    names = [obj["Key"].rsplit("/", 1)[1] for obj in listing.get("Contents", [])]
    return sorted(int(name.split(".")[0]) for name in names if name.endswith(".chunk"))


# -- local executor, S3 archive: the scheduler ships ------------------------------------


def test_a_running_try_is_shipped_and_completed_from_the_pumps_record(
    tmp_path: Path, database: Engine, s3_settings: Settings
) -> None:
    archive = open_archive(s3_settings)
    keeper = LogKeeper(s3_settings, database, archive)
    assert keeper.ships
    key = log_key(try_key("extract"))
    running = start_try(tmp_path, s3_settings, "extract")
    running.send("print the try starts")
    running.send("lines 20")
    keeper.run_once()
    assert whole(archive, "extract") == running.log.read_bytes()
    running.send("print more output")
    keeper.run_once()
    assert whole(archive, "extract") == running.log.read_bytes()
    assert archive.completion(key) is None

    assert running.finish()  # the pump wrote its record; the database still says running
    keeper.run_once()
    assert archive.completion(key) is None
    end_try(database, "extract", "success")
    keeper.run_once()
    data = running.log.read_bytes()
    assert whole(archive, "extract") == data
    assert archive.completion(key) == completion_of(running.log)
    assert completion_of(running.log).size == len(data)
    assert keeper.last_error is None


def test_a_try_ended_in_the_database_waits_for_its_pump(
    tmp_path: Path, database: Engine, s3_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database says the try ended while its pump still writes (the try's last
    lines, its final flush). The keeper ships what is there but completes the log only
    once the pump's lock is gone, with every byte: also when the pump writes its last
    bytes and ends between the keeper's shipping and its look at the lock."""
    archive = open_archive(s3_settings)
    keeper = LogKeeper(s3_settings, database, archive)
    key = log_key(try_key("transform"))
    running = start_try(tmp_path, s3_settings, "transform")
    running.send("print still writing")
    end_try(database, "transform", "failed")
    keeper.run_once()
    assert whole(archive, "transform") == b"still writing\n"
    assert archive.completion(key) is None  # the pump holds its lock

    real_ship = keeper_module.ship_new_bytes
    ended: list[bool] = []

    def ship_then_the_try_ends(*args: Any) -> int:
        sent = real_ship(*args)
        if not ended:  # right after this pass's shipping: the last line, the pump's end
            running.send("print the last line")
            ended.append(running.finish())
        return sent

    running.send("print more")
    monkeypatch.setattr(keeper_module, "ship_new_bytes", ship_then_the_try_ends)
    keeper.run_once()
    assert ended == [True]
    completion = archive.completion(key)
    if completion is not None:  # never complete with bytes missing
        assert archive.size(key) == completion.size
    keeper.run_once()
    data = running.log.read_bytes()
    assert data.endswith(b"the last line\n")
    assert whole(archive, "transform") == data
    completion = archive.completion(key)
    assert completion is not None and completion.size == len(data)


def kill_try_and_pump(running: Commanded) -> None:
    """An OOM kill of everything: the try and its pump get SIGKILL."""
    pump = running.started.pump_pid
    os.kill(pump, signal.SIGKILL)
    wait_for(lambda: gone(pump), "the pump to die")
    running.started.proc.kill()
    running.started.proc.wait()


@pytest.mark.parametrize("where", ["s3", "local"])
def test_a_try_whose_pump_was_killed_is_rescued_with_a_footer(
    tmp_path: Path, database: Engine, where: str, request: pytest.FixtureRequest
) -> None:
    settings = request.getfixturevalue("s3_settings") if where == "s3" else local_settings(tmp_path)
    archive = open_archive(settings)
    keeper = LogKeeper(settings, database, archive)
    key = log_key(try_key("load"))
    running = start_try(tmp_path, settings, "load")
    running.send("lines 5")
    keeper.run_once()
    running.send("partial a line cut short by the kill")
    kill_try_and_pump(running)
    written = running.log.read_bytes()
    assert not Path(f"{running.log}.complete").exists()
    keeper.run_once()
    assert archive.completion(key) is None  # the database still says running
    end_try(database, "load", "failed")
    keeper.run_once()
    data = whole(archive, "load")
    assert data.startswith(written + b"\n")  # the cut line ended, then the footer
    assert FOOTER.fullmatch(data[len(written) + 1 :]), data[len(written) :]
    completion = archive.completion(key)
    assert completion is not None and completion.size == len(data)
    assert (completion.captured_by, completion.reason) == ("scheduler", PUMP_GONE_REASON)
    if where == "local":
        assert running.log.read_bytes() == data  # the live file is the archive
    keeper.run_once()  # nothing twice
    assert whole(archive, "load") == data


def test_a_restarted_keeper_resumes_and_finishes_a_try_that_ended_meanwhile(
    tmp_path: Path, database: Engine, s3_settings: Settings, s3_server: MotoServer, bucket: str
) -> None:
    archive = open_archive(s3_settings)
    running = start_try(tmp_path, s3_settings, "report")
    running.send("lines 10")
    first = LogKeeper(s3_settings, database, archive)
    first.run_once()
    shipped = archive.size(log_key(try_key("report")))
    assert shipped == running.log.stat().st_size
    del first  # the scheduler stops; the try goes on and ends while it is down
    running.send("lines 30")
    assert running.finish()
    end_try(database, "report", "success", ago=dt.timedelta(hours=2))

    fresh = LogKeeper(s3_settings, database, open_archive(s3_settings))
    fresh.run_once()
    data = running.log.read_bytes()
    assert whole(archive, "report") == data
    assert chunk_offsets(s3_server, bucket, "report") == [0, shipped]  # resumed, not resent
    completion = archive.completion(log_key(try_key("report")))
    assert completion is not None and completion.size == len(data)
    assert completion.captured_by == "try"


# -- an S3 outage, told in the try's log ---------------------------------------------------

STAMP = re.compile(r"^\[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z\] ", re.MULTILINE)


@pytest.fixture
def proxy(s3_server: MotoServer) -> Iterator[TcpProxy]:
    with TcpProxy(s3_server.port) as made:
        yield made


def proxied_settings(tmp_path: Path, bucket: str, proxy: TcpProxy) -> Settings:
    """The keeper's settings: S3 (moto) reached through ``proxy``, which the test resets."""
    return Settings(
        core=CoreSettings(executor="local"),
        logging=LoggingSettings(
            base_log_folder=tmp_path / "logs",
            remote_logging=True,
            remote_base_log_folder=f"s3://{bucket}/logs",
            s3_endpoint_url=f"http://127.0.0.1:{proxy.port}",
            s3_region=REGION,
        ),
    )


def own_lines(data: bytes) -> list[str]:
    return STAMP.sub("[T] ", data.decode()).splitlines()


def test_an_outage_is_told_in_the_running_try_s_log_once_by_its_pump(
    tmp_path: Path, database: Engine, bucket: str, s3_server: MotoServer, proxy: TcpProxy
) -> None:
    """The pod's pump tells an outage in the log; with the local executor the keeper ships,
    and the log of the try gets the same lines (written by the try's pump, between lines)."""
    settings = proxied_settings(tmp_path, bucket, proxy)
    direct = open_archive(s3_folder_settings(tmp_path, bucket, s3_server))
    keeper = LogKeeper(settings, database, open_archive(settings))
    key = log_key(try_key("extract"))
    running = start_try(tmp_path, settings, "extract")
    running.send("print before the outage")
    keeper.run_once()
    assert whole(direct, "extract") == b"before the outage\n"
    proxy.reset()  # S3 refuses every connection
    running.send("print during the outage")
    keeper.run_once()
    assert keeper.last_error is not None
    wait_for(lambda: b"log archive unavailable" in running.log.read_bytes(), "the outage line")
    keeper.run_once()  # still failing: told once
    running.send("print still down")
    proxy.heal()
    keeper.run_once()
    wait_for(lambda: b"reachable again" in running.log.read_bytes(), "the line saying it is back")
    running.send("print after the outage")
    assert running.finish()
    end_try(database, "extract", "success")
    keeper.run_once()
    data = running.log.read_bytes()
    assert whole(direct, "extract") == data
    completion = direct.completion(key)
    assert completion is not None and completion.size == len(data)
    where = f"s3://{bucket}/logs"
    lines = own_lines(data)
    assert lines[:3] == ["before the outage", "during the outage", lines[2]]
    assert lines[2].startswith(f"[T] ketch: log archive unavailable: {where}: ")
    assert lines[2].endswith(
        "the log waits on this machine's disk and is retried (the task keeps running)"
    )
    assert lines[3:] == [
        "still down",
        f"[T] ketch: log archive {where} reachable again",
        "after the outage",
    ]
    assert not Path(f"{running.log}.notes").exists()


def test_the_keeper_s_line_waits_for_the_try_s_line_to_end(
    tmp_path: Path, database: Engine, bucket: str, s3_server: MotoServer, proxy: TcpProxy
) -> None:
    """The try's line is unfinished: the keeper's line waits with the pump until it ends,
    and further failing passes add nothing (no second line, no "reachable again")."""
    settings = proxied_settings(tmp_path, bucket, proxy)
    direct = open_archive(s3_folder_settings(tmp_path, bucket, s3_server))
    keeper = LogKeeper(settings, database, open_archive(settings))
    running = start_try(tmp_path, settings, "transform")
    running.send("partial a line")
    keeper.run_once()
    proxy.reset()
    running.send("partial  still unfinished")
    keeper.run_once()  # fails: its line goes to the pump, which holds it
    notes = Path(f"{running.log}.notes")
    wait_for(lambda: not notes.exists(), "the pump to take the keeper's line")
    keeper.run_once()
    keeper.run_once()
    assert not notes.exists(), notes.read_text()  # no "reachable again": S3 is still down
    running.send("print  ends")
    wait_for(lambda: b"unavailable" in running.log.read_bytes(), "the line after the try's")
    proxy.heal()
    keeper.run_once()
    wait_for(lambda: b"reachable again" in running.log.read_bytes(), "the line saying it is back")
    assert running.finish()
    end_try(database, "transform", "success")
    keeper.run_once()
    data = running.log.read_bytes()
    assert whole(direct, "transform") == data
    lines = own_lines(data)
    assert lines[0] == "a line still unfinished ends"
    assert "ketch: log archive unavailable: " in lines[1]
    assert lines[2:] == [f"[T] ketch: log archive s3://{bucket}/logs reachable again"]


def test_once_the_pump_is_gone_the_keeper_writes_its_lines_itself(
    tmp_path: Path, database: Engine, bucket: str, s3_server: MotoServer, proxy: TcpProxy
) -> None:
    """The try ended (its pump too) and S3 is down: the keeper appends the lines itself,
    after a newline if the try's last line had none, with a line the pump was left but
    did not take; the pump's record and the archive's completion have the new size."""
    settings = proxied_settings(tmp_path, bucket, proxy)
    direct = open_archive(s3_folder_settings(tmp_path, bucket, s3_server))
    keeper = LogKeeper(settings, database, open_archive(settings))
    key = log_key(try_key("load"))
    running = start_try(tmp_path, settings, "load")
    running.send("print the try's output")
    running.send("partial without a newline")
    assert running.finish()
    add_note(running.log, note_line("a line the pump was left as it ended"))
    end_try(database, "load", "success")
    proxy.reset()
    keeper.run_once()
    assert direct.completion(key) is None
    keeper.run_once()  # still failing: told once
    proxy.heal()
    keeper.run_once()
    data = running.log.read_bytes()
    assert whole(direct, "load") == data
    completion = direct.completion(key)
    assert completion is not None and completion.size == len(data)
    assert completion.captured_by == "try"
    assert completion_of(running.log).size == len(data)
    lines = own_lines(data)
    assert lines[:3] == [
        "the try's output",
        "without a newline",
        "[T] ketch: a line the pump was left as it ended",
    ]
    assert lines[3].startswith(f"[T] ketch: log archive unavailable: s3://{bucket}/logs: ")
    assert lines[3].endswith("the log waits on this machine's disk and is retried")
    assert lines[4:] == [f"[T] ketch: log archive s3://{bucket}/logs reachable again"]
    assert not Path(f"{running.log}.notes").exists()


# -- retention -------------------------------------------------------------------------------


def age_s3_log(bucket: str, key: str, days: int) -> None:
    """Make the log's objects ``days`` old in moto (it runs in this process)."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    old = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(days=days)
    store = s3_backends[DEFAULT_ACCOUNT_ID]["global"].buckets[bucket].keys
    for name in list(store):
        if name.startswith(f"logs/{key}/"):
            store[name].last_modified = old


def age_file(path: Path, days: int) -> None:
    moment = (dt.datetime.now(dt.UTC) - dt.timedelta(days=days)).timestamp()
    os.utime(path, (moment, moment))


def write_live_file(settings: Settings, task_id: str, data: bytes) -> Path:
    path = log_path(settings.log_folder, try_key(task_id))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("where", ["s3", "local"])
def test_retention_deletes_old_logs(
    tmp_path: Path, database: Engine, where: str, request: pytest.FixtureRequest
) -> None:
    """With ``log_retention_days``, the keeper's first pass deletes logs older than
    that: archived (S3) and local live files, or the local folder archive's files."""
    if where == "s3":
        bucket_name: str = request.getfixturevalue("bucket")
        server: MotoServer = request.getfixturevalue("s3_server")
        settings = s3_folder_settings(tmp_path, bucket_name, server, log_retention_days=3)
    else:
        settings = local_settings(tmp_path, log_retention_days=3)
    archive = open_archive(settings)
    for task_id in ("extract", "transform"):
        end_try(database, task_id, "success", ago=dt.timedelta(days=10))
    old = write_live_file(settings, "extract", b"an old log\n")
    new = write_live_file(settings, "transform", b"a newer log\n")
    age_file(old, days=5)
    age_file(new, days=1)
    if isinstance(archive, S3Archive):
        for task_id in ("extract", "transform"):
            archive.write_chunk(log_key(try_key(task_id)), 0, b"archived\n")
        age_s3_log(bucket_name, log_key(try_key("extract")), days=5)
        age_s3_log(bucket_name, log_key(try_key("transform")), days=1)
    else:
        assert isinstance(archive, LocalFolderArchive)

    keeper = LogKeeper(settings, database, archive)
    keeper.run_once()
    assert not old.exists() and new.read_bytes() == b"a newer log\n"
    assert archive.size(log_key(try_key("extract"))) == 0
    assert archive.size(log_key(try_key("transform"))) > 0


def test_no_retention_by_default(tmp_path: Path, database: Engine) -> None:
    settings = local_settings(tmp_path)
    path = write_live_file(settings, "extract", b"kept\n")
    age_file(path, days=400)
    keeper = LogKeeper(settings, database, open_archive(settings))
    keeper.run_once()
    assert path.read_bytes() == b"kept\n"
