"""Clearing a mapped task group's upstream when it now returns a list of another length:
real ``ketch standalone``, real tries, SQLite and PostgreSQL, local executor. Every task of
the group (the root ``load`` and the chained ``check``) must follow the new length, as a
plain mapped task does (tests/integration/test_mapping_revision.py): missing map indexes
created, extra ones ``removed``, each live instance run on its own element, and the reduce
after the group given the live values in map_index order."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select

from ketch.db.models import TaskInstance, XCom
from ketch.worker.serde import decode
from tests.support.ketch_process import Api, KetchEnv, running, wait_for

DAG_ID = "revise_group"
DAG_SOURCE = """
import json
import os
from datetime import datetime, timezone

from ketch import dag, get_current_context, task, task_group

CONTROL = os.environ["E2E_CONTROL"]


def _note(task_id, value):
    i = get_current_context()["map_index"]
    with open(os.path.join(CONTROL, f"{task_id}.{i}"), "a") as f:
        f.write(json.dumps(value) + "\\n")


@dag(schedule=None, start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
     is_paused_upon_creation=False)
def revise_group():
    @task
    def files():
        with open(os.path.join(CONTROL, "files")) as f:
            return json.load(f)

    @task
    def load(path):
        _note("load", path)
        return path.upper()

    @task
    def check(loaded):
        _note("check", loaded)
        return f"{loaded}#{get_current_context()['map_index']}"

    @task
    def report(values):
        return list(values)

    @task_group
    def per_file(path):
        return check(load(path))

    report(per_file.expand(path=files()))


revise_group()
"""

GROUP_TASKS = ("per_file.load", "per_file.check")


def _env(ketch_home: Path, db_url: str, tmp_path: Path) -> KetchEnv:
    dags, control = tmp_path / "dags", tmp_path / "control"
    dags.mkdir()
    control.mkdir()
    (dags / "revise_group.py").write_text(DAG_SOURCE)
    return KetchEnv(
        home=ketch_home, db_url=db_url, dags_folder=dags, extra={"E2E_CONTROL": str(control)}
    )


def _set_files(env: KetchEnv, files: list[str]) -> None:
    (Path(env.extra["E2E_CONTROL"]) / "files").write_text(json.dumps(files))


def _runs(env: KetchEnv, task: str) -> dict[int, list[str]]:
    """What each map index of ``task`` ran on, one entry per try."""
    control = Path(env.extra["E2E_CONTROL"])
    return {
        int(p.name.split(".")[1]): [json.loads(line) for line in p.read_text().splitlines()]
        for p in control.glob(f"{task}.*")
    }


def _read(
    db_url: str, run_id: str
) -> tuple[dict[str, dict[int, str | None]], dict[str, dict[int, Any]]]:
    """(task_id -> map_index -> state, task_id -> map_index -> return value) of the run."""
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            tis = conn.execute(
                select(
                    TaskInstance.task_id,
                    TaskInstance.map_index,
                    TaskInstance.state,
                    TaskInstance.dag_run_id,
                ).where(TaskInstance.run_id == run_id)
            ).all()
            xcoms = conn.execute(
                select(XCom.task_id, XCom.map_index, XCom.value).where(
                    XCom.dag_run_id.in_({ti.dag_run_id for ti in tis}),
                    XCom.key == "return_value",
                )
            ).all()
    finally:
        engine.dispose()
    states: dict[str, dict[int, str | None]] = {}
    for ti in tis:
        states.setdefault(ti.task_id, {})[ti.map_index] = ti.state
    values: dict[str, dict[int, Any]] = {}
    for x in xcoms:
        values.setdefault(x.task_id, {})[x.map_index] = decode(x.value)
    return states, values


def _clear(api: Api, run_id: str, task_id: str) -> None:
    r = api.http.post(
        f"/api/v1/dags/{DAG_ID}/clearTaskInstances",
        json={
            "dag_run_id": run_id,
            "task_ids": [task_id],
            "include_downstream": True,
            "dry_run": False,
            "only_failed": False,
        },
    )
    assert r.status_code == 200, r.text


def _rerun(api: Api, db_url: str, run_id: str, task_id: str) -> None:
    _clear(api, run_id, task_id)
    run = api.wait_run_finished(DAG_ID, run_id, 120)
    assert run["state"] == "success", _read(db_url, run_id)[0]


def _expect(db_url: str, run_id: str, files: list[str], rows: int) -> dict[str, dict[int, Any]]:
    """Every group task has len(files) live instances (the rest of ``rows`` removed), each
    on its own element, check[i] on load[i]'s value; report has the live values in order."""
    states, values = _read(db_url, run_id)
    live = len(files)
    expected = {i: "success" if i < live else "removed" for i in range(rows)}
    for task in GROUP_TASKS:
        assert states[task] == expected, (task, states)
        assert sorted(values.get(task, {})) == list(range(live)), (task, values)
    assert values["per_file.load"] == {i: f.upper() for i, f in enumerate(files)}
    assert values["per_file.check"] == {i: f"{f.upper()}#{i}" for i, f in enumerate(files)}
    assert values["report"] == {-1: [f"{f.upper()}#{i}" for i, f in enumerate(files)]}
    assert states["report"] == {-1: "success"}
    return values


