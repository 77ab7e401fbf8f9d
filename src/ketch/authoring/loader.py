"""Import a DAG file as a fresh module and collect the DAGs it defines.

Each import gets a unique module name (``unusual_prefix_<sha1 of path>_<stem>``,
as Airflow does) so two files named ``etl.py`` in different folders never share
a module, and the file's folder is on ``sys.path`` so sibling helper modules
import. DAGs are collected both from the registry active during the import
(Airflow 3 auto-registers ``with DAG`` blocks and ``@dag`` calls) and from
module-level globals.

With ``[core] airflow_compat`` on, the Airflow import shim (:mod:`ketch.airflow_compat`)
is installed before the first DAG file is imported, in whichever process imports it (the
parse child, the task try, the fork server, the CLI).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

from ketch.authoring.dag import DAG, collecting_dags
from ketch.exceptions import DagDefinitionError


class DagNotFound(KeyError):
    """The file does not define the requested DAG."""


def module_name(fileloc: str) -> str:
    path = os.path.abspath(fileloc)
    digest = hashlib.sha1(path.encode()).hexdigest()
    return f"unusual_prefix_{digest}_{Path(path).stem}"


def import_file(fileloc: str) -> tuple[ModuleType, list[DAG]]:
    """Import ``fileloc``; return the module and the DAGs registered while importing."""
    path = os.path.abspath(fileloc)
    _install_airflow_compat()
    name = module_name(path)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    folder = os.path.dirname(path)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    sys.modules[name] = module
    try:
        with collecting_dags() as registered:
            spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module, registered


def _install_airflow_compat() -> None:
    from ketch import airflow_compat

    airflow_compat.install_if_enabled()


def collect_dags(fileloc: str) -> list[DAG]:
    """Every DAG ``fileloc`` defines, in definition order; each gets ``fileloc`` set."""
    path = os.path.abspath(fileloc)
    module, registered = import_file(path)
    found: list[DAG] = list(registered)
    for value in vars(module).values():
        if isinstance(value, DAG) and not any(value is d for d in found):
            found.append(value)
    by_id: dict[str, DAG] = {}
    for d in found:
        if d.dag_id in by_id:
            raise DagDefinitionError(f"{path} defines DAG {d.dag_id!r} twice")
        by_id[d.dag_id] = d
        d.fileloc = path
    return found


# DAG files imported ahead of time by a pre-warmed parent (the local executor's fork
# server): abspath -> (file identity when imported, its DAGs). A forked try inherits
# this and skips the import when the file is unchanged; otherwise it imports afresh.
_preloaded: dict[str, tuple[tuple[int, int, int], list[DAG]]] = {}


def _identity(path: str) -> tuple[int, int, int]:
    st = os.stat(path)
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def preload(fileloc: str) -> None:
    """Import ``fileloc`` now so processes forked later find its DAGs already built.

    Like Airflow's fork-based task runner, which parsed the DAG file before forking
    the task: a DAG that imports pandas, or defines 10,000 tasks, costs that once
    per file version instead of once per task try. Raises what the import raises.
    """
    path = os.path.abspath(fileloc)
    identity = _identity(path)
    cached = _preloaded.get(path)
    if cached is not None and cached[0] == identity:
        return
    _preloaded.pop(path, None)
    _preloaded[path] = (identity, collect_dags(path))


def load_dag(fileloc: str, dag_id: str) -> DAG:
    """The DAG ``dag_id`` from ``fileloc`` (what a task try runs)."""
    path = os.path.abspath(fileloc)
    cached = _preloaded.get(path)
    dags = cached[1] if cached is not None and cached[0] == _identity(path) else None
    for d in dags if dags is not None else collect_dags(path):
        if d.dag_id == dag_id:
            return d
    raise DagNotFound(f"DAG {dag_id!r} not found in {fileloc}")
