"""Airflow DAG files on ketch: the ``airflow`` import shim ([core] airflow_compat), the DAG
processor's filter, ``ketch dags check-airflow``, and one run end to end."""

from __future__ import annotations

import importlib
import json
import shutil
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine

import ketch
from ketch import airflow_compat, cli
from ketch.authoring._defaults import PARSE_DEFAULTS_ENV
from ketch.authoring.loader import collect_dags
from ketch.dag_processing.files import list_dag_files
from ketch.exceptions import DagDefinitionError
from tests.support.ketch_process import Api, KetchEnv, running, wait_for
from tests.unit.test_dag_processor import dags, errors, processor

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "airflow_dags"


def _forget_airflow_modules() -> None:
    airflow_compat.uninstall()
    for name in [n for n in sys.modules if n == "airflow" or n.startswith("airflow.")]:
        del sys.modules[name]


@pytest.fixture(autouse=True)
def no_shim_outside_the_test() -> Iterator[None]:
    """Each test starts and ends without the finder and without any ``airflow`` module."""
    _forget_airflow_modules()
    importlib.invalidate_caches()
    yield
    _forget_airflow_modules()


def compat(monkeypatch: pytest.MonkeyPatch, on: bool) -> None:
    """What the DAG processor hands its parse child (and the executor its tries)."""
    monkeypatch.setenv(PARSE_DEFAULTS_ENV, json.dumps({"airflow_compat": on, "executor": "local"}))


@pytest.fixture
def shim() -> Iterator[None]:
    assert airflow_compat.install()
    yield


# ----- the finder is installed only when asked, never over a real Airflow ----------------------


def test_setting_off_no_finder_and_airflow_imports_fail_normally(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    compat(monkeypatch, False)
    native = tmp_path / "native.py"
    native.write_text(
        "from ketch import DAG, EmptyTask\nwith DAG('n'):\n    EmptyTask(task_id='t')\n"
    )
    assert [d.dag_id for d in collect_dags(str(native))] == ["n"]
    assert not airflow_compat.is_installed()
    assert not any(isinstance(f, airflow_compat.AirflowCompatFinder) for f in sys.meta_path)
    with pytest.raises(ModuleNotFoundError, match="No module named 'airflow'"):
        import airflow  # noqa: F401
    with pytest.raises(ModuleNotFoundError, match="No module named 'airflow'"):
        collect_dags(str(FIXTURES / "airflow2_classic.py"))


def test_setting_off_by_default_in_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PARSE_DEFAULTS_ENV, raising=False)
    assert airflow_compat.enabled() is False
    monkeypatch.setenv("KETCH__CORE__AIRFLOW_COMPAT", "true")
    from ketch.config import get_settings

    get_settings.cache_clear()
    assert airflow_compat.enabled() is True


def test_setting_on_installs_the_finder_when_a_dag_file_is_loaded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    compat(monkeypatch, True)
    found = collect_dags(str(FIXTURES / "airflow2_classic.py"))
    assert [d.dag_id for d in found] == ["airflow2_classic"]
    assert airflow_compat.is_installed()
    assert isinstance(sys.meta_path[-1], airflow_compat.AirflowCompatFinder)


