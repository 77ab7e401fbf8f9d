"""The REST API v1 through FastAPI's TestClient: every endpoint, its 404/409/422 paths."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, event, select
from sqlalchemy.orm import Session

from ketch.api.app import create_app
from ketch.config import get_settings
from ketch.db.models import DagModel, DagRun, ImportError_, TaskInstance, XCom
from ketch.executors.base import TryKey
from ketch.worker.task_log import UnsafeLogPath, log_path
from tests.support.web import local_client
from tests.unit.test_operations import add_dag, add_run, serialized_chain

API = "/api/v1"
STATES = {"extract": "success", "transform": "failed", "load": "upstream_failed", "report": None}


@pytest.fixture
def client(sqlite_engine: Engine) -> Iterator[TestClient]:
    with Session(sqlite_engine) as session:
        etl = add_dag(session, serialized_chain())
        add_dag(session, serialized_chain("other"), paused=True)
        add_run(session, etl, "r1", STATES, run_state="failed")
        session.add(
            ImportError_(
                filename="/dags/bad.py",
                stacktrace="Traceback\nSyntaxError: x",
                timestamp=datetime.now(UTC),
            )
        )
        session.commit()
    with local_client(create_app(get_settings())) as c:
        yield c


def test_openapi_and_health(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert spec["info"]["title"] == "ketch"
    assert f"{API}/dags/{{dag_id}}/dagRuns" in spec["paths"]
    assert "/execution/try/start" in spec["paths"]
    assert client.get(f"{API}/health").json() == {
        "status": "ok",
        "database": "ok",
        "log_archive": "ok",
    }


def test_list_dags_filters_and_paginates(client: TestClient) -> None:
    body = client.get(f"{API}/dags").json()
    assert body["total_entries"] == 2
    assert [d["dag_id"] for d in body["dags"]] == ["etl", "other"]
    assert body["dags"][0]["last_run_state"] == "failed"
    page = client.get(f"{API}/dags", params={"limit": 1, "offset": 1}).json()
    assert [d["dag_id"] for d in page["dags"]] == ["other"] and page["total_entries"] == 2
    paused = client.get(f"{API}/dags", params={"paused": "true"}).json()
    assert [d["dag_id"] for d in paused["dags"]] == ["other"]
    tagged = client.get(f"{API}/dags", params={"tags": ["team-a"]}).json()
    assert [d["dag_id"] for d in tagged["dags"]] == ["etl"]
    assert client.get(f"{API}/dags", params={"limit": 0}).status_code == 422


def test_dag_details_tasks_and_pause(client: TestClient) -> None:
    detail = client.get(f"{API}/dags/etl").json()
    assert detail["schedule"]["kind"] == "none"
    assert detail["params"]["n"] == {
        "value": 3,
        "has_default": True,
        "schema": {"type": "integer", "minimum": 1},
        "description": None,
    }
    assert [t["task_id"] for t in detail["tasks"]] == ["extract", "transform", "load", "report"]
    tasks = client.get(f"{API}/dags/etl/tasks").json()
    assert tasks["total_entries"] == 4 and tasks["tasks"][1]["upstream_task_ids"] == ["extract"]
    missing = client.get(f"{API}/dags/nope")
    assert missing.status_code == 404 and "'nope'" in missing.json()["detail"]
    assert client.get(f"{API}/dags/nope/tasks").status_code == 404
    patched = client.patch(f"{API}/dags/other", json={"is_paused": False})
    assert patched.status_code == 200 and patched.json()["is_paused"] is False
    bad = client.patch(f"{API}/dags/other", json={"paused": False})
    assert bad.status_code == 422
    assert client.patch(f"{API}/dags/nope", json={"is_paused": True}).status_code == 404


def test_trigger_run_and_its_errors(client: TestClient) -> None:
    created = client.post(f"{API}/dags/etl/dagRuns", json={"conf": {"n": 5}, "dag_run_id": "mine"})
    assert created.status_code == 200, created.text
    run = created.json()
    assert run["dag_run_id"] == "mine" and run["state"] == "queued"
    assert run["logical_date"] is None and run["params"] == {"n": 5}
    dup = client.post(f"{API}/dags/etl/dagRuns", json={"dag_run_id": "mine"})
    assert dup.status_code == 409 and "mine" in dup.json()["detail"]
    invalid = client.post(f"{API}/dags/etl/dagRuns", json={"conf": {"n": 0}})
    assert invalid.status_code == 422
    assert invalid.json()["detail"][0]["loc"] == ["body", "conf", "n"]
    not_object = client.post(f"{API}/dags/etl/dagRuns", json={"conf": [1]})
    assert not_object.status_code == 422 and not_object.json()["detail"][0]["loc"] == [
        "body",
        "conf",
    ]
    naive = client.post(f"{API}/dags/etl/dagRuns", json={"logical_date": "2026-01-01T00:00:00"})
    assert naive.status_code == 422 and naive.json()["detail"][0]["loc"] == ["body", "logical_date"]
    assert client.post(f"{API}/dags/nope/dagRuns", json={}).status_code == 404
    dated = client.post(f"{API}/dags/etl/dagRuns", json={"logical_date": "2026-01-01T00:00:00Z"})
    assert dated.json()["logical_date"] == "2026-01-01T00:00:00Z"


def test_runs_list_get_and_cancel(client: TestClient) -> None:
    client.post(f"{API}/dags/etl/dagRuns", json={"dag_run_id": "r2"})
    runs = client.get(f"{API}/dags/etl/dagRuns").json()
    assert runs["total_entries"] == 2
    assert {r["dag_run_id"] for r in runs["dag_runs"]} == {"r1", "r2"}
    assert (
        client.get(f"{API}/dags/etl/dagRuns", params={"state": "queued"}).json()["total_entries"]
        == 1
    )
    assert client.get(f"{API}/dags/etl/dagRuns/r2").json()["state"] == "queued"
    gone = client.get(f"{API}/dags/etl/dagRuns/zzz")
    assert gone.status_code == 404 and "'zzz'" in gone.json()["detail"]
    assert client.get(f"{API}/dags/nope/dagRuns").status_code == 404
    cancelled = client.patch(f"{API}/dags/etl/dagRuns/r2", json={"state": "failed"})
    assert cancelled.json()["state"] == "failed"
    tis = client.get(f"{API}/dags/etl/dagRuns/r2/taskInstances").json()["task_instances"]
    assert {ti["state"] for ti in tis} == {"skipped"}
    assert client.patch(f"{API}/dags/etl/dagRuns/r2", json={"state": "running"}).status_code == 422


def test_task_instances_get_mark_and_clear(client: TestClient) -> None:
    listed = client.get(f"{API}/dags/etl/dagRuns/r1/taskInstances").json()
    assert [ti["task_id"] for ti in listed["task_instances"]] == [
        "extract",
        "transform",
        "load",
        "report",
    ]
    one = client.get(f"{API}/dags/etl/dagRuns/r1/taskInstances/transform").json()
    assert one["state"] == "failed" and one["try_number"] == 1
    assert one["tries"][0]["try_number"] == 1 and one["error"] == "boom"
    assert client.get(f"{API}/dags/etl/dagRuns/r1/taskInstances/nope").status_code == 404
    preview = client.post(f"{API}/dags/etl/clearTaskInstances", json={"dag_run_id": "r1"})
    assert {ti["task_id"] for ti in preview.json()["task_instances"]} == {"transform", "load"}
    still = client.get(f"{API}/dags/etl/dagRuns/r1/taskInstances/transform").json()
    assert still["state"] == "failed"  # dry_run defaults to true, as in Airflow
    marked = client.patch(
        f"{API}/dags/etl/dagRuns/r1/taskInstances/transform", json={"new_state": "success"}
    )
    assert [ti["task_id"] for ti in marked.json()["task_instances"]] == ["transform"]
    load = client.get(f"{API}/dags/etl/dagRuns/r1/taskInstances/load").json()
    assert load["state"] is None  # failed downstream cleared by the mark
    bad_state = client.patch(
        f"{API}/dags/etl/dagRuns/r1/taskInstances/load", json={"new_state": "running"}
    )
    assert bad_state.status_code == 422
    cleared = client.post(
        f"{API}/dags/etl/clearTaskInstances",
        json={"dag_run_id": "r1", "task_ids": ["extract"], "only_failed": False, "dry_run": False},
    )
    assert [ti["task_id"] for ti in cleared.json()["task_instances"]] == ["extract"]
    assert client.get(f"{API}/dags/etl/dagRuns/r1").json()["state"] == "queued"
    unknown = client.post(
        f"{API}/dags/etl/clearTaskInstances", json={"dag_run_id": "r1", "task_ids": ["zz"]}
    )
    assert unknown.status_code == 404 and "'zz'" in unknown.json()["detail"]


def test_import_errors(client: TestClient) -> None:
    body = client.get(f"{API}/importErrors").json()
    assert body["total_entries"] == 1
    assert body["import_errors"][0]["filename"] == "/dags/bad.py"
    assert "SyntaxError" in body["import_errors"][0]["stack_trace"]
    assert body["import_errors"][0]["stacktrace"] == body["import_errors"][0]["stack_trace"]


def _log_file(task_id: str, try_number: int = 1) -> str:
    path = log_path(get_settings().log_folder, TryKey("etl", "r1", task_id, try_number))
    path.parent.mkdir(parents=True, exist_ok=True)
    return str(path)


def test_log_as_text_and_missing_logs(client: TestClient) -> None:
    with open(_log_file("transform"), "w") as fh:
        fh.write("line one\nline two\n")
    url = f"{API}/dags/etl/dagRuns/r1/taskInstances/transform/logs"
    text = client.get(f"{url}/1")
    assert text.status_code == 200 and text.text == "line one\nline two\n"
    assert text.headers["content-type"].startswith("text/plain")
    assert client.get(f"{url}/2").status_code == 404  # no second try
    missing = client.get(f"{API}/dags/etl/dagRuns/r1/taskInstances/extract/logs/1")
    assert missing.status_code == 404 and "no log" in missing.json()["detail"]


def test_log_follow_streams_until_the_try_ends(client: TestClient, sqlite_engine: Engine) -> None:
    with Session(sqlite_engine) as session:
        ti = session.query(TaskInstance).filter_by(task_id="extract").one()
        ti.state = "running"
        session.commit()
    path = _log_file("extract")
    with open(path, "w") as fh:
        fh.write("started\n")

    def finish_later() -> None:
        time.sleep(0.3)
        with open(path, "a") as fh:
            fh.write("finished\n")
        with Session(sqlite_engine) as session:
            session.query(TaskInstance).filter_by(task_id="extract").update({"state": "success"})
            session.commit()

    writer = threading.Thread(target=finish_later)
    writer.start()
    url = f"{API}/dags/etl/dagRuns/r1/taskInstances/extract/logs/1?follow=true"
    with client.stream("GET", url) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        body = "".join(response.iter_text())
    writer.join()
    data = [ln[len("data: ") :] for ln in body.splitlines() if ln.startswith("data: ")]
    assert "started" in data and "finished" in data
    assert body.rstrip().endswith("event: end\ndata: success")


# --- run ids: the rules, and a crafted one cannot reach outside the log folder --------------


@pytest.mark.parametrize(
    ("run_id", "rule"),
    [
        ("../../../x", "'/'"),
        ("a\\b", "'\\\\'"),
        ("..", "'..'"),
        ("a\nb", "line breaks"),
        ("a\x07b", "control characters"),
        (" padded ", "whitespace"),
        ("x" * 249, "at most 248 bytes"),
        ("scheduled__2026-01-01T00:00:00+00:00", "reserved"),
        ("backfill__x", "reserved"),
        ("asset_triggered__x", "reserved"),
    ],
)
def test_trigger_refuses_a_bad_run_id_with_422_naming_the_rule(
    client: TestClient, run_id: str, rule: str
) -> None:
    response = client.post(f"{API}/dags/etl/dagRuns", json={"dag_run_id": run_id})
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "dag_run_id"] and rule in error["msg"]
    assert client.get(f"{API}/dags/etl/dagRuns").json()["total_entries"] == 1  # only r1


def test_trigger_refuses_empty_and_overlong_run_ids(client: TestClient) -> None:
    for run_id in ("", "x" * 251):
        response = client.post(f"{API}/dags/etl/dagRuns", json={"dag_run_id": run_id})
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["body", "dag_run_id"]


def test_a_crafted_run_id_cannot_make_the_log_reader_leave_the_log_folder(
    client: TestClient, sqlite_engine: Engine
) -> None:
    """A run stored with a traversing id (as before run ids were checked) and a file
    planted where that id points: the reader answers 404 and never opens the file."""
    log_folder = Path(get_settings().log_folder)
    crafted = "../../../../outside"
    planted = log_folder / "dag_id=etl" / f"run_id={crafted}" / "task_id=extract" / "attempt=1.log"
    planted.parent.mkdir(parents=True, exist_ok=True)
    planted.write_text("SECRET outside the log folder\n")
    assert not planted.resolve().is_relative_to(log_folder.resolve())
    with Session(sqlite_engine) as session:
        dag = session.get(DagModel, "etl")
        assert dag is not None
        add_run(session, dag, crafted, {"extract": "success"}, run_state="success")
        session.commit()
    quoted = crafted.replace("/", "%2F")
    url = f"{API}/dags/etl/dagRuns/{quoted}/taskInstances/extract/logs/1"
    for follow in ("false", "true"):  # over HTTP the id cannot even be addressed
        response = client.get(url, params={"follow": follow})
        assert response.status_code == 404, response.text
        assert "SECRET" not in response.text
    with pytest.raises(UnsafeLogPath):
        log_path(log_folder, TryKey("etl", crafted, "extract", 1))
    # The reader's own guard, called as the route would with that id.
    from ketch.logs.access import LogAccess
    from ketch.logs.reader import LogUnavailable

    reader = LogAccess(get_settings()).reader()
    for live in (False, True):
        with pytest.raises(LogUnavailable) as refused:
            reader.best(TryKey("etl", crafted, "extract", 1), live)
        assert refused.value.status == 404
        assert "cannot name a file inside the log folder" in str(refused.value)


def test_a_log_file_symlinked_out_of_the_log_folder_is_not_served(
    client: TestClient, ketch_home: Path
) -> None:
    """A try that replaced its log with a symlink to a server file cannot read it back."""
    secret = ketch_home / "session_secret_like"
    secret.write_text("SECRET\n")
    link = Path(_log_file("transform"))
    link.symlink_to(secret)
    url = f"{API}/dags/etl/dagRuns/r1/taskInstances/transform/logs/1"
    for follow in ("false", "true"):
        response = client.get(url, params={"follow": follow})
        assert "SECRET" not in response.text
    assert client.get(url).status_code == 404


# --- numbers beyond the database, documented statuses, OPTIONS ------------------------------

HUGE = 99999999999999999999  # beyond 64 bits: SQLite cannot bind it, PostgreSQL refuses it


@pytest.mark.parametrize(
    ("method", "url", "body"),
    [
        ("GET", f"{API}/dags?offset={HUGE}", None),
        ("GET", f"{API}/dags/etl/dagRuns?offset={HUGE}", None),
        ("GET", f"{API}/importErrors?offset={HUGE}", None),
        ("GET", f"{API}/pools?offset={HUGE}", None),
        ("GET", f"{API}/variables?offset={HUGE}", None),
        ("GET", f"{API}/connections?offset={HUGE}", None),
        ("GET", f"{API}/auditLog?offset={HUGE}", None),
        ("GET", f"{API}/auditLog?offset={2**31}", None),
        ("GET", f"{API}/dags?limit={HUGE}", None),
        ("GET", f"{API}/dags/etl/dagRuns/r1/taskInstances/transform/logs/{HUGE}", None),
        ("GET", f"{API}/dags/etl/dagRuns/r1/taskInstances/transform/logs/{2**31}", None),
        ("DELETE", f"{API}/tokens/{HUGE}", None),
        ("PUT", f"{API}/pools/big", {"slots": HUGE}),
        ("PUT", f"{API}/pools/big", {"slots": 2**31}),
        ("POST", f"{API}/tokens", {"name": "t", "role": "viewer", "expires_in_days": HUGE}),
        ("PUT", f"{API}/connections/c", {"conn_type": "http", "port": HUGE}),
    ],
)
def test_numbers_beyond_the_database_are_422(
    client: TestClient, method: str, url: str, body: dict | None
) -> None:
    response = client.request(method, url, json=body)
    assert response.status_code == 422, response.text


def test_the_largest_stored_numbers_are_fine(client: TestClient) -> None:
    assert client.get(f"{API}/auditLog", params={"offset": 2**31 - 1}).status_code == 200
    pool = client.put(f"{API}/pools/big", json={"slots": 2**31 - 1})
    assert pool.status_code == 200 and pool.json()["slots"] == 2**31 - 1


def test_a_lone_surrogate_in_a_body_is_422_not_500(client: TestClient) -> None:
    headers = {"content-type": "application/json"}
    for url, body in [
        (f"{API}/pools/p", b'{"slots": 1, "description": "\\ud800"}'),
        (f"{API}/variables/v", b'{"value": "\\udfff"}'),
        (f"{API}/dags/etl/dagRuns", b'{"dag_run_id": "r\\ud800"}'),
        (f"{API}/tokens", b'{"name": "\\ud800", "role": "viewer"}'),
    ]:
        method = "POST" if url.endswith(("dagRuns", "tokens")) else "PUT"
        response = client.request(method, url, content=body, headers=headers)
        assert response.status_code == 422, (url, response.text)


def _operations(spec: dict) -> list[tuple[str, str, dict]]:
    return [
        (path, method, op)
        for path, item in spec["paths"].items()
        if path.startswith(API)
        for method, op in item.items()
    ]


def test_every_rest_operation_documents_auth_and_outage_statuses(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    for path, method, op in _operations(spec):
        assert {"401", "403", "503"} <= set(op["responses"]), (method, path)
    metrics = spec["paths"]["/metrics"]["get"]["responses"]
    assert {"401", "403", "503"} <= set(metrics)


@pytest.mark.parametrize(
    ("method", "path", "statuses"),
    [
        ("get", "/dags/{dag_id}", {"404"}),
        (
            "get",
            "/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/xcomEntries/{xcom_key}",
            {"404", "422"},
        ),
        ("patch", "/dags/{dag_id}", {"400", "404", "422"}),
        ("post", "/dags/{dag_id}/dagRuns", {"400", "404", "409", "422"}),
        ("patch", "/dags/{dag_id}/dagRuns/{dag_run_id}", {"404", "422"}),
        ("post", "/dags/{dag_id}/clearTaskInstances", {"404", "422"}),
        (
            "get",
            "/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/logs/{try_number}",
            {"404", "422"},
        ),
        ("delete", "/pools/{pool_name}", {"400", "404"}),
        ("post", "/variables", {"409"}),
        ("post", "/connections", {"409"}),
        ("get", "/connections/{conn_id}", {"404"}),
        ("delete", "/tokens/{token_id}", {"404", "422"}),
        ("patch", "/users/{email}", {"404"}),
    ],
)
def test_operations_document_their_own_errors(
    client: TestClient, method: str, path: str, statuses: set[str]
) -> None:
    spec = client.get("/openapi.json").json()
    responses = spec["paths"][API + path][method]["responses"]
    assert statuses <= set(responses)
    for status in statuses - {"422"}:
        schema = responses[status]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ErrorResponse"}


def test_options_and_unlisted_methods_are_405_allowing_what_the_spec_lists(
    client: TestClient,
) -> None:
    spec = client.get("/openapi.json").json()
    fill = {"{dag_id}": "etl", "{dag_run_id}": "r1", "{task_id}": "extract"}
    fill |= {"{try_number}": "1", "{pool_name}": "default_pool", "{key}": "k"}
    fill |= {"{conn_id}": "c", "{token_id}": "1", "{email}": "a@example.com"}
    fill |= {"{xcom_key}": "return_value", "{map_index}": "0"}
    for path, item in spec["paths"].items():
        if not path.startswith(API):
            continue
        url = path
        for name, value in fill.items():
            url = url.replace(name, value)
        listed = {m.upper() for m in item}
        for method in {"OPTIONS", "GET", "PUT", "POST", "DELETE", "PATCH"} - listed:
            response = client.request(method, url)
            assert response.status_code == 405, (method, url, response.text)
            allow = {m.strip() for m in response.headers["allow"].split(",")} - {"HEAD"}
            assert allow == listed, (method, url)


def test_a_path_of_its_own_is_not_a_variable_or_connection_name(client: TestClient) -> None:
    """/variables/syncStatus, /variables/import and /connections/import are paths of their
    own (OpenAPI: a concrete path before a template): other methods are 405."""
    for method, url, allow in [
        ("PUT", f"{API}/variables/syncStatus", "GET"),
        ("DELETE", f"{API}/variables/syncStatus", "GET"),
        ("GET", f"{API}/variables/import", "POST"),
        ("PUT", f"{API}/variables/import", "POST"),
        ("GET", f"{API}/connections/import", "POST"),
        ("DELETE", f"{API}/connections/import", "POST"),
    ]:
        response = client.request(method, url, json={"value": "x"})
        assert response.status_code == 405, (method, url, response.text)
        assert response.headers["allow"] == allow
    assert client.get(f"{API}/variables/syncStatus").status_code == 200


def test_the_task_instance_list_carries_each_try_history_from_one_query(
    client: TestClient, sqlite_engine: Engine
) -> None:
    statements: list[str] = []

    def record(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        statements.append(statement)

    event.listen(Engine, "before_cursor_execute", record)
    try:
        listed = client.get(f"{API}/dags/etl/dagRuns/r1/taskInstances").json()
    finally:
        event.remove(Engine, "before_cursor_execute", record)
    tries = {ti["task_id"]: ti["tries"] for ti in listed["task_instances"]}
    assert [t["try_number"] for t in tries["transform"]] == [1]
    assert tries["transform"][0]["state"] == "failed"
    assert tries["report"] == []  # never tried: an empty history, not null
    assert len([s for s in statements if "FROM task_instance_try" in s]) == 1
    # Marking and clearing answer with the same shape.
    marked = client.patch(
        f"{API}/dags/etl/dagRuns/r1/taskInstances/extract", json={"new_state": "failed"}
    ).json()
    assert [t["try_number"] for t in marked["task_instances"][0]["tries"]] == [1]


@pytest.fixture
def xcoms(client: TestClient, sqlite_engine: Engine) -> TestClient:
    with Session(sqlite_engine) as session:
        run_pk = session.scalars(select(DagRun.id).where(DagRun.run_id == "r1")).one()
        stamp = datetime(2026, 3, 1, 12, 5, tzinfo=UTC)
        date_value = {"__classname__": "datetime.date", "__version__": 2, "__data__": "2026-03-01"}
        for task_id, key, value in [
            ("extract", "return_value", date_value),
            ("extract", "__branch__", ["transform"]),
            ("transform", "return_value", None),
        ]:
            session.add(
                XCom(dag_run_id=run_pk, task_id=task_id, key=key, value=value, timestamp=stamp)
            )
        session.commit()
    return client


XCOMS = f"{API}/dags/etl/dagRuns/r1/taskInstances/extract/xcomEntries"


def test_xcom_entries_are_listed_as_airflow_lists_them(xcoms: TestClient) -> None:
    body = xcoms.get(XCOMS).json()
    assert body["total_entries"] == 2
    assert body["xcom_entries"] == [
        {
            "key": key,
            "timestamp": "2026-03-01T12:05:00Z",
            "logical_date": None,
            "map_index": -1,
            "task_id": "extract",
            "dag_id": "etl",
            "run_id": "r1",
            "dag_display_name": "etl",
            "task_display_name": "extract",
        }
        for key in ("__branch__", "return_value")  # no values in the list, as in Airflow
    ]
    page = xcoms.get(XCOMS, params={"limit": 1, "offset": 1}).json()
    assert [e["key"] for e in page["xcom_entries"]] == ["return_value"]
    assert page["total_entries"] == 2
    only = xcoms.get(XCOMS, params={"xcom_key": "return_value"}).json()
    assert [e["key"] for e in only["xcom_entries"]] == ["return_value"]
    assert xcoms.get(XCOMS, params={"map_index": 0}).json()["total_entries"] == 0
    everything = xcoms.get(f"{API}/dags/~/dagRuns/~/taskInstances/~/xcomEntries").json()
    assert [(e["task_id"], e["key"]) for e in everything["xcom_entries"]] == [
        ("extract", "__branch__"),
        ("extract", "return_value"),
        ("transform", "return_value"),
    ]
    # As Airflow: an unknown run or task has no entries (not a 404).
    unknown = xcoms.get(f"{API}/dags/etl/dagRuns/nope/taskInstances/extract/xcomEntries")
    assert unknown.status_code == 200 and unknown.json() == {"xcom_entries": [], "total_entries": 0}


def test_an_xcom_entry_carries_its_value_as_stored(xcoms: TestClient) -> None:
    entry = xcoms.get(f"{XCOMS}/return_value").json()
    assert entry["value"] == {
        "__classname__": "datetime.date",
        "__version__": 2,
        "__data__": "2026-03-01",
    }
    assert entry["key"] == "return_value" and entry["map_index"] == -1
    none = xcoms.get(f"{API}/dags/etl/dagRuns/r1/taskInstances/transform/xcomEntries/return_value")
    assert none.status_code == 200 and none.json()["value"] is None  # it returned None
    missing = xcoms.get(f"{API}/dags/etl/dagRuns/r1/taskInstances/load/xcomEntries/return_value")
    assert missing.status_code == 404
    assert missing.json()["detail"] == (
        "XCom entry with key 'return_value' of task 'load' in run 'r1' not found"
    )
    assert xcoms.get(f"{XCOMS}/return_value", params={"map_index": 0}).status_code == 404
    no_run = xcoms.get(f"{API}/dags/etl/dagRuns/nope/taskInstances/extract/xcomEntries/k")
    assert no_run.status_code == 404 and "'nope'" in no_run.json()["detail"]
