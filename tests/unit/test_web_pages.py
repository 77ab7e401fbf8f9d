"""The UI's pages through the app's test client: the DAGs list, a DAG's page and its grid
fragment, a task try's page, /static; who sees which action; anonymous is sent to sign in.

Callers carry a real signed session cookie (as after an OpenID Connect sign-in) for each
role, so the pages go through the same authentication as a browser's requests.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from httpx import Response
from itsdangerous import TimestampSigner
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from ketch import operations
from ketch.api.app import create_app
from ketch.auth.sessions import SESSION_COOKIE
from ketch.config import get_settings
from ketch.serialization import SerializedDag, SerializedParam, SerializedSchedule, SerializedTask
from ketch.web.format import duration, import_problem
from ketch.web.params_form import param_fields
from tests.support.web import remote_client
from tests.unit.test_operations import NOW, add_dag, add_run, serialized_chain

SESSION_SECRET = "web-pages-test-session-secret-" * 2
ROLES = ("viewer", "user", "op", "admin")


def _cookie(role: str) -> str:
    now = int(time.time())
    data = {
        "user": {
            "email": f"{role}@corp.com",
            "name": role,
            "role": role,
            "hd": "corp.com",
            "iat": now,
            "seen": now,
            "checked": now,
        },
        "csrf": f"csrf-{role}",
    }
    return (
        TimestampSigner(SESSION_SECRET).sign(base64.b64encode(json.dumps(data).encode())).decode()
    )


@dataclass
class Web:
    client: TestClient
    engine: Engine

    def get(self, path: str, role: str | None = "viewer", **kwargs: object) -> Response:
        self.client.cookies.clear()
        if role is not None:
            self.client.cookies.set(SESSION_COOKIE, _cookie(role))
        return self.client.get(path, follow_redirects=False, **kwargs)  # type: ignore[arg-type]

    def send(self, method: str, path: str, role: str, body: object) -> Response:
        self.client.cookies.clear()
        self.client.cookies.set(SESSION_COOKIE, _cookie(role))
        return self.client.request(
            method, path, json=body, headers={"X-CSRF-Token": f"csrf-{role}"}
        )


def _web(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[Web]:
    monkeypatch.setenv("KETCH__AUTH__OIDC_CLIENT_ID", "ketch-test")
    monkeypatch.setenv("KETCH__AUTH__OIDC_CLIENT_SECRET", "client-secret")
    monkeypatch.setenv("KETCH__AUTH__OIDC_ISSUER", "http://127.0.0.1:9/")  # never contacted
    monkeypatch.setenv("KETCH__AUTH__ALLOWED_DOMAINS", '["corp.com"]')
    monkeypatch.setenv(
        "KETCH__AUTH__ROLE_RULES",
        json.dumps([{"email": f"{r}@corp.com", "role": r} for r in ROLES]),
    )
    monkeypatch.setenv("KETCH__AUTH__SESSION_SECRET", SESSION_SECRET)
    get_settings.cache_clear()
    with remote_client(create_app(get_settings())) as client:
        yield Web(client, engine)


@pytest.fixture
def web(sqlite_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[Web]:
    yield from _web(sqlite_engine, monkeypatch)


@pytest.fixture
def web_both(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[Web]:
    """On SQLite and on PostgreSQL."""
    yield from _web(engine, monkeypatch)


def _seed(engine: Engine) -> None:
    """etl (a chain with params, tag team-a) with a finished and a running run; quiet
    (paused, no tags, no runs)."""
    with Session(engine) as session:
        etl = add_dag(session, serialized_chain("etl"))
        add_run(
            session,
            etl,
            "run_one",
            {
                "extract": "success",
                "transform": "failed",
                "load": "upstream_failed",
                "report": "success",
            },
            run_state="failed",
        )
        add_run(
            session,
            etl,
            "run_two",
            {"extract": "success", "transform": "running", "load": None, "report": "up_for_retry"},
        )
        add_dag(session, serialized_chain("quiet"), paused=True)
        session.commit()


def _states(html: str) -> list[str]:
    return re.findall(r'data-state="([^"]*)"', html)


# ------------------------------------------------------------------ who gets in


PAGES = ["/dags", "/dags/etl", "/dags/etl/grid", "/dags/etl/runs/run_one/tasks/extract"]


@pytest.mark.parametrize("path", PAGES)
def test_anonymous_is_sent_to_sign_in(web: Web, path: str) -> None:
    _seed(web.engine)
    response = web.get(path, role=None)
    assert response.status_code == 303
    assert response.headers["location"].startswith("/login?next=" + path.split("?")[0])


def test_home_links_to_the_dags(web: Web) -> None:
    response = web.get("/")
    assert response.status_code == 200
    assert 'href="/dags"' in response.text


# ------------------------------------------------------------------ the DAGs list


def test_no_dags(web: Web) -> None:
    for path in ("/dags", "/dags?search=x&tag=a&status=paused"):
        response = web.get(path)
        assert response.status_code == 200, response.text
        assert 'data-testid="import-errors"' not in response.text
    assert "No DAGs yet" in web.get("/dags").text
    assert web.get("/dags/nope").status_code == 404
    assert "DAG &#39;nope&#39; not found" in web.get("/dags/nope").text
    assert web.get("/dags/nope/grid").status_code == 404
    assert web.get("/dags/nope/runs/r/tasks/t").status_code == 404


def test_broken_dag_file_shows_a_banner_with_file_line_and_message(
    web: Web, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parsed by the real DAG processor: the banner names the file, line and error."""
    from ketch.dag_processing.processor import DagProcessor

    folder = tmp_path / "dags"
    folder.mkdir()
    broken = folder / "broken_dag.py"
    broken.write_text("from ketch import dag\n\n\nraise RuntimeError('no database today')\n")
    monkeypatch.setenv("KETCH__CORE__DAGS_FOLDER", str(folder))
    get_settings.cache_clear()
    DagProcessor(get_settings(), web.engine).parse_all()

    response = web.get("/dags")
    assert response.status_code == 200
    banner = response.text.split('data-testid="import-errors"', 1)[1].split("</section>", 1)[0]
    assert "1 DAG file could not be imported" in banner
    assert str(broken) in banner
    assert 'line <span class="line">4</span>' in banner
    assert "RuntimeError: no database today" in banner
    assert "No DAGs yet" in response.text  # the list itself still renders