def fake_airflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "site" / "airflow"
    (package / "operators").mkdir(parents=True)
    (package / "__init__.py").write_text("REAL = True\n")
    (package / "operators" / "__init__.py").write_text("")
    (package / "operators" / "bash.py").write_text("class BashOperator:\n    REAL = True\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()


def test_a_real_airflow_on_sys_path_is_never_shadowed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake_airflow(tmp_path, monkeypatch)
    compat(monkeypatch, True)
    assert airflow_compat.real_airflow_importable()
    assert airflow_compat.install_if_enabled() is False
    assert not airflow_compat.is_installed()
    from airflow.operators.bash import BashOperator

    assert BashOperator.REAL is True
    import airflow

    assert airflow.REAL is True


def test_a_real_airflow_that_appears_after_install_still_wins(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert airflow_compat.install()
    fake_airflow(tmp_path, monkeypatch)  # the finder is last on sys.meta_path
    import airflow

    assert airflow.REAL is True
    assert airflow_compat.real_airflow_importable()


# ----- what the shim provides ----------------------------------------------------------------------


@pytest.mark.usefixtures("shim")
def test_airflow_sdk_names_are_ketch_objects() -> None:
    import airflow.sdk as sdk

    from ketch.airflow_compat import dag as compat_dag
    from ketch.authoring import helpers

    assert sdk.task is ketch.task
    assert sdk.Variable is ketch.Variable
    assert sdk.Param is ketch.Param
    assert sdk.TaskGroup is ketch.TaskGroup
    assert sdk.task_group is ketch.task_group
    assert sdk.get_current_context is ketch.get_current_context
    assert sdk.DAG is compat_dag.DAG and issubclass(sdk.DAG, ketch.DAG)
    assert sdk.dag is compat_dag.dag
    assert sdk.chain is getattr(ketch, "chain", helpers.chain)
    assert sdk.cross_downstream is getattr(ketch, "cross_downstream", helpers.cross_downstream)
    assert "task" in sdk.__all__ and "DAG" in dir(sdk)


@pytest.mark.usefixtures("shim")
def test_airflow_2_paths_and_operators() -> None:
    from airflow import DAG
    from airflow.decorators import dag, task, task_group
    from airflow.exceptions import AirflowFailException, AirflowSkipException
    from airflow.models import DAG as ModelsDAG
    from airflow.models import Variable
    from airflow.models.dag import DAG as DagDAG
    from airflow.models.param import Param
    from airflow.models.variable import Variable as Variable2
    from airflow.operators.bash import BashOperator
    from airflow.operators.empty import EmptyOperator
    from airflow.operators.python import BranchPythonOperator, PythonOperator
    from airflow.providers.standard.operators.bash import BashOperator as StdBash
    from airflow.providers.standard.operators.empty import EmptyOperator as StdEmpty
    from airflow.providers.standard.operators.python import PythonOperator as StdPython
    from airflow.utils.task_group import TaskGroup
    from airflow.utils.trigger_rule import TriggerRule

    assert DAG is ModelsDAG is DagDAG
    assert task is ketch.task and task_group is ketch.task_group and callable(dag)
    assert AirflowSkipException is ketch.SkipTask and AirflowFailException is ketch.FailTask
    assert Variable is Variable2 is ketch.Variable and Param is ketch.Param
    assert BashOperator is StdBash is ketch.BashTask
    assert EmptyOperator is StdEmpty is ketch.EmptyTask
    assert PythonOperator is StdPython
    assert issubclass(BranchPythonOperator, PythonOperator)
    assert TaskGroup is ketch.TaskGroup and TriggerRule is ketch.TriggerRule


@pytest.mark.usefixtures("shim")
def test_dummy_operator_is_the_empty_operator() -> None:
    from airflow.operators.dummy import DummyOperator

    assert DummyOperator is getattr(ketch, "DummyOperator", ketch.EmptyTask)


@pytest.mark.usefixtures("shim")
def test_names_resolve_lazily_when_ketch_gains_them(monkeypatch: pytest.MonkeyPatch) -> None:
    import airflow.sensors.python as sensors

    marker = type("PythonSensorStandIn", (), {})
    monkeypatch.setattr(ketch, "PythonSensor", marker, raising=False)
    from airflow.sensors.python import PythonSensor

    assert PythonSensor is marker and sensors.PythonSensor is marker


@pytest.mark.usefixtures("shim")
def test_a_subset_name_ketch_lacks_is_an_import_error_saying_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(ketch, "PythonSensor", raising=False)
    with pytest.raises(ImportError) as err:
        from airflow.sensors.python import PythonSensor  # noqa: F401
    assert "ketch does not provide PythonSensor yet" in str(err.value)


@pytest.mark.usefixtures("shim")
@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        (
            "from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator",
            "'KubernetesPodOperator' from 'airflow.providers.cncf.kubernetes.operators.pod'"
            " (ketch's Airflow compatibility): a @task in ketch already runs in its own pod",
        ),
        (
            "from airflow.providers.amazon.aws.operators.s3 import S3CreateObjectOperator",
            "'S3CreateObjectOperator' from 'airflow.providers.amazon.aws.operators.s3' (ketch's"
            " Airflow compatibility): provider operators are not supported: call the service's"
            " Python library in a @task",
        ),
        (
            "from airflow.providers.amazon.aws.hooks.s3 import S3Hook",
            "'S3Hook' from 'airflow.providers.amazon.aws.hooks.s3' (ketch's Airflow"
            " compatibility): provider hooks are not supported: use the service's Python library"
            " directly in a @task",
        ),
        (
            "from airflow.hooks.base import BaseHook",
            "'BaseHook' from 'airflow.hooks.base' (ketch's Airflow compatibility): provider hooks",
        ),
        (
            "from airflow.models import BaseOperator",
            "'BaseOperator' from 'airflow.models' (ketch's Airflow compatibility): custom"
            " operators (BaseOperator subclasses) are not supported: write the work as a @task",
        ),
        (
            "from airflow.models.baseoperator import BaseOperator",
            "custom operators (BaseOperator subclasses) are not supported",
        ),
        ("from airflow.sdk import Asset", "data-aware scheduling is not supported"),
        ("from airflow.models import TaskInstance", "read upstream results by passing"),
        (
            "from airflow.operators.python import PythonVirtualenvOperator",
            "install the packages in the task image and use a @task",
        ),
        ("from airflow.configuration import conf", "outside ketch's Airflow subset"),
    ],
)
def test_outside_the_subset_is_an_import_error_naming_symbol_and_alternative(
    statement: str, expected: str
) -> None:
    with pytest.raises(ImportError) as err:
        exec(statement, {})
    assert expected in str(err.value)


