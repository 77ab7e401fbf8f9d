"""``ketch dags check-airflow PATH``: will these Airflow DAG files run on ketch, and why not.

Each file is checked twice, with no scheduler and no database:

1. statically: a syntax error, and every ``airflow`` import (at the top or inside a
   function, where it would fail only when the task runs) that ketch's shim does not
   provide, with what to use instead;
2. by importing it exactly as the DAG processor would, with the shim on: the parse child
   (``python -m ketch.dag_processing.parse_file``) in its own process, with the import
   timeout; its import error, or the DAGs it defines.

A file will run when both find nothing wrong.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ketch.airflow_compat import table

# What a missing third-party module most likely needs.
_MODULE_HINTS = {
    "pendulum": "pendulum is not installed: `pip install pendulum` (in the task image too)",
}


@dataclass
class Problem:
    """One reason a file will not run (``line`` in the file, when known)."""

    message: str
    line: int | None = None

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}" if self.line else self.message


@dataclass
class FileReport:
    path: Path
    problems: list[Problem] = field(default_factory=list)
    dag_ids: list[str] = field(default_factory=list)

    @property
    def will_run(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": str(self.path),
            "will_run": self.will_run,
            "dag_ids": self.dag_ids,
            "problems": [{"line": p.line, "message": p.message} for p in self.problems],
        }


def _airflow_imports(tree: ast.AST) -> list[tuple[int, str, str | None, bool]]:
    """(line, module, name or None for ``import module``, inside a function) of each
    airflow import."""
    found: list[tuple[int, str, str | None, bool]] = []

    def visit(node: ast.AST, nested: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = nested or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if table.is_airflow_name(alias.name):
                        found.append((child.lineno, alias.name, None, nested))
            elif (
                isinstance(child, ast.ImportFrom)
                and child.level == 0
                and child.module
                and table.is_airflow_name(child.module)
            ):
                for alias in child.names:
                    found.append((child.lineno, child.module, alias.name, nested))
            visit(child, inner)

    visit(tree, False)
    return found


def static_problems(source: str, filename: str) -> list[Problem]:
    """A syntax error, or the airflow imports outside the subset."""
    try:
        tree = ast.parse(source, filename=filename)
    except SyntaxError as exc:
        return [Problem(f"syntax error: {exc.msg}", exc.lineno)]
    problems = []
    for line, module, name, nested in _airflow_imports(tree):
        when = " (inside a function: fails when the task runs)" if nested else ""
        if name is None:
            if not table.known_module(module):
                problems.append(
                    Problem(f"import {module}: {table.suggestion(module, '')}{when}", line)
                )
            continue
        if name == "*":
            continue
        if table.known_module(f"{module}.{name}"):  # from airflow.operators import python
            continue
        try:
            table.resolve(module, name)
        except ImportError as exc:
            why = str(exc).split("compatibility): ", 1)[-1]
            problems.append(Problem(f"from {module} import {name}: {why}{when}", line))
    return problems


def _parse_env(defaults: dict[str, Any]) -> dict[str, str]:
    from ketch.authoring._defaults import PARSE_DEFAULTS_ENV

    env = dict(os.environ)
    env[PARSE_DEFAULTS_ENV] = json.dumps({**defaults, "airflow_compat": True})
    return env


def import_problems(
    path: Path, root: Path, env: dict[str, str], timeout: float
) -> tuple[list[Problem], list[str]]:
    """Import ``path`` as the DAG processor's parse child would: its problems and DAG ids."""
    command = [sys.executable, "-m", "ketch.dag_processing.parse_file", str(path), str(root)]
    try:
        proc = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return [Problem(f"import took longer than {timeout:g} s (dagbag_import_timeout)")], []
    try:
        result = json.loads(proc.stdout)
    except ValueError:
        tail = proc.stderr.strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
        return [Problem(f"the import crashed: {tail[0]}")], []
    if result["ok"]:
        dag_ids = [d["dag_id"] for d in result["dags"]]
        return [], dag_ids
    message = f"import error: {result['error_type']}: {result['error_message']}"
    if result["error_type"] == "ModuleNotFoundError":
        missing = result["error_message"].partition("'")[2].partition("'")[0].split(".")[0]
        if missing in _MODULE_HINTS:
            message += f" ({_MODULE_HINTS[missing]})"
    return [Problem(message, result.get("lineno"))], []


def files_to_check(target: Path) -> list[tuple[Path, Path]]:
    """(file, its DAGs folder): a file as given, or the DAG files of a folder (the DAG
    processor's filter with airflow_compat on, .ketchignore honoured)."""
    from ketch.dag_processing.files import list_dag_files

    target = target.resolve()
    if target.is_dir():
        return [(p, target) for p in list_dag_files(target, airflow_compat=True)]
    return [(target, target.parent)]


def check_file(path: Path, root: Path, env: dict[str, str], timeout: float) -> FileReport:
    report = FileReport(path)
    try:
        source = path.read_text(errors="replace")
    except OSError as exc:
        report.problems.append(Problem(f"cannot read: {exc.strerror}"))
        return report
    static = static_problems(source, str(path))
    report.problems.extend(static)
    if any(p.message.startswith("syntax error") for p in static):
        return report
    problems, report.dag_ids = import_problems(path, root, env, timeout)
    seen = {p.line for p in static}
    # The import error of an unsupported import the static check already explained is
    # the same problem: keep one line for it.
    report.problems.extend(
        p for p in problems if not (p.line in seen and "ketch's Airflow" in p.message)
    )
    return report


def check(
    target: Path,
    *,
    import_timeout: float = 30.0,
    defaults: dict[str, Any] | None = None,
    jobs: int | None = None,
) -> list[FileReport]:
    """Check ``target`` (a file or a folder); one report per file, in path order."""
    if defaults is None:
        from ketch.authoring._defaults import parse_defaults

        defaults = parse_defaults()
    env = _parse_env(defaults)
    files = files_to_check(target)
    workers = max(1, min(jobs or (os.cpu_count() or 1), len(files) or 1, 8))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda f: check_file(f[0], f[1], env, import_timeout), files))
