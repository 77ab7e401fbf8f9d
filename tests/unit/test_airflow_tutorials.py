"""DAG files shaped like Airflow's own tutorial examples (``tutorial``,
``tutorial_taskflow_api``, ``tutorial_dag``) are reported runnable by ``ketch dags
check-airflow`` and run to success through ``ketch dags test`` with ``[core] airflow_compat``.

They exercise what those examples need: ``depends_on_past`` as a task argument,
``macros.ds_add`` in a Jinja loop, ``@task(multiple_outputs=True)`` with ``result["key"]``,
and ``ti.xcom_push``/``ti.xcom_pull`` with a key.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from ketch import airflow_compat
from ketch import cli as ketch_cli
from ketch.config import get_settings

TUTORIALS = Path(__file__).resolve().parent.parent / "fixtures" / "airflow_tutorials"


def _forget_airflow_modules() -> None:
    airflow_compat.uninstall()
    for name in [n for n in sys.modules if n == "airflow" or n.startswith("airflow.")]:
        del sys.modules[name]


@pytest.fixture(autouse=True)
def airflow_compat_on(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``[core] airflow_compat = true``; no shim or ``airflow`` module outlives the test."""
    _forget_airflow_modules()
    importlib.invalidate_caches()
    monkeypatch.setenv("KETCH__CORE__AIRFLOW_COMPAT", "true")
    get_settings.cache_clear()
    yield
    _forget_airflow_modules()


def ketch(*args: str) -> Result:
    return CliRunner().invoke(ketch_cli.cli, list(args), catch_exceptions=False)


def test_check_airflow_reports_every_tutorial_runnable() -> None:
    result = ketch("dags", "check-airflow", str(TUTORIALS))
    assert result.exit_code == 0, result.output
    for name in ("tutorial", "tutorial_dag", "tutorial_taskflow_api"):
        assert f"{name}.py: will run (DAGs: {name})" in result.output
    assert "3 of 3 files will run on ketch" in result.output


@pytest.mark.parametrize(
    ("dag_id", "expected"),
    [
        ("tutorial", ["day 2026-02-01 plus a week 2026-02-08", "  templated: success"]),
        ("tutorial_taskflow_api", ["Total is 6.75", "  load: success"]),
        ("tutorial_dag", ["loaded {'total': 3.75}", "  load: success"]),
    ],
)
def test_each_tutorial_runs_to_success_with_dags_test(dag_id: str, expected: list[str]) -> None:
    result = ketch(
        "dags", "test", dag_id, "2026-02-01T00:00:00+00:00", "--dags-folder", str(TUTORIALS)
    )
    assert result.exit_code == 0, result.output
    for line in expected:
        assert line in result.output
    assert f"of DAG {dag_id}: success" in result.output