@pytest.mark.usefixtures("shim")
def test_module_attribute_access_outside_the_subset_fails_at_use() -> None:
    import airflow.providers.cncf.kubernetes.operators.pod as pod

    with pytest.raises(ImportError, match="KubernetesPodOperator"):
        pod.KubernetesPodOperator  # noqa: B018
    with pytest.raises(AttributeError):
        pod.__wrapped__  # noqa: B018  # dunders stay plain attribute errors (inspect, pickle)


# ----- Airflow 2 arguments and helpers ----------------------------------------------------------------


@pytest.mark.usefixtures("shim")
def test_schedule_interval_maps_to_schedule() -> None:
    from airflow import DAG
    from airflow.decorators import dag

    with DAG("a2", schedule_interval="@daily", start_date=datetime(2024, 1, 1, tzinfo=UTC)) as d:
        pass
    assert d.schedule == "@daily"
    with DAG("a2_delta", schedule_interval=timedelta(hours=2)) as d2:
        pass
    assert d2.schedule == timedelta(hours=2)

    @dag(schedule_interval="0 3 * * *", start_date=datetime(2024, 1, 1, tzinfo=UTC))
    def decorated() -> None:
        pass

    assert decorated().schedule == "0 3 * * *"
    with pytest.raises(DagDefinitionError, match="schedule_interval and schedule are both given"):
        DAG("both", schedule="@daily", schedule_interval="@daily")


def test_days_ago_is_midnight_utc_n_days_back() -> None:
    from ketch.airflow_compat.dag import days_ago

    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    assert days_ago(0) == today
    assert days_ago(3) == today - timedelta(days=3)
    assert days_ago(1, hour=6) == today - timedelta(days=1) + timedelta(hours=6)
    assert days_ago(2).tzinfo is not None


def test_chain_and_cross_downstream_have_airflow_semantics() -> None:
    from ketch.authoring.helpers import chain, cross_downstream

    with ketch.DAG("chained") as d:
        t = {n: ketch.EmptyTask(task_id=n) for n in "abcdefgh"}
        chain(t["a"], [t["b"], t["c"]], [t["d"], t["e"]], t["f"])
        cross_downstream([t["f"], t["g"]], [t["h"]])
    edges = {(u, v) for v, task in d.tasks.items() for u in task.upstream_task_ids}
    assert edges == {
        ("a", "b"), ("a", "c"),
        ("b", "d"), ("c", "e"),  # two lists: pairwise
        ("d", "f"), ("e", "f"),
        ("f", "h"), ("g", "h"),
    }  # fmt: skip
    with ketch.DAG("chained_bad"):
        x, y, z = (ketch.EmptyTask(task_id=n) for n in "xyz")
        with pytest.raises(ValueError, match=r"different length Iterable\. Got 2 and 1"):
            chain([x, y], [z])
        with pytest.raises(TypeError, match="Chain not supported between instances"):
            chain(1, 2)


# ----- Airflow-style DAG files ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "dag_id", "tasks"),
    [
        ("tutorial.py", "tutorial", {"print_date", "sleep", "echo"}),
        ("tutorial_taskflow_api.py", "tutorial_taskflow_api", {"extract", "transform", "load"}),
        (
            "airflow2_classic.py",
            "airflow2_classic",
            {"start", "produce", "double", "branch", "report.write", "skipped", "end"},
        ),
    ],
)
def test_airflow_dag_files_import(
    monkeypatch: pytest.MonkeyPatch, name: str, dag_id: str, tasks: set[str]
) -> None:
    compat(monkeypatch, True)
    (found,) = collect_dags(str(FIXTURES / name))
    assert found.dag_id == dag_id
    assert set(found.tasks) == tasks
    assert found.fileloc == str(FIXTURES / name)


