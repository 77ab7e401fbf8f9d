"""Descriptive DAG and task attributes are accepted, stored and shown, never an import error.

DAG: doc_md (a ``.md`` path is read, and ``@dag``'s docstring is the default), doc*,
description, tags, owner_links (checked as Airflow does), dag_display_name,
render_template_as_native_obj, max_consecutive_failed_dag_runs. Tasks: doc*, owner, email,
email_on_failure, email_on_retry, task_display_name, directly or through default_args
(``@task``'s docstring is the default doc_md). The REST API returns them with Airflow's names.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from ketch import DAG, BashTask, EmptyTask, dag, task
from ketch.api.app import create_app
from ketch.authoring.loader import collect_dags
from ketch.authoring.serialize import serialize_dag
from ketch.config import Settings, get_settings
from ketch.dag_processing.processor import DagProcessor
from ketch.exceptions import DagDefinitionError
from ketch.serialization import SerializedDag
from tests.support.web import local_client

START = datetime(2026, 1, 1, tzinfo=UTC)

# An Airflow tutorial-style file, written for ketch's imports: every descriptive argument.
DESCRIBED = '''
"""Module docstring (not the DAG's doc)."""
from datetime import datetime, timedelta, timezone
from textwrap import dedent

from ketch import DAG, BashOperator, task

with DAG(
    "described",
    default_args={
        "owner": "data-team",
        "depends_on_past": False,
        "email": ["oncall@example.com"],
        "email_on_failure": False,
        "email_on_retry": False,
        "retries": 1,
        "retry_delay": timedelta(minutes=5),
    },
    description="A simple tutorial DAG",
    doc_md="# Described\\nSome *markdown*.",
    doc="plain text",
    doc_rst="rst text",
    doc_json="{}",
    doc_yaml="a: 1",
    tags=["example", "tutorial", "example"],
    owner_links={"data-team": "https://example.com/team", "ops": "mailto:ops@example.com"},
    dag_display_name="Described DAG",
    render_template_as_native_obj=True,
    max_consecutive_failed_dag_runs=3,
    schedule=timedelta(days=1),
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
) as dag:
    t1 = BashOperator(task_id="print_date", bash_command="date", owner="alice")
    t1.doc_md = dedent(
        """\\
        #### Task Documentation
        Set after creation, as Airflow's tutorial does.
        """
    )
    t2 = BashOperator(
        task_id="sleep",
        bash_command="sleep 1",
        retries=3,
        task_display_name="Sleep a bit",
        doc_rst="rst",
        doc_json="[]",
        doc_yaml="b: 2",
        doc="txt",
        email="a@example.com; b@example.com",
        email_on_failure=True,
    )

    @task
    def documented():
        """Docstring of the task."""

    t1 >> [t2, documented()]
'''


def described(tmp_path: Path) -> DAG:
    path = tmp_path / "described.py"
    path.write_text(DESCRIBED)
    (found,) = collect_dags(str(path))
    return found


def test_every_descriptive_argument_is_accepted_and_stored(tmp_path: Path) -> None:
    d = described(tmp_path)
    assert d.description == "A simple tutorial DAG"
    assert d.doc_md == "# Described\nSome *markdown*."
    assert (d.doc, d.doc_rst, d.doc_json, d.doc_yaml) == ("plain text", "rst text", "{}", "a: 1")
    assert d.tags == ["example", "tutorial"]
    assert d.owner_links == {
        "data-team": "https://example.com/team",
        "ops": "mailto:ops@example.com",
    }
    assert d.dag_display_name == "Described DAG"
    assert d.render_template_as_native_obj is True
    assert d.max_consecutive_failed_dag_runs == 3
    t1, t2, doc = d.tasks["print_date"], d.tasks["sleep"], d.tasks["documented"]
    assert (t1.owner, t2.owner, doc.owner) == ("alice", "data-team", "data-team")
    assert d.owners == ["alice", "data-team"] and d.owner == "alice, data-team"
    assert t1.email == ["oncall@example.com"] and t2.email == ["a@example.com", "b@example.com"]
    assert (t1.email_on_failure, t1.email_on_retry) == (False, False)
    assert (t2.email_on_failure, t2.email_on_retry) == (True, False)
    assert t1.doc_md is not None and t1.doc_md.startswith("#### Task Documentation")
    assert (t2.doc, t2.doc_rst, t2.doc_json, t2.doc_yaml) == ("txt", "rst", "[]", "b: 2")
    assert t2.task_display_name == "Sleep a bit" and t1.task_display_name == "print_date"
    assert doc.doc_md == "Docstring of the task."
    assert t2.retries == 3 and t1.retries == 1


def test_defaults_match_airflow() -> None:
    with DAG("plain") as d:
        t = EmptyTask(task_id="t")
    assert d.dag_display_name == "plain" and d.owner_links == {} and d.tags == []
    assert d.render_template_as_native_obj is False and d.max_consecutive_failed_dag_runs == 0
    assert (d.doc_md, d.doc, d.description) == (None, None, None)
    assert t.owner == "airflow" and t.email == []
    assert (t.email_on_failure, t.email_on_retry) == (True, True)
    assert t.task_display_name == "t" and t.doc_md is None


def test_dag_function_docstring_is_doc_md_unless_given() -> None:
    @dag(schedule=None, start_date=START)
    def with_doc() -> None:
        """The flow's documentation."""
        EmptyTask(task_id="t")

    @dag(schedule=None, start_date=START, doc_md="explicit")
    def explicit() -> None:
        """Ignored."""
        EmptyTask(task_id="t")

    @dag(schedule=None, start_date=START, doc_md="")
    def empty_doc() -> None:
        """Used: an empty doc_md counts as unset, as in Airflow."""

    assert with_doc().doc_md == "The flow's documentation."
    assert explicit().doc_md == "explicit"
    assert empty_doc().doc_md == "Used: an empty doc_md counts as unset, as in Airflow."


def test_task_docstring_is_doc_md_unless_a_doc_argument_is_given() -> None:
    with DAG("taskdocs") as d:

        @task
        def plain() -> None:
            """From the docstring."""

        @task(doc="given")
        def other_doc() -> None:
            """Not used: a doc argument was given."""

        @task.bash
        def shell() -> str:
            """Bash docstring."""
            return "true"

        plain()
        other_doc()
        shell()
    assert d.tasks["plain"].doc_md == "From the docstring."
    assert d.tasks["other_doc"].doc_md is None and d.tasks["other_doc"].doc == "given"
    assert d.tasks["shell"].doc_md == "Bash docstring."


def test_doc_md_naming_a_markdown_file_is_read(tmp_path: Path) -> None:
    doc = tmp_path / "README.md"
    doc.write_text("# From a file\n")
    assert DAG("from_file", doc_md=str(doc)).doc_md == "# From a file\n"
    missing = str(tmp_path / "missing.md")
    assert DAG("missing_file", doc_md=missing).doc_md == missing


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"owner_links": {"me": "not a link"}}, "wrong link format"),
        ({"owner_links": {"me": "mailto:"}}, "wrong link format"),
        ({"owner_links": ["https://x.example"]}, "owner_links must be a dict"),
        ({"tags": ["x" * 101]}, "tag cannot be longer than 100 characters"),
        ({"tags": "single"}, "tags must be a list of strings"),
        ({"max_consecutive_failed_dag_runs": -1}, "max_consecutive_failed_dag_runs"),
        ({"max_consecutive_failed_dag_runs": "3"}, "max_consecutive_failed_dag_runs"),
        ({"dag_display_name": 3}, "dag_display_name must be a string"),
        ({"doc_md": ["x"]}, "doc_md must be a string"),
    ],
)
def test_bad_dag_attributes_are_clear_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(DagDefinitionError, match=message):
        DAG("bad", **kwargs)


def test_owner_links_changed_after_creation_are_checked_at_parse_time() -> None:
    d = DAG("later", owner_links={"a": "https://a.example"})
    d.owner_links["b"] = "nope"
    with pytest.raises(DagDefinitionError, match="wrong link format"):
        d.validate()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"owner": 3}, "owner must be a string"),
        ({"email": 3}, "email must be a string or a list of strings"),
        ({"task_display_name": ["x"]}, "task_display_name must be a string"),
        ({"doc_yaml": {"a": 1}}, "doc_yaml must be a string"),
    ],
)
def test_bad_task_attributes_are_clear_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(DagDefinitionError, match=message), DAG("bad_task"):
        BashTask(task_id="t", bash_command="true", **kwargs)


def serialized_described(tmp_path: Path) -> SerializedDag:
    return serialize_dag(described(tmp_path), tmp_path)


def test_serialized_form_keeps_them(tmp_path: Path) -> None:
    s = SerializedDag.model_validate_json(serialized_described(tmp_path).model_dump_json())
    assert (s.dag_display_name, s.max_consecutive_failed_dag_runs) == ("Described DAG", 3)
    assert s.render_template_as_native_obj is True and s.doc_rst == "rst text"
    assert s.owner_links["ops"] == "mailto:ops@example.com"
    assert s.owners == ["alice", "data-team"]
    sleep = s.tasks["sleep"]
    assert (sleep.task_display_name, sleep.owner, sleep.doc_yaml) == (
        "Sleep a bit",
        "data-team",
        "b: 2",
    )
    assert sleep.email == ["a@example.com", "b@example.com"]
    assert s.tasks["print_date"].task_display_name is None
    assert s.tasks["print_date"].retry_delay == timedelta(minutes=5).total_seconds()


@pytest.fixture
def client(sqlite_engine: Engine, tmp_path: Path) -> Iterator[TestClient]:
    """The file goes through the real DAG processor (a parse child), then the web app."""
    folder = tmp_path / "dags"
    folder.mkdir()
    (folder / "described.py").write_text(DESCRIBED)
    settings = Settings(core={"dags_folder": str(folder)})  # type: ignore[arg-type]
    summary = DagProcessor(settings, sqlite_engine).parse_all()
    assert summary.errors == {} and summary.dags == 1, summary
    with local_client(create_app(get_settings())) as c:
        yield c


def test_rest_returns_them_with_airflow_names(client: TestClient) -> None:
    detail = client.get("/api/v1/dags/described").json()
    assert detail["dag_display_name"] == "Described DAG"
    assert detail["owners"] == ["alice", "data-team"]
    assert detail["description"] == "A simple tutorial DAG"
    assert detail["tags"] == ["example", "tutorial"]
    assert detail["doc_md"] == "# Described\nSome *markdown*."
    assert (detail["doc"], detail["doc_rst"], detail["doc_json"], detail["doc_yaml"]) == (
        "plain text",
        "rst text",
        "{}",
        "a: 1",
    )
    assert detail["owner_links"]["data-team"] == "https://example.com/team"
    assert detail["render_template_as_native_obj"] is True
    assert detail["max_consecutive_failed_dag_runs"] == 3
    listed = client.get("/api/v1/dags").json()["dags"]
    assert [(d["dag_display_name"], d["owners"]) for d in listed] == [
        ("Described DAG", ["alice", "data-team"])
    ]
    tasks = {t["task_id"]: t for t in client.get("/api/v1/dags/described/tasks").json()["tasks"]}
    sleep = tasks["sleep"]
    assert sleep["task_display_name"] == "Sleep a bit"
    assert tasks["print_date"]["task_display_name"] == "print_date"
    assert (sleep["owner"], sleep["email_on_failure"], sleep["email_on_retry"]) == (
        "data-team",
        True,
        False,
    )
    assert sleep["email"] == ["a@example.com", "b@example.com"]
    assert (sleep["doc"], sleep["doc_rst"], sleep["doc_json"], sleep["doc_yaml"]) == (
        "txt",
        "rst",
        "[]",
        "b: 2",
    )
    assert tasks["documented"]["doc_md"] == "Docstring of the task."
    assert [t["task_id"] for t in detail["tasks"]] == ["print_date", "sleep", "documented"]
    assert detail["tasks"][1]["task_display_name"] == "Sleep a bit"
