"""Task logs end to end: what a user sees through the web, the CLI and the archive.

One suite over {local folder archive, S3 archive (moto in server mode, behind a TCP
proxy the test cuts)} x {local executor, Kubernetes executor on the API simulator}, with
``ketch scheduler`` and ``ketch web`` as separate processes that share no KETCH_HOME
(``tests.support.log_env``: which log folder each one sees is what a deployment gives it).
One scheduler+web pair per combination serves every test of the module; each test waits
for the runs it starts (a pod still running after its test would be killed).

The Kubernetes + folder combination runs with ``[logging] json_format`` (the JSON stdout
scenario, masking in JSON records, the scheduler's rescue decoding them), so Kubernetes + S3
keeps the web's live reads of a plain pod log. Known bugs are ``xfail(strict=True)`` with
their reason (a fix makes them fail: remove the mark then).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest

from ketch.executors.base import TryKey
from ketch.testing.kube_sim import KubeSimulator
from tests.support.ketch_process import wait_for
from tests.support.log_env import (
    FOLDER,
    KUBERNETES,
    LOCAL,
    S3,
    Combo,
    Follower,
    LogStack,
    decode_json_stdout,
    moto_process,
    read_sse,
)
from tests.support.moto_server import MotoProcess

VAR_KEY = "logt_api_value"
VAR_SECRET = 'v4r-S3cr3t/p@ss"w\u00f6rd+&=1'
CONN_ID = "logt_conn"
CONN_SECRET = 'c0nn-P@ss:w/rd"\u00e9+%x'
LIVE_LINES = 15
OUTAGE_LINES = 40
KILL_LINES = 20

BAD_SOURCE = r'''
def bad_bytes() -> bytes:
    """A 10 MB line without newline, binary bytes, invalid UTF-8, a progress bar."""
    return (
        b"bad-begin\n"
        + b"big:"
        + b"y" * (10 * 1024 * 1024)
        + b"\x00\x01\x02\x1b[31m\xff\xfe binary\x7f"
        + b" invalid:\xc3\x28\xa0\xa1\xe2\x28\xa1\xf0\x90\x28\xbc\xed\xa0\x80 "
        + "\u20ac".encode() * 70000
        + b"\rprogress 10%\rprogress 55%\rprogress 100%\r\n"
        + b"bad-end\n"
    )
'''

DAGS_HEAD = r'''
"""DAGs of the log behaviour suite (tests/integration/test_log_behaviour.py)."""
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from urllib.parse import quote, quote_plus

from ketch import Connection, Variable, dag, task

START = datetime(2026, 1, 1, tzinfo=timezone.utc)
ARGS = dict(schedule=None, start_date=START, is_paused_upon_creation=False)
'''

DAGS_BODY = r"""

def numbered(prefix: str, count: int, pause: float) -> None:
    for i in range(count):
        print(f"{prefix} {i:03d}", flush=True)
        time.sleep(pause)


@dag(**ARGS)
def logt_live():
    @task(retries=0)
    def count() -> None:
        numbered("live-line", LIVE_LINES, 0.2)

    count()


@dag(**ARGS)
def logt_queued():
    @task(retries=0)
    def count_q() -> None:
        numbered("queued-line", 10, 0.1)

    count_q()


@dag(**ARGS)
def logt_outage():
    @task(retries=0)
    def steady() -> None:
        numbered("outage-line", OUTAGE_LINES, 0.1)

    steady()


@dag(**ARGS)
def logt_secrets():
    @task(retries=0)
    def leak() -> None:
        value = Variable.get(VAR_KEY)
        conn = Connection.get(CONN_ID)
        for name, secret in (("var", value), ("conn", conn.password)):
            print(f"{name} raw: {secret}", flush=True)
            print(f"{name} quoted: {quote(secret, safe='')}", flush=True)
            print(f"{name} quote_plus: {quote_plus(secret)}", flush=True)
            print(f"{name} json: {json.dumps(secret)}", flush=True)
            print(f"{name} json-unicode: {json.dumps(secret, ensure_ascii=False)}", flush=True)
        print(f"conn uri: {conn.get_uri()}", flush=True)
        env = {**os.environ, "LOGT_V": value, "LOGT_C": conn.password}
        subprocess.run(
            ["bash", "-c", 'echo "bash var: $LOGT_V"; echo "bash conn: $LOGT_C" >&2'],
            env=env,
            check=True,
        )
        names = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
        present = sorted(n for n in names if n in os.environ)
        print(f"aws-env: {','.join(present) or 'absent'}", flush=True)

    leak()