def test_pendulum_and_airflow_2_arguments_in_the_fixtures(monkeypatch: pytest.MonkeyPatch) -> None:
    compat(monkeypatch, True)
    (taskflow,) = collect_dags(str(FIXTURES / "tutorial_taskflow_api.py"))
    assert taskflow.start_date == datetime(2021, 1, 1, tzinfo=UTC)
    assert type(taskflow.start_date).__module__.startswith("pendulum")
    (classic,) = collect_dags(str(FIXTURES / "airflow2_classic.py"))
    assert classic.schedule == "@daily"
    assert classic.tasks["end"].upstream_task_ids == {"report.write", "skipped"}
    (tutorial,) = collect_dags(str(FIXTURES / "tutorial.py"))
    assert tutorial.tasks["sleep"].upstream_task_ids == {"print_date"}
    assert tutorial.doc_md and "Tutorial" in tutorial.doc_md


def test_a_provider_operator_file_is_a_clear_import_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    compat(monkeypatch, True)
    with pytest.raises(ImportError, match=r"'KubernetesPodOperator'.*its own pod"):
        collect_dags(str(FIXTURES / "provider_operator.py"))


# ----- the DAG processor --------------------------------------------------------------------------


def test_the_filter_picks_airflow_files_only_with_airflow_compat(tmp_path: Path) -> None:
    shutil.copytree(FIXTURES, tmp_path / "dags")
    (tmp_path / "dags" / "notes.py").write_text("# airflow, but nothing to schedule here\n")
    (tmp_path / "dags" / "assets.py").write_text("import airflow  # an asset\n")
    assert list_dag_files(tmp_path / "dags") == []
    names = [p.name for p in list_dag_files(tmp_path / "dags", airflow_compat=True)]
    assert names == [
        "airflow2_classic.py",
        "assets.py",  # Airflow's heuristic: "airflow" and ("dag" or "asset")
        "custom_operator.py",
        "provider_operator.py",
        "tutorial.py",
        "tutorial_taskflow_api.py",
    ]


def test_the_dag_processor_parses_airflow_files_with_the_setting(
    engine: Engine, tmp_path: Path
) -> None:
    folder = tmp_path / "dags"
    shutil.copytree(FIXTURES, folder)
    off = processor(engine, folder).parse_all()
    assert off.files == 0 and dags(engine) == {}
    summary = processor(engine, folder, airflow_compat=True).parse_all()
    assert summary.files == 5
    assert set(dags(engine)) == {"tutorial", "tutorial_taskflow_api", "airflow2_classic"}
    errs = errors(engine)
    assert set(errs) == {"provider_operator.py", "custom_operator.py"}
    assert "cannot import name 'KubernetesPodOperator'" in errs["provider_operator.py"]
    assert "its own pod" in errs["provider_operator.py"]
    assert "custom operators (BaseOperator subclasses)" in errs["custom_operator.py"]


# ----- ketch dags check-airflow --------------------------------------------------------------------


def check_airflow(*args: str) -> Any:
    return CliRunner().invoke(cli.cli, ["dags", "check-airflow", *args])


def test_check_airflow_on_a_folder_lists_each_file_and_exits_1() -> None:
    result = check_airflow(str(FIXTURES))
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert "airflow2_classic.py: will run (DAGs: airflow2_classic)" in lines
    assert "tutorial.py: will run (DAGs: tutorial)" in lines
    assert "tutorial_taskflow_api.py: will run (DAGs: tutorial_taskflow_api)" in lines
    assert "provider_operator.py: will not run" in lines
    at = lines.index("provider_operator.py: will not run")
    assert lines[at + 1].startswith(
        "  line 6: from airflow.providers.cncf.kubernetes.operators.pod import"
        " KubernetesPodOperator: a @task in ketch already runs in its own pod"
    )
    assert "custom_operator.py: will not run" in lines
    assert lines[-1] == "3 of 5 files will run on ketch"


def test_check_airflow_on_a_good_file_exits_0_without_database(tmp_path: Path) -> None:
    result = check_airflow(str(FIXTURES / "tutorial_taskflow_api.py"))
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "tutorial_taskflow_api.py: will run (DAGs: tutorial_taskflow_api)",
        "1 of 1 files will run on ketch",
    ]
    assert not list(Path(tmp_path / "ketch_home").glob("*.db"))


