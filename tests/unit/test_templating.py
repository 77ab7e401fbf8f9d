"""Jinja templating of task fields with Airflow 3's semantics (ketch.authoring.templating).

In-process tests render through ``task.execute`` with a context built as a try builds
it; the last test runs templated tasks through ``ketch standalone`` (local executor)
and reads the rendered fields back from the REST API.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections import namedtuple
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from ketch import DAG, BashTask, task
from ketch.authoring.context import build_context
from ketch.authoring.python import PythonTask
from ketch.authoring.tasks import TaskResult
from ketch.authoring.templating import (
    MAX_FIELD_LENGTH,
    TemplateError,
    masked_fields,
    plain_render,
    reporting_to,
)
from ketch.authoring.variable import Variable
from ketch.authoring.xcom_args import XComArg
from ketch.db.models import TaskInstance
from ketch.worker import secrets_mask
from tests.support.ketch_process import Api, KetchEnv, running, wait_for
from tests.unit.test_authoring import PAYLOAD
from tests.unit.test_execution_api import client, make_try, start, try_row

__all__ = ["client"]  # the execution API client fixture, used below

START = datetime(2024, 1, 1, tzinfo=UTC)
NO_DATE = {**PAYLOAD, "logical_date": None, "data_interval_start": None, "data_interval_end": None}


def execute(
    the_dag: DAG,
    task_id: str,
    payload: dict[str, Any] | None = None,
    xcoms: dict[str, Any] | None = None,
) -> tuple[TaskResult, list[dict[str, Any]]]:
    """Run one task as a try would; return its result and the rendered fields reported."""
    values = xcoms or {}
    ctx = build_context({**(payload or PAYLOAD), "dag_id": the_dag.dag_id, "task_id": task_id})
    reports: list[dict[str, Any]] = []
    with reporting_to(reports.append):
        result = the_dag.get_task(task_id).execute(ctx, lambda tid, key: values[tid])
    return result, reports


@pytest.fixture(autouse=True)
def _clean_variables_and_secrets() -> Iterator[None]:
    Variable.clear_cache()
    secrets_mask.clear()
    yield
    Variable.clear_cache()
    secrets_mask.clear()


# ----- bash -----------------------------------------------------------------------


def test_bash_command_env_and_cwd_are_rendered_with_airflow_context_keys(tmp_path: Path) -> None:
    (tmp_path / "work-20240301").mkdir()
    with DAG("tpl", start_date=START) as d:
        BashTask(
            task_id="t",
            bash_command=(
                "echo {{ ds }} {{ ds_nodash }} {{ ts }} {{ ts_nodash }} {{ ts_nodash_with_tz }}; "
                "echo {{ run_id }} {{ dag.dag_id }} {{ task.task_id }} {{ ti.try_number }} "
                "{{ params.x * 2 }} {{ logical_date.year }} {{ data_interval_end | ds }}; "
                'echo "$GREETING" "$(basename "$PWD")"'
            ),
            env={"GREETING": "hello {{ dag_run.conf['x'] }} {{ task_instance.task_id }}"},
            cwd=str(tmp_path) + "/work-{{ ds_nodash }}",
        )
    result, reports = execute(d, "t")
    assert result.return_value == "hello 3 t work-20240301"
    assert reports == [
        {
            "bash_command": (
                "echo 2024-03-01 20240301 2024-03-01T00:00:00+00:00 20240301T000000 "
                "20240301T000000+0000; echo manual__1 tpl t 1 6 2024 2024-03-02; "
                'echo "$GREETING" "$(basename "$PWD")"'
            ),
            "env": {"GREETING": "hello 3 t"},
            "cwd": f"{tmp_path}/work-20240301",
        }
    ]


def test_a_run_without_logical_date_has_no_ds_and_a_template_using_it_fails_naming_it() -> None:
    with DAG("manual", start_date=START) as d:
        BashTask(task_id="uses_ds", bash_command="echo {{ ds }}")
        BashTask(task_id="uses_logical_date", bash_command="echo {{ logical_date }}")
        BashTask(task_id="uses_run_id", bash_command="echo {{ run_id }}")
    ctx = build_context(NO_DATE)
    assert not {"ds", "ds_nodash", "ts", "logical_date", "data_interval_start"} & set(ctx)
    with pytest.raises(TemplateError, match=r"'ds' is undefined") as err:
        execute(d, "uses_ds", NO_DATE)
    assert "task 'uses_ds', templated field 'bash_command'" in str(err.value)
    with pytest.raises(TemplateError, match=r"'logical_date' is undefined"):
        execute(d, "uses_logical_date", NO_DATE)
    assert execute(d, "uses_run_id", NO_DATE)[0].return_value == "manual__1"


def test_a_function_asking_for_a_date_key_gets_none_in_a_run_without_logical_date() -> None:
    with DAG("manual_py", start_date=START) as d:

        @task
        def f(logical_date: Any, ds: Any, run_id: str) -> list[Any]:
            return [logical_date, ds, run_id]

        f()
    assert execute(d, "f", NO_DATE)[0].return_value == [None, None, "manual__1"]


def test_an_undefined_name_fails_unless_the_dag_chooses_another_undefined() -> None:
    with DAG("strict", start_date=START) as strict:
        BashTask(task_id="t", bash_command="echo [{{ no_such_thing }}]")
    with pytest.raises(TemplateError, match=r"'no_such_thing' is undefined"):
        execute(strict, "t")
    with DAG("lenient", start_date=START, template_undefined=jinja2.Undefined) as lenient:
        BashTask(task_id="t", bash_command="echo [{{ no_such_thing }}]")
    assert execute(lenient, "t")[0].return_value == "[]"


def test_a_syntax_error_is_one_clear_error_with_the_line() -> None:
    with DAG("syntax", start_date=START) as d:
        BashTask(task_id="t", bash_command="echo ok\necho {{ ds ")
    with pytest.raises(TemplateError) as err:
        execute(d, "t")
    message = str(err.value)
    assert message.startswith("task 't', templated field 'bash_command': template syntax error")
    assert "at line 2" in message


def test_a_template_file_next_to_the_dag_file_is_rendered_and_run_as_a_script(
    tmp_path: Path,
) -> None:
    (tmp_path / "run.sh").write_text(
        'echo "script $(basename "$0" .sh | cut -c1-3)"\necho {{ ds }}\n'
    )
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "other.bash").write_text("echo from searchpath {{ params.x }}")
    with DAG("files", start_date=START, template_searchpath=str(extra)) as d:
        BashTask(task_id="script", bash_command="run.sh")
        BashTask(task_id="searchpath", bash_command="other.bash")
        BashTask(task_id="missing", bash_command="nope.sh")
        BashTask(task_id="not_a_file", bash_command="echo run.sh ")  # Airflow's trailing space
    d.fileloc = str(tmp_path / "files.py")
    result, reports = execute(d, "script")
    assert result.return_value == "2024-03-01"
    assert (
        reports[0]["bash_command"]
        == 'echo "script $(basename "$0" .sh | cut -c1-3)"\necho 2024-03-01'
    )
    assert execute(d, "searchpath")[0].return_value == "from searchpath 3"
    with pytest.raises(TemplateError, match=r"template file 'nope.sh' not found in \["):
        execute(d, "missing")
    (tmp_path / "broken.sh").write_text("echo ${#X}\n")
    with DAG("broken_file", start_date=START) as broken:
        BashTask(task_id="t", bash_command="broken.sh")
    broken.fileloc = str(tmp_path / "broken.py")
    with pytest.raises(TemplateError) as err:
        execute(broken, "t")
    assert str(err.value) == (
        f"task 't', templated field 'bash_command': template syntax error in template file "
        f"'{tmp_path / 'broken.sh'}' at line 1: Missing end of comment tag"
    )
    assert execute(d, "not_a_file")[0].return_value == "run.sh"


def test_the_script_of_a_template_file_runs_from_a_file_not_bash_c(tmp_path: Path) -> None:
    (tmp_path / "name.sh").write_text('echo "$0"')
    with DAG("script_name", start_date=START) as d:
        BashTask(task_id="t", bash_command="name.sh")
        BashTask(task_id="inline", bash_command='echo "$0"')
    d.fileloc = str(tmp_path / "d.py")
    script = execute(d, "t")[0].return_value
    assert script.endswith(".sh") and script != "name.sh"
    assert execute(d, "inline")[0].return_value == "bash"


def test_task_bash_renders_its_args_then_the_command_it_returns() -> None:
    with DAG("decorated", start_date=START) as d:

        @task.bash(env={"WHO": "{{ params.x }}"})
        def hello(prefix: str) -> str:
            return prefix + ' {{ run_id }} "$WHO"'

        hello("echo {{ ds_nodash }}")
    result, reports = execute(d, "hello")
    assert result.return_value == "20240301 manual__1 3"
    assert reports == [
        {
            "op_args": ["echo 20240301"],
            "op_kwargs": {},
            "bash_command": 'echo 20240301 manual__1 "$WHO"',
            "env": {"WHO": "3"},
            "cwd": None,
        }
    ]


# ----- python -----------------------------------------------------------------------


def test_python_op_args_op_kwargs_and_templates_dict_are_rendered_recursively() -> None:
    Point = namedtuple("Point", "x y")

    def f(a: Any, b: Any, *, nested: Any, point: Any, templates_dict: Any) -> Any:
        return {
            "a": a,
            "b": b,
            "nested": nested,
            "point": list(point),
            "point_type": type(point).__name__,
            "templates_dict": templates_dict,
        }

    with DAG("py", start_date=START) as d:
        PythonTask(
            task_id="t",
            python_callable=f,
            op_args=["{{ ds }}", ("{{ params.x }}", 7)],
            op_kwargs={
                "nested": {"k": ["{{ run_id }}", {"deep": "{{ ts_nodash }}"}], "s": {"{{ ds }}"}},
                "point": Point("{{ params.x }}", "y"),
            },
            templates_dict={"query": "select '{{ macros.ds_add(ds, -1) }}'"},
        )
    result, reports = execute(d, "t")
    assert result.return_value == {
        "a": "2024-03-01",
        "b": ("3", 7),
        "nested": {"k": ["manual__1", {"deep": "20240301T000000"}], "s": {"2024-03-01"}},
        "point": ["3", "y"],
        "point_type": "Point",
        "templates_dict": {"query": "select '2024-02-29'"},
    }
    assert reports[0]["templates_dict"] == {"query": "select '2024-02-29'"}
    assert reports[0]["op_args"] == ["2024-03-01", ["3", 7]]


def test_an_upstream_value_is_passed_as_it_is_never_rendered() -> None:
    with DAG("xcom", start_date=START) as d:

        @task
        def source() -> str:
            return "{{ ds }}"

        @task
        def sink(value: str, other: str) -> list[str]:
            return [value, other]

        sink(source(), "{{ ds }}")
    result, _ = execute(d, "sink", xcoms={"source": "{{ ds }}"})
    assert result.return_value == ["{{ ds }}", "2024-03-01"]
    assert isinstance(d.get_task("sink").op_args[0], XComArg)  # type: ignore[attr-defined]


def test_templates_exts_make_strings_template_files_and_templates_dict_reaches_the_context(
    tmp_path: Path,
) -> None:
    (tmp_path / "query.sql").write_text("select * from t where day = '{{ ds }}'")
    seen: dict[str, Any] = {}

    def f(**context: Any) -> Any:
        from ketch import get_current_context

        seen["current"] = get_current_context()["templates_dict"]
        return context["templates_dict"]["sql"]

    with DAG("sqlfiles", start_date=START) as d:
        PythonTask(
            task_id="t",
            python_callable=f,
            templates_dict={"sql": "query.sql"},
            templates_exts=[".sql"],
        )
    d.fileloc = str(tmp_path / "d.py")
    result, _ = execute(d, "t")
    assert result.return_value == "select * from t where day = '2024-03-01'"
    assert seen["current"] == {"sql": "select * from t where day = '2024-03-01'"}


def test_native_rendering_gives_python_objects() -> None:
    def f(**kwargs: Any) -> Any:
        return {k: kwargs[k] for k in ("n", "items", "plain", "text")}

    for native, expected in (
        (True, {"n": 4, "items": [1, 2], "plain": 42, "text": "a b"}),
        (False, {"n": "4", "items": "[1, 2]", "plain": "42", "text": "a b"}),
    ):
        with DAG(f"native_{native}", start_date=START, render_template_as_native_obj=native) as d:
            PythonTask(
                task_id="t",
                python_callable=f,
                op_kwargs={
                    "n": "{{ params.x + 1 }}",
                    "items": "{{ [1, 2] }}",
                    "plain": "42",
                    "text": "a {{ 'b' }}",
                },
            )
        assert execute(d, "t")[0].return_value == expected


def test_user_defined_macros_and_filters() -> None:
    with DAG(
        "udm",
        start_date=START,
        user_defined_macros={"project": "acme", "twice": lambda v: v * 2},
        user_defined_filters={"shout": lambda s: s.upper() + "!"},
    ) as d:
        BashTask(task_id="t", bash_command="echo {{ project | shout }} {{ twice(params.x) }}")
    assert execute(d, "t")[0].return_value == "ACME! 6"


def test_macros_module_subset() -> None:
    with DAG("macros", start_date=START) as d:
        BashTask(
            task_id="t",
            bash_command=(
                "echo {{ macros.ds_add(ds, 5) }} {{ macros.ds_format(ds, '%Y-%m-%d', '%d/%m/%y') }} "
                "{{ (macros.datetime(2024, 1, 1) + macros.timedelta(days=1)).day }} "
                "'{{ macros.json.dumps({'a': 1}) | replace(' ', '') }}' "
                "{{ macros.uuid.UUID(int=1).int }} {{ macros.random() < 1 }} "
                "{{ macros.time.time() > 0 }} "
                "{{ macros.dateutil.relativedelta.relativedelta(months=1).months }}"
            ),
        )
    assert execute(d, "t")[0].return_value == '2024-03-06 01/03/24 2 {"a":1} 1 True True 1'


def test_var_value_and_var_json_read_variables() -> None:
    Variable._cache.update({"bucket": "s3://data", "cfg": json.dumps({"tables": ["a", "b"]})})
    with DAG("vars", start_date=START) as d:
        BashTask(
            task_id="t",
            bash_command=(
                "echo {{ var.value.bucket }} {{ var.json.cfg.tables[1] }} "
                "{{ var.value.get('nope', 'dflt') }} {{ var.json.get('nope', {'k': 1}).k }}"
            ),
        )
        BashTask(task_id="missing", bash_command="echo {{ var.value.nope }}")
    assert execute(d, "t")[0].return_value == "s3://data b dflt 1"
    with pytest.raises(KeyError, match="Variable nope does not exist") as err:
        execute(d, "missing")
    assert "templated field 'bash_command'" in "".join(getattr(err.value, "__notes__", []))


def test_sandbox_blocks_dunder_attributes_but_allows_single_underscore() -> None:
    class Thing:
        _visible = "ok"

    with DAG("sandbox", start_date=START, user_defined_macros={"thing": Thing()}) as d:
        BashTask(task_id="private", bash_command="echo {{ thing._visible }}")
        BashTask(task_id="dunder", bash_command="echo {{ thing.__class__.__mro__ }}")
    assert execute(d, "private")[0].return_value == "ok"
    with pytest.raises(TemplateError, match="__class__"):
        execute(d, "dunder")


# ----- what the API shows -------------------------------------------------------------


def test_rendered_fields_are_masked_before_they_leave_the_try() -> None:
    secrets_mask.mask_secret("hunter2-secret")
    with DAG("masked", start_date=START) as d:
        BashTask(
            task_id="t",
            bash_command="echo {{ params.token }} | wc -c",
            env={"DB_PASSWORD": "plain-but-sensitive-key", "OTHER": "x-{{ params.token }}"},
        )
    payload = {**PAYLOAD, "params": {"token": "hunter2-secret"}}
    _, reports = execute(d, "t", payload)
    assert reports == [
        {
            "bash_command": "echo *** | wc -c",
            "env": {"DB_PASSWORD": "***", "OTHER": "x-***"},
            "cwd": None,
        }
    ]


def test_a_long_rendered_field_is_truncated_and_odd_values_become_text() -> None:
    class Broken:
        def __str__(self) -> str:
            raise RuntimeError("no text")

    out = masked_fields(
        {"big": "x" * 10_000, "path": Path("/a/b"), "broken": Broken(), "n": [1, (2, 3)]}
    )
    assert out["big"].startswith("Truncated") and len(out["big"]) == MAX_FIELD_LENGTH
    assert out["path"] == "/a/b" and out["broken"] == "<Broken object>"
    assert out["n"] == [1, [2, 3]]
    json.dumps(out)


def test_a_python_task_without_templated_values_reports_nothing() -> None:
    with DAG("quiet", start_date=START) as d:

        @task
        def nothing() -> int:
            return 1

        nothing()
    result, reports = execute(d, "nothing")
    assert result.return_value == 1 and reports == []


@pytest.mark.parametrize(
    "text",
    ["echo hi", "echo hi\n", "a\r\nb\rc\n\n", "", "\n", "tabs\tand } { braces", "x\n\n"],
)
def test_text_without_template_syntax_renders_as_jinja_would(text: str) -> None:
    env = jinja2.sandbox.SandboxedEnvironment(undefined=jinja2.StrictUndefined)
    assert plain_render(text) == env.from_string(text).render()


# ----- end to end: ketch standalone, local executor, REST API --------------------------

E2E_DAG = """
from datetime import datetime, timezone