def test_import_problem_of_a_syntax_error() -> None:
    trace = (
        "Traceback (most recent call last):\n"
        '  File "/usr/lib/python3.11/importlib/__init__.py", line 126, in import_module\n'
        '  File "/dags/bad.py", line 7\n'
        "    def (:\n"
        "        ^\n"
        "SyntaxError: invalid syntax\n"
    )
    problem = import_problem("/dags/bad.py", trace)
    assert (problem.line, problem.message) == (7, "SyntaxError: invalid syntax")
    assert import_problem("/dags/x.py", "").message == "could not be imported"


def test_dags_list_with_dags_and_runs(web_both: Web) -> None:
    web = web_both
    _seed(web.engine)
    response = web.get("/dags")
    assert response.status_code == 200, response.text
    text = response.text
    assert 'href="/dags/etl"' in text and 'href="/dags/quiet"' in text
    etl_row = text.split('data-dag-id="etl"', 1)[1].split("</tr>", 1)[0]
    assert _states(etl_row) == ["failed", "running"]  # last runs, oldest first
    assert 'class="sq state-failed"' in etl_row and "team-a" in etl_row
    quiet_row = text.split('data-dag-id="quiet"', 1)[1].split("</tr>", 1)[0]
    assert "Paused" in quiet_row and "no runs" in quiet_row

    assert 'data-dag-id="quiet"' not in web.get("/dags?search=TL").text
    assert 'data-dag-id="etl"' in web.get("/dags?search=TL").text
    assert 'data-dag-id="quiet"' not in web.get("/dags?tag=team-a").text
    paused_only = web.get("/dags?status=paused").text
    assert 'data-dag-id="quiet"' in paused_only and 'data-dag-id="etl"' not in paused_only
    assert "No DAG matches these filters" in web.get("/dags?search=zzz").text
    assert web.get("/dags?status=bogus").status_code == 422


# ------------------------------------------------------------------ DAG page and grid