def test_check_airflow_reports_syntax_import_and_run_time_problems(tmp_path: Path) -> None:
    folder = tmp_path / "dags"
    folder.mkdir()
    (folder / "syntax.py").write_text("from airflow import DAG\nwith DAG('s') as dag\n    pass\n")
    (folder / "raises.py").write_text(
        "from airflow import DAG\nimport not_installed_lib  # a dag\n"
    )
    (folder / "in_task.py").write_text(
        textwrap.dedent(
            """
            from airflow.decorators import dag, task

            @dag(schedule=None)
            def in_task():
                @task
                def upload():
                    from airflow.providers.amazon.aws.hooks.s3 import S3Hook
                    S3Hook().load_string("x", "k")
                upload()

            in_task()
            """
        )
    )
    (folder / "nodag.py").write_text("from airflow.models import Variable  # dag helpers\n")
    result = check_airflow(str(folder), "--output", "json")
    assert result.exit_code == 1, result.output
    by_file = {Path(r["file"]).name: r for r in json.loads(result.output)}
    assert by_file["syntax.py"]["problems"] == [
        {"line": 2, "message": "syntax error: expected ':'"}
    ]
    assert by_file["raises.py"]["problems"] == [
        {
            "line": 2,
            "message": "import error: ModuleNotFoundError: No module named 'not_installed_lib'",
        }
    ]
    (problem,) = by_file["in_task.py"]["problems"]
    assert problem["line"] == 8
    assert problem["message"].startswith(
        "from airflow.providers.amazon.aws.hooks.s3 import S3Hook: provider hooks"
    )
    assert problem["message"].endswith("(inside a function: fails when the task runs)")
    assert by_file["in_task.py"]["dag_ids"] == ["in_task"]
    assert by_file["nodag.py"] == {
        "file": str(folder / "nodag.py"),
        "will_run": True,
        "dag_ids": [],
        "problems": [],
    }


def test_check_airflow_on_a_folder_without_dag_files_is_an_error(tmp_path: Path) -> None:
    result = check_airflow(str(tmp_path))
    assert result.exit_code == 1
    assert "no DAG files under" in result.output


# ----- end to end: DAG processor + scheduler + local executor ---------------------------------


def test_an_airflow_2_dag_file_runs_end_to_end_on_the_local_executor(
    ketch_home: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "dags"
    folder.mkdir()
    shutil.copy(FIXTURES / "airflow2_classic.py", folder)
    shutil.copy(FIXTURES / "tutorial_taskflow_api.py", folder)
    env = KetchEnv(
        home=ketch_home,
        db_url=f"sqlite:///{ketch_home / 'e2e.db'}",
        dags_folder=folder,
        extra={"KETCH__CORE__AIRFLOW_COMPAT": "true"},
    )
    api = Api(env.base_url)
    with running(env, "standalone"):
        wait_for(api.healthy, 60, 0.05, "web server")
        wait_for(lambda: api.dag("airflow2_classic"), 60, 0.1, "airflow2_classic parsed")
        run_ = api.trigger("airflow2_classic")
        finished = api.wait_run_finished("airflow2_classic", run_["dag_run_id"], 120)
        tis = api.task_instances("airflow2_classic", run_["dag_run_id"])
        wait_for(lambda: api.dag("tutorial_taskflow_api"), 60, 0.1, "taskflow parsed")
        flow = api.trigger("tutorial_taskflow_api")
        flow_finished = api.wait_run_finished("tutorial_taskflow_api", flow["dag_run_id"], 120)
        flow_tis = api.task_instances("tutorial_taskflow_api", flow["dag_run_id"])
    assert finished["state"] == "success", tis
    assert {tid: ti["state"] for tid, ti in tis.items()} == {
        "start": "success",
        "produce": "success",
        "double": "success",
        "branch": "success",
        "report.write": "success",
        "skipped": "skipped",
        "end": "success",
    }
    assert flow_finished["state"] == "success", flow_tis
    assert {tid: ti["state"] for tid, ti in flow_tis.items()} == {
        "extract": "success",
        "transform": "success",
        "load": "success",
    }


def test_check_airflow_says_when_a_real_airflow_is_importable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake_airflow(tmp_path, monkeypatch)
    result = check_airflow(str(FIXTURES / "tutorial.py"))
    assert "a real Airflow is importable in this environment" in result.stderr
    assert "a real Airflow" not in result.stdout


def test_tries_and_the_fork_server_are_told_the_setting() -> None:
    """A try gets no KETCH__ settings: the flag reaches it in the DAG defaults' JSON."""
    from ketch.config import Settings
    from ketch.executors.try_environment import try_environment

    for on in (True, False):
        env, _ = try_environment(Settings(core={"airflow_compat": on}))  # type: ignore[arg-type]
        assert json.loads(env[PARSE_DEFAULTS_ENV])["airflow_compat"] is on