@dag(**ARGS)
def logt_sigkill():
    @task(retries=0)
    def killed() -> None:
        for i in range(KILL_LINES):
            print(f"kill-line {i:03d}", flush=True)
        sys.stdout.write("kill-last-no-newline")
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    killed()


@dag(**ARGS)
def logt_oom():
    @task(retries=0, executor_config={"resources": {"limits": {"memory": "64Mi"}}})
    def oom_victim() -> None:
        for i in range(10):
            print(f"oom-line {i:03d}", flush=True)
        time.sleep(120)

    oom_victim()


@dag(**ARGS)
def logt_bad():
    @task(retries=0)
    def bad() -> None:
        sys.stdout.flush()
        sys.stdout.buffer.write(bad_bytes())
        sys.stdout.buffer.flush()

    bad()


for factory in (logt_live, logt_queued, logt_outage, logt_secrets, logt_sigkill, logt_oom, logt_bad):
    factory()
"""

DAGS = DAGS_HEAD + BAD_SOURCE + DAGS_BODY
for _name, _value in {
    "LIVE_LINES": LIVE_LINES,
    "OUTAGE_LINES": OUTAGE_LINES,
    "KILL_LINES": KILL_LINES,
    "VAR_KEY": repr(VAR_KEY),
    "CONN_ID": repr(CONN_ID),
}.items():
    DAGS = DAGS.replace(_name, str(_value))


def bad_bytes() -> bytes:
    """The same bytes as the DAG file's ``bad_bytes``."""
    namespace: dict[str, object] = {}
    exec(BAD_SOURCE, namespace)  # the test's own text
    return namespace["bad_bytes"]()  # type: ignore[operator]


# JSON stdout is tried on Kubernetes with the folder archive: there the web reads the shared
# live file, so Kubernetes + S3 keeps the web's live reads of a plain pod log.
COMBOS = [
    Combo(LOCAL, FOLDER),
    Combo(LOCAL, S3),
    Combo(KUBERNETES, FOLDER, json_format=True),
    Combo(KUBERNETES, S3),
]


@pytest.fixture(scope="module")
def kube_sim() -> Iterator[KubeSimulator]:
    with KubeSimulator() as sim:
        yield sim


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoProcess]:
    with moto_process() as server:
        yield server


_NOT_STARTED: dict[str, str] = {}  # combination -> why its processes did not start


@pytest.fixture(scope="module", params=COMBOS, ids=lambda combo: combo.id)
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LogStack]:
    combo: Combo = request.param
    if combo.id in _NOT_STARTED:  # not once more per test
        pytest.fail(f"{combo.id} did not start:\n{_NOT_STARTED[combo.id]}", pytrace=False)
    sim = request.getfixturevalue("kube_sim") if combo.executor == KUBERNETES else None
    moto = request.getfixturevalue("moto") if combo.archive == S3 else None
    stack = LogStack(combo, tmp_path_factory.mktemp(combo.id), DAGS, sim=sim, moto=moto)
    try:
        try:
            stack.start()
        except AssertionError as exc:
            _NOT_STARTED[combo.id] = str(exc)
            raise
        yield stack
    finally:
        stack.stop()
        sys.stderr.write(stack.output(20000))


def only(stack: LogStack, *, json: bool = False, archive: str | None = None) -> None:
    """Fail if ``stack`` is not a combination this scenario is for (scenarios choose their
    combinations with :func:`combos`: nothing is skipped)."""
    assert not json or stack.combo.json_format, stack.combo.id
    assert archive is None or stack.combo.archive == archive, stack.combo.id


def combos(*chosen: Combo) -> pytest.MarkDecorator:
    """Run a scenario on ``chosen`` combinations only (the module's ``stack`` fixture,
    parametrised indirectly)."""
    return pytest.mark.parametrize("stack", chosen, indirect=True, ids=lambda c: c.id)


S3_COMBOS = [c for c in COMBOS if c.archive == S3]


def finished_run(stack: LogStack, dag_id: str) -> str:
    """A finished run of ``dag_id`` (the one an earlier test made, else a new one)."""
    if dag_id not in stack.runs:
        run_id = stack.trigger(dag_id)
        stack.wait_finished(dag_id, run_id)
        stack.runs[dag_id] = run_id
    return stack.runs[dag_id]