from ketch import DAG, BashTask, task

with DAG("e2e_templates", schedule=None, start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
         is_paused_upon_creation=False, default_args={"retries": 0},
         user_defined_macros={"team": "data"}) as d:
    bash = BashTask(
        task_id="bash",
        bash_command="report.sh",
        env={"TOKEN": "{{ var.value.api_token }}", "WHO": "{{ team }}"},
    )

    @task(templates_dict={"day": "{{ macros.ds_add(ds, 1) }}"})
    def py(run, conn_default, templates_dict=None):
        assert run.startswith("manual__") and conn_default == "none", (run, conn_default)
        assert templates_dict == {"day": "2026-03-02"}, templates_dict
        return templates_dict["day"]

    bash >> py("{{ run_id }}", "{{ conn.get('no_such_conn', 'none') }}")
"""

# ${#TOKEN} would open a Jinja comment ({#), in Airflow too: raw blocks keep it for bash.
REPORT_SH = 'echo "{{ ds }} $WHO {% raw %}${#TOKEN}{% endraw %}"\n'


def test_templated_tasks_run_end_to_end_and_the_api_shows_rendered_fields(
    ketch_home: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "dags"
    folder.mkdir()
    (folder / "templates.py").write_text(E2E_DAG)
    (folder / "report.sh").write_text(REPORT_SH)
    env = KetchEnv(home=ketch_home, db_url=f"sqlite:///{ketch_home / 'e2e.db'}", dags_folder=folder)
    api = Api(env.base_url)
    with running(env, "standalone"):
        wait_for(api.healthy, 60, 0.05, "web server")
        created = api.http.post(
            "/api/v1/variables",
            json={"key": "api_token", "value": "tok-0123456789", "is_sensitive": True},
        )
        assert created.status_code == 201, created.text
        wait_for(lambda: api.dag("e2e_templates"), 60, 0.1, "e2e_templates parsed")
        dated = api.http.post(
            "/api/v1/dags/e2e_templates/dagRuns",
            json={"conf": {}, "logical_date": "2026-03-01T00:00:00+00:00"},
        )
        assert dated.status_code in (200, 201), dated.text
        run_id = dated.json()["dag_run_id"]
        finished = api.wait_run_finished("e2e_templates", run_id, 120)
        tis = api.task_instances("e2e_templates", run_id)
        one = api.http.get(f"/api/v1/dags/e2e_templates/dagRuns/{run_id}/taskInstances/bash")
        manual = api.trigger("e2e_templates")  # no logical date: no ds
        manual_finished = api.wait_run_finished("e2e_templates", manual["dag_run_id"], 120)
        manual_tis = api.task_instances("e2e_templates", manual["dag_run_id"])
    assert finished["state"] == "success", {t: (ti["state"], ti["error"]) for t, ti in tis.items()}
    bash_fields = {
        "bash_command": 'echo "2026-03-01 $WHO ${#TOKEN}"',
        "env": {"TOKEN": "***", "WHO": "data"},
        "cwd": None,
    }
    assert tis["bash"]["rendered_fields"] == bash_fields
    assert tis["bash"]["tries"][0]["rendered_fields"] == bash_fields
    assert one.status_code == 200 and one.json()["rendered_fields"] == bash_fields
    assert tis["py"]["rendered_fields"] == {
        "templates_dict": {"day": "2026-03-02"},
        "op_args": [run_id, "none"],
        "op_kwargs": {},
    }
    assert manual_finished["state"] == "failed"
    failed = manual_tis["bash"]
    assert failed["state"] == "failed"
    assert "TemplateError" in failed["error"] and "'ds' is undefined" in failed["error"]
    assert failed["rendered_fields"] is None
    assert manual_tis["py"]["state"] == "upstream_failed"


# ----- the execution API route ---------------------------------------------------------


def test_rendered_fields_route_stores_on_the_running_try_only(
    engine: Engine, client: TestClient
) -> None:
    t = make_try(engine)
    fields = {"bash_command": "echo 2024-03-01", "env": {"TOKEN": "***"}, "cwd": None}
    # Not started yet (queued): refused, nothing stored.
    early = client.put(
        "/execution/try/rendered-fields", json={"rendered_fields": fields}, headers=t.headers()
    )
    assert early.status_code == 409
    start(client, t)
    ok = client.put(
        "/execution/try/rendered-fields", json={"rendered_fields": fields}, headers=t.headers()
    )
    assert ok.status_code == 204
    assert try_row(engine, t.ti_id, 1).rendered_fields == fields
    again = {"bash_command": "echo again"}
    client.put(
        "/execution/try/rendered-fields", json={"rendered_fields": again}, headers=t.headers()
    )
    assert try_row(engine, t.ti_id, 1).rendered_fields == again
    with Session(engine) as session:
        ti = session.get(TaskInstance, t.ti_id)
        assert ti is not None
        ti.state = "success"  # marked by a user: the try has ended
        session.commit()
    late = client.put(
        "/execution/try/rendered-fields", json={"rendered_fields": fields}, headers=t.headers()
    )
    assert late.status_code == 401 and late.json()["detail"].startswith("try has ended")
    assert try_row(engine, t.ti_id, 1).rendered_fields == again
    no_token = client.put("/execution/try/rendered-fields", json={"rendered_fields": fields})
    assert no_token.status_code == 401
    too_big = client.put(
        "/execution/try/rendered-fields",
        json={"rendered_fields": {"x": "y" * (1024 * 1024)}},
        headers=t.headers(),
    )
    assert too_big.status_code == 413


def test_fields_without_template_syntax_do_not_import_jinja2() -> None:
    probe = textwrap.dedent(
        """
        import sys
        from datetime import datetime, timezone
        from ketch import DAG, BashTask, task
        from ketch.authoring.context import build_context
        from tests.unit.test_authoring import PAYLOAD

        with DAG("plain", start_date=datetime(2024, 1, 1, tzinfo=timezone.utc)) as d:
            BashTask(task_id="b", bash_command="echo plain", env={"A": "1"})

            @task
            def p(x, y):
                return [x, y]

            p("a", {"k": ["v"]})
        for tid in ("b", "p"):
            ctx = build_context({**PAYLOAD, "dag_id": "plain", "task_id": tid})
            print(d.get_task(tid).execute(ctx, lambda t, k: None).return_value)
        print("jinja2 imported:", "jinja2" in sys.modules)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-3:] == [
        "plain",
        "['a', {'k': ['v']}]",
        "jinja2 imported: False",
    ]


def test_ti_xcom_pull_in_a_template_reads_an_upstream_value() -> None:
    with DAG("pull", start_date=START) as d:
        up = BashTask(task_id="up", bash_command="echo 5")
        up >> BashTask(
            task_id="down", bash_command="echo {{ ti.xcom_pull(task_ids='up') | int + 1 }}"
        )
    assert execute(d, "down", xcoms={"up": "5"})[0].return_value == "6"