def test_dag_page_grid_rows_in_dag_order_with_cell_links(web_both: Web) -> None:
    web = web_both
    _seed(web.engine)
    response = web.get("/dags/etl")
    assert response.status_code == 200, response.text
    grid = response.text.split('id="grid"', 1)[1]
    rows = re.findall(r'<th scope="row">([^<]+)</th>', grid)
    assert rows == ["extract", "transform", "load", "report"]
    # columns: run_one (oldest) then run_two; header squares first, then row by row
    assert _states(grid) == [
        "failed", "running",
        "success", "success",
        "failed", "running",
        "upstream_failed", "none",
        "success", "up_for_retry",
    ]  # fmt: skip
    assert 'href="/dags/etl/runs/run_two/tasks/transform"' in grid
    assert 'hx-trigger="every 2s, ketch:refresh from:body"' in grid  # a run is active
    assert 'id="grid-status" role="status"' in response.text
    assert '"allowEval": false, "allowScriptTags": false' in response.text  # htmx hardened
    assert "Latest run run_two: running, 1 of 4 tasks finished." in response.text


def test_grid_fragment_answers_204_until_something_changes(web: Web) -> None:
    _seed(web.engine)
    first = web.get("/dags/etl/grid")
    assert first.status_code == 200
    assert "<html" not in first.text  # a fragment, not a page
    version = re.search(r'data-version="([0-9a-f]+)"', first.text)
    assert version is not None
    same = web.get(f"/dags/etl/grid?since={version.group(1)}")
    assert same.status_code == 204 and same.content == b""

    with Session(web.engine) as session:
        ti = operations.get_task_instance(session, "etl", "run_two", "transform")
        ti.state = "success"
        run = operations.get_dag_run(session, "etl", "run_two")
        run.state = "success"
        ti2 = operations.get_task_instance(session, "etl", "run_two", "report")
        ti2.state = "success"
        ti3 = operations.get_task_instance(session, "etl", "run_two", "load")
        ti3.state = "success"
        session.commit()
    changed = web.get(f"/dags/etl/grid?since={version.group(1)}")
    assert changed.status_code == 200
    assert 'hx-trigger="every 10s, ketch:refresh from:body"' in changed.text  # nothing active
    assert _states(changed.text)[1] == "success"


def test_dag_page_of_a_dag_without_runs(web: Web) -> None:
    _seed(web.engine)
    response = web.get("/dags/quiet")
    assert response.status_code == 200
    assert "No runs yet." in response.text


# ------------------------------------------------------------------ actions by role


@pytest.mark.parametrize("role", ROLES)
def test_actions_only_for_roles_the_api_allows(web: Web, role: str) -> None:
    _seed(web.engine)
    allowed = role != "viewer"  # pause and trigger need "user" (ketch.auth.policy)
    for path in ("/dags", "/dags/etl"):
        text = web.get(path, role=role).text
        assert ('class="secondary pause-toggle"' in text) is allowed, (role, path)
    dag_page = web.get("/dags/etl", role=role).text
    assert ('id="trigger-form"' in dag_page) is allowed
    assert ("<button" in dag_page.split("<main", 1)[1]) is allowed


def test_a_viewer_posting_anyway_gets_403(web: Web) -> None:
    _seed(web.engine)
    trigger = web.send("POST", "/api/v1/dags/etl/dagRuns", "viewer", {"conf": {}})
    assert trigger.status_code == 403
    pause = web.send("PATCH", "/api/v1/dags/etl", "viewer", {"is_paused": True})
    assert pause.status_code == 403
    assert web.send("PATCH", "/api/v1/dags/etl", "user", {"is_paused": True}).status_code == 200


def test_trigger_form_fields_follow_the_params(web: Web) -> None:
    _seed(web.engine)
    form = web.get("/dags/etl", role="op").text.split('id="trigger-form"', 1)[1]
    assert 'data-url="/api/v1/dags/etl/dagRuns"' in form
    assert re.search(r'<input id="param-1" name="n" data-kind="integer" value="3"', form)
    bad = web.send("POST", "/api/v1/dags/etl/dagRuns", "op", {"conf": {"n": 0}})
    assert bad.status_code == 422  # what the form shows next to the field
    assert bad.json()["detail"][0]["loc"] == ["body", "conf", "n"]