def numbers(text: str, prefix: str) -> list[int]:
    return [int(n) for n in re.findall(rf"^{re.escape(prefix)} (\d+)$", text, re.MULTILINE)]


def wait_try(stack: LogStack, dag_id: str, run_id: str, task_id: str) -> TryKey:
    """The try's key once it is queued (a log URL before that is a 404)."""
    wait_for(
        lambda: stack.api.task_instances(dag_id, run_id)[task_id]["try_number"] >= 1,
        60,
        0.02,
        f"{task_id} queued",
    )
    return TryKey(dag_id, run_id, task_id, 1)


def wait_pod_gone(stack: LogStack, key: TryKey) -> None:
    if stack.combo.executor == KUBERNETES:
        wait_for(lambda: not stack.pod_exists(key), 60, 0.05, f"the pod of {key} deleted")


def check_same_stream(stack: LogStack, key: TryKey, archived: bytes) -> None:
    """Every source holds the same bytes: the live file and the pod's stdout."""
    if stack.combo.archive == S3:
        assert stack.live_file(key).read_bytes() == archived, "live file != archive"
    if stack.combo.executor == KUBERNETES:
        stdout = stack.pod_stdout(key)
        if stack.combo.json_format:
            stdout = decode_json_stdout(stdout)
        assert stdout == archived, "pod stdout != archive"


# -- 1. live follow -----------------------------------------------------------------------


def test_live_follow_through_the_web_switches_sources_without_gap_or_repeat(
    stack: LogStack,
) -> None:
    only(stack)
    run_id = stack.trigger("logt_live")
    key = wait_try(stack, "logt_live", run_id, "count")
    early = Follower(stack.log_url(key) + "?follow=true")
    wait_for(lambda: "live-line 004" in early.result.text, 60, 0.02, "five lines followed")
    late = Follower(stack.log_url(key) + "?follow=true")
    # the source a reader has while the try runs (the follower then moves to the archive)
    running = stack.get_log(key)
    first, second = early.join(), late.join()
    stack.wait_finished("logt_live", run_id)
    stack.runs["logt_live"] = run_id
    archived = stack.wait_archived(key)
    live_source = "pod" if stack.combo.id == "k8s-s3" else "live file"
    assert running.headers["X-Log-Source"] == live_source, running.headers
    assert running.headers["X-Log-Complete"] == "false", running.headers
    assert archived.startswith(running.content) and b"live-line 004\n" in running.content
    for name, got in (("early", first), ("late", second)):
        assert got.status == 200 and got.error is None, (name, got.status, got.error)
        assert got.end == "success", (name, got.events[-3:])
        assert numbers(got.text, "live-line") == list(range(LIVE_LINES)), (name, got.text)
        assert got.text == archived.decode(), f"{name} follower != archived log"
    check_same_stream(stack, key, archived)


def test_cli_follow_of_a_queued_try_waits_and_prints_everything(stack: LogStack) -> None:
    only(stack)
    assert stack.exec_proxy is not None
    stack.exec_proxy.reset()  # the try cannot reach the execution API: it stays queued
    followers: list[subprocess.Popen[bytes]] = []
    try:
        run_id = stack.trigger("logt_queued")
        key = wait_try(stack, "logt_queued", run_id, "count_q")
        args = ["tasks", "logs", "logt_queued", run_id, "count_q", "--follow"]
        for remote in (False, True):
            followers.append(
                subprocess.Popen(
                    [*_ketch(), *args],
                    env=stack.cli_env(remote),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                )
            )
        time.sleep(1.5)
        assert stack.api.task_instances("logt_queued", run_id)["count_q"]["state"] == "queued"
        for follower in followers:
            assert follower.poll() is None, follower.communicate()
    finally:
        stack.exec_proxy.heal()
    outputs = [follower.communicate(timeout=90) for follower in followers]
    stack.wait_finished("logt_queued", run_id)
    archived = stack.wait_archived(key)
    for (out, err), how, follower in zip(outputs, ("local", "remote"), followers, strict=True):
        assert follower.returncode == 0, (how, err.decode())
        assert numbers(out.decode(), "queued-line") == list(range(10)), (how, out)
        assert out == archived, f"ketch tasks logs --follow ({how}) != archived log"


def _ketch() -> list[str]:
    return [sys.executable, "-m", "ketch"]


# -- 2. after the try ended ---------------------------------------------------------------


