"""Pools: operations on both backends, the REST endpoints and the ``ketch pools`` commands."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from click.testing import CliRunner, Result
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from ketch import cli, operations
from ketch.api.app import create_app
from ketch.config import get_settings
from ketch.db.models import DEFAULT_POOL_NAME, DEFAULT_POOL_SLOTS, Pool, TaskInstance
from tests.support.web import local_client
from tests.unit.test_operations import add_dag, add_run, serialized_chain

API = "/api/v1"


def seed_usage(session: Session) -> None:
    """Pool "etl" (4 slots) with running 2 + queued 1 slots, 3 scheduled slots (not
    occupied), and finished or unscheduled TIs that take nothing; default_pool has a
    running TI of 1 slot."""
    session.add(Pool(pool="etl", slots=4, description="ETL jobs"))
    dag = add_dag(session, serialized_chain())
    run = add_run(
        session,
        dag,
        "r1",
        {"extract": "running", "transform": "queued", "load": "scheduled", "report": "success"},
    )
    other = add_run(
        session, dag, "r2", {"extract": "running", "transform": None, "load": None, "report": None}
    )
    layout = {
        (run.id, "extract"): ("etl", 2),
        (run.id, "transform"): ("etl", 1),
        (run.id, "load"): ("etl", 3),
        (run.id, "report"): ("etl", 5),
        (other.id, "transform"): ("etl", 7),
    }
    for ti in session.scalars(select(TaskInstance)):
        ti.pool, ti.pool_slots = layout.get((ti.dag_run_id, ti.task_id), (DEFAULT_POOL_NAME, 1))
    session.flush()


# --- operations (SQLite and PostgreSQL) ----------------------------------------------------------


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    with Session(engine, expire_on_commit=False) as s:
        yield s


def test_list_pools_counts_queued_and_running_slots(session: Session) -> None:
    seed_usage(session)
    pools = {p.name: p for p in operations.list_pools(session)}
    assert list(pools) == [DEFAULT_POOL_NAME, "etl"]  # by name
    etl = pools["etl"]
    assert (etl.pool.slots, etl.running_slots, etl.queued_slots) == (4, 2, 1)
    assert (etl.occupied_slots, etl.open_slots, etl.scheduled_slots) == (3, 1, 3)
    default = pools[DEFAULT_POOL_NAME]
    assert default.pool.slots == DEFAULT_POOL_SLOTS and default.occupied_slots == 1
    assert default.open_slots == DEFAULT_POOL_SLOTS - 1
    assert operations.get_pool(session, "etl").occupied_slots == 3


def test_set_pool_creates_updates_and_may_leave_open_slots_negative(
    session: Session,
) -> None:
    seed_usage(session)
    hooks: list[int] = []
    hook = lambda: hooks.append(1)  # noqa: E731
    operations.on_change.append(hook)
    try:
        created = operations.set_pool(session, "new", 5, "fresh")
        assert hooks == []  # not before the commit
        session.commit()
    finally:
        operations.on_change.remove(hook)
    assert hooks == [1]  # the scheduler is woken: more slots may start tasks
    assert (created.pool.slots, created.pool.description, created.open_slots) == (5, "fresh", 5)
    shrunk = operations.set_pool(session, "etl", 2)  # below the 3 occupied slots
    session.commit()
    assert shrunk.pool.description == "ETL jobs"  # None keeps the description
    assert (shrunk.pool.slots, shrunk.occupied_slots, shrunk.open_slots) == (2, 3, -1)
    operations.set_pool(session, "etl", 0, "paused pool")
    session.commit()
    assert session.get(Pool, "etl").description == "paused pool"
    assert operations.get_pool(session, "etl").pool.slots == 0


@pytest.mark.parametrize(
    ("name", "slots", "field"),
    [
        ("", 1, "name"),
        ("   ", 1, "name"),
        ("x" * 257, 1, "name"),
        ("p", -1, "slots"),
        ("p", True, "slots"),
        ("p", 1.5, "slots"),
    ],
)
def test_set_pool_rejects_bad_values(
    sqlite_engine: Engine, name: str, slots: object, field: str
) -> None:
    with Session(sqlite_engine) as session:
        with pytest.raises(operations.InvalidRequest) as err:
            operations.set_pool(session, name, slots, None)  # type: ignore[arg-type]
        assert err.value.field == field
        assert list(session.scalars(select(Pool.pool))) == [DEFAULT_POOL_NAME]


def test_delete_pool_refuses_default_and_unknown(session: Session) -> None:
    operations.set_pool(session, "gone", 3)
    session.commit()
    operations.delete_pool(session, "gone")
    session.commit()
    assert session.get(Pool, "gone") is None
    with pytest.raises(operations.PoolNotFound, match="'gone'"):
        operations.delete_pool(session, "gone")
    with pytest.raises(operations.PoolNotFound, match="'nope'"):
        operations.get_pool(session, "nope")
    with pytest.raises(operations.DefaultPoolNotDeletable, match="cannot be deleted"):
        operations.delete_pool(session, DEFAULT_POOL_NAME)
    session.rollback()
    assert session.get(Pool, DEFAULT_POOL_NAME) is not None


# --- REST -----------------------------------------------------------------------------------


@pytest.fixture
def client(sqlite_engine: Engine) -> Iterator[TestClient]:
    with Session(sqlite_engine) as session:
        seed_usage(session)
        session.commit()
    with local_client(create_app(get_settings())) as c:
        yield c


def test_rest_list_and_get_pools(client: TestClient) -> None:
    body = client.get(f"{API}/pools").json()
    assert body["total_entries"] == 2
    assert [p["name"] for p in body["pools"]] == [DEFAULT_POOL_NAME, "etl"]
    etl = client.get(f"{API}/pools/etl").json()
    assert etl == {
        "name": "etl",
        "slots": 4,
        "description": "ETL jobs",
        "occupied_slots": 3,
        "running_slots": 2,
        "queued_slots": 1,
        "scheduled_slots": 3,
        "open_slots": 1,
    }
    page = client.get(f"{API}/pools", params={"limit": 1, "offset": 1}).json()
    assert [p["name"] for p in page["pools"]] == ["etl"] and page["total_entries"] == 2
    missing = client.get(f"{API}/pools/nope")
    assert missing.status_code == 404 and "'nope'" in missing.json()["detail"]


def test_rest_put_creates_and_updates(client: TestClient) -> None:
    created = client.put(f"{API}/pools/gpu", json={"slots": 2, "description": "GPUs"})
    assert created.status_code == 200, created.text
    assert created.json()["open_slots"] == 2 and created.json()["description"] == "GPUs"
    updated = client.put(f"{API}/pools/gpu", json={"slots": 6}).json()
    assert (updated["slots"], updated["description"]) == (6, "GPUs")
    assert client.get(f"{API}/pools/gpu").json()["slots"] == 6  # committed
    negative = client.put(f"{API}/pools/gpu", json={"slots": -1})
    assert negative.status_code == 422 and negative.json()["detail"][0]["loc"] == ["body", "slots"]
    assert client.put(f"{API}/pools/gpu", json={"slots": 1, "extra": 1}).status_code == 422
    assert client.put(f"{API}/pools/gpu", json={}).status_code == 422
    blank = client.put(f"{API}/pools/%20", json={"slots": 1})
    assert blank.status_code == 422 and blank.json()["detail"][0]["loc"] == ["body", "name"]
    assert client.get(f"{API}/pools/gpu").json()["slots"] == 6


def test_rest_delete(client: TestClient) -> None:
    deleted = client.delete(f"{API}/pools/etl")
    assert deleted.status_code == 204 and deleted.content == b""
    assert client.get(f"{API}/pools/etl").status_code == 404
    assert client.delete(f"{API}/pools/etl").status_code == 404
    default = client.delete(f"{API}/pools/{DEFAULT_POOL_NAME}")
    assert default.status_code == 400 and "cannot be deleted" in default.json()["detail"]
    assert client.get(f"{API}/pools/{DEFAULT_POOL_NAME}").status_code == 200


def test_rest_openapi_lists_pool_paths(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert set(paths[f"{API}/pools/{{pool_name}}"]) == {"get", "put", "delete"}


# --- CLI --------------------------------------------------------------------------------------


def ketch(*args: str) -> Result:
    return CliRunner().invoke(cli.cli, list(args), catch_exceptions=False)


@pytest.fixture
def db(sqlite_engine: Engine) -> Engine:
    with Session(sqlite_engine) as session:
        seed_usage(session)
        session.commit()
    return sqlite_engine


def test_cli_pools_list_table_and_json(db: Engine) -> None:
    table = ketch("pools", "list")
    assert table.exit_code == 0, table.output
    header, _rule, *rows = table.output.splitlines()
    assert header.split()[:4] == ["name", "slots", "occupied_slots", "open_slots"]
    assert rows[1].split()[:4] == ["etl", "4", "3", "1"]
    as_json = json.loads(ketch("pools", "list", "-o", "json").output)
    assert {p["name"]: p["open_slots"] for p in as_json} == {
        DEFAULT_POOL_NAME: DEFAULT_POOL_SLOTS - 1,
        "etl": 1,
    }


def test_cli_pools_set_and_delete(db: Engine) -> None:
    created = ketch("pools", "set", "gpu", "3", "--description", "GPUs")
    assert created.exit_code == 0 and "pool gpu created: 3 slots" in created.output
    updated = ketch("pools", "set", "gpu", "5")
    assert updated.exit_code == 0 and "pool gpu updated: 5 slots" in updated.output
    with Session(db) as session:
        row = session.get(Pool, "gpu")
        assert row is not None and (row.slots, row.description) == (5, "GPUs")
    negative = ketch("pools", "set", "gpu", "--", "-2")
    assert negative.exit_code == 1 and "slots: must be a whole number >= 0" in negative.output
    assert ketch("pools", "set", "gpu", "many").exit_code == 2  # click: not an integer
    deleted = ketch("pools", "delete", "gpu")
    assert deleted.exit_code == 0 and "pool gpu deleted" in deleted.output
    unknown = ketch("pools", "delete", "gpu")
    assert unknown.exit_code == 1 and "pool 'gpu' not found" in unknown.output
    default = ketch("pools", "delete", DEFAULT_POOL_NAME)
    assert default.exit_code == 1 and "cannot be deleted" in default.output
    with Session(db) as session:
        assert session.get(Pool, DEFAULT_POOL_NAME) is not None