def test_param_fields_from_json_schema() -> None:
    fields = param_fields(
        {
            "n": SerializedParam(default=3, schema={"type": "integer"}),
            "ratio": SerializedParam(default=0.5, schema={"type": ["null", "number"]}),
            "flag": SerializedParam(default=True, schema={"type": "boolean"}),
            "env": SerializedParam(default="dev", schema={"enum": ["dev", "prod"]}),
            "name": SerializedParam(default=None, has_default=False, schema={"type": "string"}),
            "items": SerializedParam(default=[1, 2], schema={"type": "array"}),
            "loose": SerializedParam(default="x"),
        }
    )
    by_name = {f.name: f for f in fields}
    assert [f.kind for f in fields] == [
        "integer", "number", "boolean", "enum", "string", "json", "string"
    ]  # fmt: skip
    assert by_name["n"].value == "3" and by_name["flag"].checked
    assert by_name["env"].options == ['"dev"', '"prod"'] and by_name["env"].value == '"dev"'
    assert by_name["name"].required and by_name["name"].value == ""
    assert json.loads(by_name["items"].value) == [1, 2]


# ------------------------------------------------------------------ task try page


def test_try_page_shows_tries_and_the_log_viewer(web_both: Web) -> None:
    web = web_both
    _seed(web.engine)
    response = web.get("/dags/etl/runs/run_one/tasks/transform")
    assert response.status_code == 200, response.text
    text = response.text
    assert 'data-testid="ti-state">failed<' in text
    assert '<code data-testid="ti-error">boom</code>' in text  # the error
    assert re.search(r'<th scope="row"><a href="\?try=1">1</a></th>', text)
    assert 'data-url="/api/v1/dags/etl/dagRuns/run_one/taskInstances/transform/logs/1"' in text
    assert 'role="log"' in text and 'aria-live="polite"' in text
    assert "logs/1?download=true" in text
    assert '<script src="/static/log_viewer.js"' in text

    assert web.get("/dags/etl/runs/run_one/tasks/transform?try=1").status_code == 200
    assert web.get("/dags/etl/runs/run_one/tasks/transform?try=2").status_code == 404
    assert web.get("/dags/etl/runs/run_one/tasks/transform?try=0").status_code == 422
    assert web.get("/dags/etl/runs/nope/tasks/transform").status_code == 404
    assert web.get("/dags/etl/runs/run_one/tasks/nope").status_code == 404

    never = web.get("/dags/etl/runs/run_two/tasks/load")  # no try yet
    assert never.status_code == 200 and "No try has started yet." in never.text
    assert 'role="log"' not in never.text


def test_ids_with_odd_characters_are_quoted_in_links(web: Web) -> None:
    with Session(web.engine) as session:
        dag = add_dag(session, serialized_chain("odd"))
        add_run(session, dag, "manual run #1?x=<y>", {"extract": "success"}, run_state="success")
        session.commit()
    grid = web.get("/dags/odd").text
    assert 'href="/dags/odd/runs/manual%20run%20%231%3Fx%3D%3Cy%3E/tasks/extract"' in grid
    assert "<y>" not in grid
    page = web.get("/dags/odd/runs/manual%20run%20%231%3Fx%3D%3Cy%3E/tasks/extract")
    assert page.status_code == 200
    assert "dagRuns/manual%20run%20%231%3Fx%3D%3Cy%3E/taskInstances/extract/logs/1" in page.text


# ------------------------------------------------------------------ static files


def test_static_files_are_public_and_vendored_htmx_has_its_licence(web: Web) -> None:
    htmx = web.get("/static/vendor/htmx-2.0.11.min.js", role=None)
    assert htmx.status_code == 200
    assert "javascript" in htmx.headers["content-type"]
    assert htmx.headers["x-content-type-options"] == "nosniff"
    licence = web.get("/static/vendor/htmx-LICENSE.txt", role=None)
    assert licence.status_code == 200 and "BSD" in licence.text
    for name in ("ketch.js", "log_viewer.js", "ketch.css"):
        assert web.get(f"/static/{name}", role=None).status_code == 200
    assert web.get("/static/nope.js", role=None).status_code == 404
    assert web.get("/static/../templates/base.html", role=None).status_code == 404
    assert web.get("/static/%2e%2e/templates/base.html", role=None).status_code == 404