def check_reads(stack: LogStack, key: TryKey, archived: bytes, end: str = "success") -> None:
    """Plain GET, ranges, tail_lines, download and a follow of the finished try all give
    the archived bytes (the follow then ends with the try's state, ``end``)."""
    whole = stack.get_log(key)
    assert whole.status_code == 200, whole.text
    assert whole.content == archived
    assert whole.headers["X-Log-Source"] == "archive", whole.headers
    assert whole.headers["X-Log-Complete"] == "true", whole.headers
    piece = stack.get_log(key, offset=10, limit=50)
    assert piece.status_code == 200, piece.text
    assert piece.content == archived[10:60]
    assert piece.headers["X-Log-Offset"] == "10" and piece.headers["X-Log-Next-Offset"] == "60"
    pieces, offset = [], 0
    while True:
        part = stack.get_log(key, offset=offset, limit=97)
        assert part.status_code == 200, part.text
        if not part.content:
            break
        pieces.append(part.content)
        offset = int(part.headers["X-Log-Next-Offset"])
    assert b"".join(pieces) == archived, "ranges do not join to the whole log"
    tail = stack.get_log(key, tail_lines=3)
    assert tail.content.splitlines() == archived.splitlines()[-3:]
    download = stack.get_log(key, download="true")
    assert download.content == archived
    assert "attachment" in download.headers["Content-Disposition"]
    replay = read_sse(stack.log_url(key) + "?follow=true", timeout=60)
    assert replay.end == end, replay.events[-3:]
    assert replay.text == archived.decode(errors="replace"), "a follow of the ended try"


def test_full_log_readable_after_the_try_ended(stack: LogStack) -> None:
    only(stack)
    run_id = finished_run(stack, "logt_live")
    key = TryKey("logt_live", run_id, "count", 1)
    wait_pod_gone(stack, key)
    archived = stack.wait_archived(key)
    assert numbers(archived.decode(), "live-line") == list(range(LIVE_LINES))
    check_reads(stack, key, archived)
    for remote in (False, True):
        result = stack.cli("tasks", "logs", "logt_live", run_id, "count", remote=remote)
        assert result.returncode == 0, result.stderr.decode()
        assert result.stdout == archived, f"ketch tasks logs (remote={remote})"


# -- 3. secrets ---------------------------------------------------------------------------


def secret_forms() -> set[str]:
    from ketch.authoring.connection import Connection

    forms: set[str] = set()
    for secret in (VAR_SECRET, CONN_SECRET):
        forms |= {
            secret,
            quote(secret, safe=""),
            quote_plus(secret),
            json.dumps(secret)[1:-1],
            json.dumps(secret, ensure_ascii=False)[1:-1],
        }
    conn = Connection(CONN_ID, "postgres", host="db.example", login="etl", password=CONN_SECRET)
    forms.add(conn.get_uri())
    return forms


