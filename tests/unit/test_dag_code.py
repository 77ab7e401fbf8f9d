"""A DAG file's source in the database (dag_code): written by the DAG processor with the
file's DAGs, only when the file changed; read by the REST API and the source page."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from ketch.dag_processing.dag_code import MAX_SOURCE_BYTES
from ketch.db.models import DagCode
from tests.unit.test_dag_processor import good, processor, write
from tests.unit.test_web_pages import Web, _web


def codes(engine: Engine) -> dict[str, tuple[str, datetime]]:
    with Session(engine) as s:
        return {
            Path(c.fileloc).name: (c.source_code, c.last_updated)
            for c in s.scalars(select(DagCode))
        }


def test_processor_stores_the_source_and_updates_it_only_when_the_file_changes(
    engine: Engine, tmp_path: Path
) -> None:
    path = good(tmp_path, "one.py", "one")
    proc = processor(engine, tmp_path)
    proc.parse_all()
    text, first = codes(engine)["one.py"]
    assert text == path.read_text() and 'DAG("one"' in text
    proc.parse_all()  # nothing changed: nothing written
    assert codes(engine)["one.py"] == (text, first)
    # A comment changes the file but not the DAG: the source follows the file.
    path.write_text(path.read_text() + "# a comment\n")
    proc.parse_all()
    text2, second = codes(engine)["one.py"]
    assert text2.endswith("# a comment\n") and second >= first


def test_a_broken_file_keeps_the_last_good_source_and_files_without_dags_store_none(
    engine: Engine, tmp_path: Path
) -> None:
    good(tmp_path, "one.py", "one")
    proc = processor(engine, tmp_path)
    proc.parse_all()
    good_text = codes(engine)["one.py"][0]
    write(tmp_path, "one.py", "from ketch import DAG\nraise RuntimeError('broken')\n")
    write(tmp_path, "nodag.py", "from ketch import DAG\nx = 1\n")
    proc.parse_all()
    assert codes(engine) == {"one.py": (good_text, codes(engine)["one.py"][1])}


def test_a_file_over_the_limit_stores_a_note(engine: Engine, tmp_path: Path) -> None:
    path = good(tmp_path, "big.py", "big")
    path.write_text(path.read_text() + "#" * MAX_SOURCE_BYTES + "\n")
    processor(engine, tmp_path).parse_all()
    text = codes(engine)["big.py"][0]
    assert "is not stored" in text and "limit" in text and len(text) < 1000


@pytest.fixture
def web(sqlite_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[Web]:
    yield from _web(sqlite_engine, monkeypatch)


TRICKY = """
from ketch import DAG, EmptyTask
# <script>alert("x")</script> & friends
with DAG("tricky", dag_display_name="Tricky one"):
    EmptyTask(task_id="t")
"""


def test_api_returns_airflow_3s_shape_and_numbers_versions(web: Web, tmp_path: Path) -> None:
    path = write(tmp_path, "tricky.py", TRICKY)
    proc = processor(web.engine, tmp_path)
    proc.parse_all()
    response = web.get("/api/v1/dagSources/tricky")
    assert response.status_code == 200, response.text
    assert response.json() == {
        "content": path.read_text(),
        "dag_id": "tricky",
        "version_number": 1,
        "dag_display_name": "Tricky one",
    }
    path.write_text(path.read_text().replace('task_id="t"', 'task_id="t2"'))
    proc.parse_all()
    body = web.get("/api/v1/dagSources/tricky").json()
    assert body["version_number"] == 2 and 'task_id="t2"' in body["content"]
    text = web.get("/api/v1/dagSources/tricky", headers={"Accept": "text/plain"})
    assert text.status_code == 200 and text.text == path.read_text()
    assert text.headers["content-type"].startswith("text/plain")
    assert web.get("/api/v1/dagSources/tricky", headers={"Accept": "image/png"}).status_code == 406
    assert web.get("/api/v1/dagSources/tricky?version_number=2").json()["version_number"] == 2
    old = web.get("/api/v1/dagSources/tricky?version_number=1")
    assert old.status_code == 404 and "keeps only the latest source" in old.json()["detail"]
    missing = web.get("/api/v1/dagSources/nope")
    assert missing.status_code == 404 and "nope" in missing.json()["detail"]
    assert web.get("/api/v1/dagSources/tricky", role=None).status_code == 401


def test_api_404_names_a_dag_without_stored_source(web: Web, tmp_path: Path) -> None:
    write(tmp_path, "tricky.py", TRICKY)
    processor(web.engine, tmp_path).parse_all()
    with Session(web.engine) as s, s.begin():
        s.query(DagCode).delete()
    response = web.get("/api/v1/dagSources/tricky")
    assert response.status_code == 404
    assert "no source stored for DAG 'tricky'" in response.json()["detail"]
    page = web.get("/dags/tricky/source")
    assert page.status_code == 404 and "no source stored" in page.text


def test_source_page_escapes_the_code_and_numbers_its_lines(web: Web, tmp_path: Path) -> None:
    path = write(tmp_path, "tricky.py", TRICKY)
    processor(web.engine, tmp_path).parse_all()
    response = web.get("/dags/tricky/source")
    assert response.status_code == 200, response.text
    text = response.text
    assert "<script>alert" not in text
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; friends" in text
    lines = path.read_text().splitlines()
    numbers = re.findall(r'<span class="line" id="L(\d+)"><span class="ln"', text)
    assert numbers == [str(n) for n in range(1, len(lines) + 1)]
    assert f"<code>{path}</code>" in text  # the file path
    assert 'href="/dags/tricky/source"' in web.get("/dags/tricky").text
    assert web.get("/dags/nope/source").status_code == 404