# PostgreSQL only: the revision of a plain mapped task runs on both (test_mapping_revision.py)
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_cleared_mapped_group_follows_the_new_length(
    ketch_home: Path, db_url: str, tmp_path: Path
) -> None:
    env = _env(ketch_home, db_url, tmp_path)
    with running(env, "standalone"):
        api = Api(env.base_url)
        wait_for(api.healthy, 60, 0.05, "web server")
        wait_for(lambda: api.dag(DAG_ID), 60, 0.1, f"{DAG_ID} parsed")
        _set_files(env, ["a", "b", "c"])
        run_id = str(api.trigger(DAG_ID)["dag_run_id"])
        assert api.wait_run_finished(DAG_ID, run_id, 120)["state"] == "success"
        _expect(db_url, run_id, ["a", "b", "c"], 3)

        # A longer list: instances 3 and 4 of both group tasks are created and run.
        _set_files(env, ["d", "e", "f", "g", "h"])
        _rerun(api, db_url, run_id, "files")
        _expect(db_url, run_id, ["d", "e", "f", "g", "h"], 5)
        assert _runs(env, "load") == {
            0: ["a", "d"],
            1: ["b", "e"],
            2: ["c", "f"],
            3: ["g"],
            4: ["h"],
        }
        assert _runs(env, "check") == {
            0: ["A", "D"],
            1: ["B", "E"],
            2: ["C", "F"],
            3: ["G"],
            4: ["H"],
        }

        # A shorter list: 2..4 of both group tasks are removed and do not run again.
        _set_files(env, ["i", "j"])
        _rerun(api, db_url, run_id, "files")
        _expect(db_url, run_id, ["i", "j"], 5)
        assert _runs(env, "check") == {
            0: ["A", "D", "I"],
            1: ["B", "E", "J"],
            2: ["C", "F"],
            3: ["G"],
            4: ["H"],
        }

        # The same length: every live instance runs again, the removed ones stay removed.
        _set_files(env, ["k", "l"])
        _rerun(api, db_url, run_id, "files")
        _expect(db_url, run_id, ["k", "l"], 5)
        assert _runs(env, "load") == {
            0: ["a", "d", "i", "k"],
            1: ["b", "e", "j", "l"],
            2: ["c", "f"],
            3: ["g"],
            4: ["h"],
        }

        # Clearing only the chained task (its upstreams unchanged, though the file would
        # now give three): its live instances run again on load's values, the count kept.
        _set_files(env, ["m", "n", "o"])
        _rerun(api, db_url, run_id, "per_file.check")
        _expect(db_url, run_id, ["k", "l"], 5)
        assert _runs(env, "check") == {
            0: ["A", "D", "I", "K", "K"],
            1: ["B", "E", "J", "L", "L"],
            2: ["C", "F"],
            3: ["G"],
            4: ["H"],
        }
        assert _runs(env, "load")[0] == ["a", "d", "i", "k"]

        # Back to a longer list: removed instances within the new length run again.
        _rerun(api, db_url, run_id, "files")
        _expect(db_url, run_id, ["m", "n", "o"], 5)
        assert _runs(env, "check")[2] == ["C", "F", "O"]