def assert_no_secret(where: str, data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    for form in secret_forms():
        assert form not in text, f"{where} shows a secret in clear: {form!r}"


def test_secrets_are_masked_in_the_web_the_archive_and_the_pod_stdout(stack: LogStack) -> None:
    only(stack)
    result = stack.cli("variables", "set", VAR_KEY, VAR_SECRET, "--sensitive")
    assert result.returncode == 0, result.stderr.decode()
    response = stack.api.http.put(
        f"/api/v1/connections/{CONN_ID}",
        json={
            "conn_type": "postgres",
            "host": "db.example",
            "login": "etl",
            "password": CONN_SECRET,
        },
    )
    assert response.status_code == 200, response.text
    run_id = stack.trigger("logt_secrets")
    tis = stack.wait_finished("logt_secrets", run_id)
    key = TryKey("logt_secrets", run_id, "leak", 1)
    archived = stack.wait_archived(key)
    assert tis["leak"]["state"] == "success", archived.decode(errors="replace")
    text = archived.decode()
    for line in (
        "var raw: ***",
        "var quoted: ***",
        'var json: "***"',
        "conn raw: ***",
        "conn quote_plus: ***",
        'conn json-unicode: "***"',
        "conn uri: ***",
        "bash var: ***",
        "bash conn: ***",
    ):
        assert line in text, f"{line!r} not in the log:\n{text}"
    assert_no_secret("the archived log", archived)
    assert_no_secret("the whole archive", stack.archive_bytes())
    web = stack.get_log(key)
    assert web.status_code == 200
    assert_no_secret("the web's answer", web.content)
    assert_no_secret("the web's SSE", read_sse(stack.log_url(key) + "?follow=true").text.encode())
    aws = re.search(r"^aws-env: (.*)$", text, re.MULTILINE)
    assert aws is not None
    if stack.combo.executor == LOCAL:
        assert aws[1] == "absent", "a local try got AWS credentials"
    elif stack.combo.archive == S3:
        assert "AWS_SECRET_ACCESS_KEY" in aws[1], "the pod has no AWS credentials to ship with"
    if stack.combo.executor == KUBERNETES:
        assert_no_secret("the pod's stdout", stack.pod_stdout(key))
        check_same_stream(stack, key, archived)
    else:
        assert_no_secret("the live file", stack.live_file(key).read_bytes())


# -- 4. SIGKILL / OOM ---------------------------------------------------------------------


def test_a_try_killed_with_sigkill_keeps_every_line(stack: LogStack) -> None:
    only(stack)
    run_id = stack.trigger("logt_sigkill")
    tis = stack.wait_finished("logt_sigkill", run_id)
    assert tis["killed"]["state"] == "failed"
    key = TryKey("logt_sigkill", run_id, "killed", 1)
    archived = stack.wait_archived(key).decode()
    assert numbers(archived, "kill-line") == list(range(KILL_LINES)), archived
    assert "kill-last-no-newline" in archived, archived
    web = stack.get_log(key)
    assert web.status_code == 200 and web.content == archived.encode()


def test_following_a_try_that_fails_ends_with_its_state(
    stack: LogStack, request: pytest.FixtureRequest
) -> None:
    """A follower of a running try that dies gets its whole log, then ``event: end``."""
    only(stack)
    run_id = stack.trigger("logt_sigkill")
    key = wait_try(stack, "logt_sigkill", run_id, "killed")
    follower = Follower(stack.log_url(key) + "?follow=true", timeout=60)
    stack.wait_finished("logt_sigkill", run_id)
    archived = stack.wait_archived(key)
    try:
        result = follower.join(5)
    finally:
        if stack.combo.executor == KUBERNETES and stack.pod_exists(key):
            stack.delete_pod(key)  # ends a follow that spins on the kept pod
    assert result.error is None, result.error
    assert result.end == "failed", result.events[-2:]
    assert result.text == archived.decode(), "follower != archived log"


@combos(*[c for c in COMBOS if c.executor == KUBERNETES])
@pytest.mark.parametrize(
    "whole_container", [pytest.param(True, id="cgroup"), pytest.param(False, id="sim")]
)
def test_an_oom_killed_pod_log_is_captured_by_the_scheduler(
    stack: LogStack, whole_container: bool
) -> None:
    """``cgroup``: every process of the container dies (a cgroup v2 OOM kill, the pump too),
    as the simulator is told to OOM-kill the pod; ``sim``: the simulator's OOM kill alone."""
    only(stack)
    assert stack.combo.executor == KUBERNETES
    assert stack.sim is not None and stack.namespace is not None
    run_id = stack.trigger("logt_oom")
    key = wait_try(stack, "logt_oom", run_id, "oom_victim")
    wait_for(lambda: b"oom-line 009" in stack.pod_stdout(key), 60, 0.05, "the OOM victim's lines")
    if whole_container:
        stack.kill_container_processes(key)
    stack.sim.oom_kill(stack.namespace, stack.pod_name(key))
    tis = stack.wait_finished("logt_oom", run_id)
    assert tis["oom_victim"]["state"] == "failed"
    assert "OOMKilled" in (tis["oom_victim"].get("error") or ""), tis["oom_victim"]
    archived = stack.wait_archived(key).decode()
    assert numbers(archived, "oom-line") == list(range(10)), archived
    last = archived.rstrip("\n").rsplit("\n", 1)[-1]
    assert "captured by the scheduler" in last and "OOMKilled" in last, archived
    web = stack.get_log(key)
    assert web.status_code == 200 and web.content == archived.encode()


# -- 5. S3 outage -------------------------------------------------------------------------


@combos(*S3_COMBOS)
def test_s3_outage_mid_run_loses_nothing(stack: LogStack) -> None:
    only(stack, archive=S3)
    assert stack.s3_proxy is not None
    run_id = stack.trigger("logt_outage")
    key = wait_try(stack, "logt_outage", run_id, "steady")
    stack.wait_state("logt_outage", run_id, "steady", ("running",))
    try:
        time.sleep(1.0)
        stack.s3_proxy.reset()  # S3 refuses every connection
        time.sleep(1.5)
    finally:
        stack.s3_proxy.heal()
    tis = stack.wait_finished("logt_outage", run_id)
    assert tis["steady"]["state"] == "success"
    stack.runs["logt_outage"] = run_id
    archived = stack.wait_archived(key)
    text = archived.decode()
    assert numbers(text, "outage-line") == list(range(OUTAGE_LINES)), text
    assert stack.live_file(key).read_bytes() == archived, "live file != archive"
    web = stack.get_log(key)
    assert web.status_code == 200 and web.content == archived


@combos(*S3_COMBOS)
def test_s3_outage_is_noted_in_the_log(stack: LogStack) -> None:
    only(stack, archive=S3)
    run_id = stack.runs.get("logt_outage")
    assert run_id is not None, "needs test_s3_outage_mid_run_loses_nothing's run (runs first)"
    text = stack.wait_archived(TryKey("logt_outage", run_id, "steady", 1)).decode()
    assert re.search(r"\] ketch: log archive unavailable: .+", text), text


# -- 6. JSON stdout -----------------------------------------------------------------------


@combos(*[c for c in COMBOS if c.json_format])
def test_json_format_pod_stdout_is_json_lines_and_the_archive_plain(stack: LogStack) -> None:
    only(stack, json=True)
    run_id = finished_run(stack, "logt_live")
    key = TryKey("logt_live", run_id, "count", 1)
    archived = stack.wait_archived(key)
    records = [json.loads(line) for line in stack.pod_stdout(key).decode().splitlines()]
    assert records, "no pod stdout"
    for record in records:
        assert record["dag_id"] == "logt_live" and record["task_id"] == "count", record
        assert record["run_id"] == run_id and record["try_number"] == 1, record
    messages = [r["message"] for r in records]
    assert [f"live-line {i:03d}" for i in range(LIVE_LINES)] == [
        m for m in messages if m.startswith("live-line")
    ]
    assert not archived.lstrip().startswith(b"{"), "the archived log is not plain text"
    assert numbers(archived.decode(), "live-line") == list(range(LIVE_LINES))
    assert b'"dag_id"' not in archived


# -- 7. bad output ------------------------------------------------------------------------


@combos(*[c for c in COMBOS if c.id in ("local-folder", "k8s-s3")])
def test_bad_output_is_kept_exactly(stack: LogStack) -> None:
    run_id = stack.trigger("logt_bad")
    key = wait_try(stack, "logt_bad", run_id, "bad")
    follower = Follower(stack.log_url(key) + "?follow=true", timeout=120)
    tis = stack.wait_finished("logt_bad", run_id)
    assert tis["bad"]["state"] == "success", tis["bad"]
    archived = stack.wait_archived(key)
    expected = bad_bytes()
    assert expected in archived
    web = stack.get_log(key)
    assert web.status_code == 200 and web.content == archived
    sse = follower.join(120)
    assert sse.end == "success" and sse.error is None, (sse.error, sse.events[-2:])
    want = archived.decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")
    assert sse.text == want, "SSE != the log with U+FFFD for invalid bytes"
    assert "\ufffd" in sse.text and "\u20ac" * 70000 in sse.text


# -- 2b. after a scheduler restart ----------------------------------------------------------


def test_logs_unchanged_and_readable_after_a_scheduler_restart(stack: LogStack) -> None:
    only(stack)
    before = {key: stack.wait_archived(key) for key in stack.finished}
    stack.restart_scheduler()
    run_id = stack.trigger("logt_queued")
    stack.wait_finished("logt_queued", run_id)
    fresh = TryKey("logt_queued", run_id, "count_q", 1)
    wait_pod_gone(stack, fresh)
    check_reads(stack, fresh, stack.wait_archived(fresh))
    time.sleep(2 * 0.5 + 0.5)  # a few passes of the restarted scheduler's log keeper
    for key, data in before.items():
        assert stack.archived(key) == data, f"{key} changed after the restart"
        if len(data) < 65536:
            web = stack.get_log(key)
            assert web.status_code == 200 and web.content == data, key
            assert web.headers["X-Log-Complete"] == "true", key
    if stack.combo.executor == KUBERNETES and stack.combo.archive == S3:
        assert not any(p.is_file() for p in Path(stack.web_logs).rglob("*")), "web wrote logs"