def test_log_viewer_never_inserts_html() -> None:
    static = Path(__file__).parents[2] / "src" / "ketch" / "web" / "static"
    for name in ("log_viewer.js", "ketch.js"):
        source = (static / name).read_text()
        assert "innerHTML" not in source and "insertAdjacentHTML" not in source, name


def test_duration_format() -> None:
    from datetime import timedelta

    assert duration(NOW, NOW + timedelta(seconds=4.2)) == "4.20s"
    assert duration(NOW, NOW + timedelta(minutes=2, seconds=5)) == "2m 05s"
    assert duration(NOW, NOW + timedelta(hours=1, minutes=2, seconds=3)) == "1h 02m 03s"
    assert duration(NOW, None) == ""


def test_every_template_and_static_file_ships_in_the_wheel() -> None:
    """pyproject's package-data globs cover every file the UI serves or renders."""
    import tomllib
    from pathlib import PurePosixPath

    root = Path(__file__).parents[2]
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["ketch"]
    package = root / "src" / "ketch"
    files = [
        p.relative_to(package).as_posix()
        for folder in ("web/templates", "web/static")
        for p in (package / folder).rglob("*")
        if p.is_file()
    ]
    assert files
    missing = [
        f
        for f in files
        if not any(
            PurePosixPath(f).match(g) and len(PurePosixPath(f).parts) == len(PurePosixPath(g).parts)
            for g in globs
        )
    ]
    assert not missing, f"not in [tool.setuptools.package-data]: {missing}"


def test_pages_for_the_local_admin_without_an_identity_provider(sqlite_engine: Engine) -> None:
    """``ketch standalone`` with no sign-in configured: this machine's browser is admin."""
    from tests.support.web import local_client

    _seed(sqlite_engine)
    get_settings.cache_clear()
    with local_client(create_app(get_settings())) as client:
        page = client.get("/dags/etl")
        assert page.status_code == 200
        assert 'id="trigger-form"' in page.text and "pause-toggle" in page.text
        assert 'name="csrf-token"' not in page.text  # no session: the API checks Origin
        origin = {"Origin": "http://127.0.0.1"}
        paused = client.patch("/api/v1/dags/etl", json={"is_paused": True}, headers=origin)
        assert paused.status_code == 200 and paused.json()["is_paused"] is True
    with remote_client(create_app(get_settings())) as client:
        assert client.get("/dags", follow_redirects=False).status_code == 303


def _wide_dag(dag_id: str, tasks: int) -> SerializedDag:
    ids = [f"t{i:04d}" for i in range(tasks)]
    return SerializedDag(
        dag_id=dag_id,
        fileloc=f"/dags/{dag_id}.py",
        relative_fileloc=f"{dag_id}.py",
        schedule=SerializedSchedule(kind="none"),
        tasks={t: SerializedTask(task_id=t, kind="python") for t in ids},
    )


def test_200_dags_and_a_run_of_1000_tasks(web: Web) -> None:
    with Session(web.engine) as session:
        for n in range(199):
            add_dag(session, _wide_dag(f"dag_{n:03d}", 2))
        big = add_dag(session, _wide_dag("big", 1000))
        add_run(
            session, big, "r1", {f"t{i:04d}": "success" for i in range(1000)}, run_state="success"
        )
        session.commit()
    listing = web.get("/dags")
    assert listing.status_code == 200
    assert "200 DAGs, page 1 of 4" in listing.text
    assert listing.text.count("<tr data-dag-id=") == 50
    last = web.get("/dags?page=4")
    assert last.text.count("<tr data-dag-id=") == 50 and 'rel="prev"' in last.text
    page = web.get("/dags/big")
    assert page.status_code == 200
    assert page.text.count('data-state="success"') == 1001  # the run's header and its tasks
    assert web.get("/dags/big/runs/r1/tasks/t0999").status_code == 200


def test_a_cell_of_several_instances_shows_airflows_most_telling_state() -> None:
    from ketch.web.grid import summed_up

    assert summed_up(["success", "failed", "running"]).state == "failed"
    assert summed_up(["success", "running", "queued"]).state == "running"  # Airflow 3.1+
    assert summed_up(["success", None, "skipped"]).state is None
    assert summed_up(["skipped", "success"]).state == "success"
    assert summed_up(["success", "up_for_reschedule"]).state == "up_for_reschedule"
    assert summed_up(["success"] * 3).instances == 3
