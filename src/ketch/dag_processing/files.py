"""Which files of a DAGs folder are DAG files.

Like Airflow's safe mode, a ``.py`` file is parsed only if it mentions both
"dag" and "ketch" (case-insensitive). With ``[core] airflow_compat`` a file that passes
Airflow's own heuristic (it mentions "airflow", and "dag" or "asset") is parsed too. A ``.ketchignore`` file holds regular
expressions (one per line, ``#`` comments) matched against paths relative to
the folder containing the ``.ketchignore``, as ``.airflowignore`` does.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

IGNORE_FILE = ".ketchignore"
BUNDLED_EXAMPLES = Path(__file__).resolve().parent.parent / "example_dags"


def _ignore_patterns(folder: Path) -> list[re.Pattern[str]]:
    path = folder / IGNORE_FILE
    if not path.is_file():
        return []
    patterns = []
    for line in path.read_text(errors="replace").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            try:
                patterns.append(re.compile(line))
            except re.error:
                continue
    return patterns


def might_contain_dag(path: Path, airflow_compat: bool = False) -> bool:
    try:
        content = path.read_bytes().lower()
    except OSError:
        return False
    if b"dag" in content and b"ketch" in content:
        return True
    # Airflow's might_contain_dag_via_default_heuristic.
    return airflow_compat and b"airflow" in content and (b"dag" in content or b"asset" in content)


def _ignored(path: Path, patterns: list[tuple[Path, re.Pattern[str]]]) -> bool:
    return any(p.search(str(path.relative_to(base))) for base, p in patterns)


def list_dag_files(root: Path, airflow_compat: bool = False) -> list[Path]:
    """The DAG files under ``root``, sorted, honouring ``.ketchignore`` files on the way down
    (with ``airflow_compat``, Airflow DAG files too)."""
    if not root.is_dir():
        return []
    found: list[Path] = []
    inherited: list[tuple[Path, re.Pattern[str]]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        folder = Path(dirpath)
        inherited = [(base, p) for base, p in inherited if folder.is_relative_to(base)]
        inherited += [(folder, p) for p in _ignore_patterns(folder)]

        dirnames[:] = sorted(
            d
            for d in dirnames
            if not d.startswith((".", "__")) and not _ignored(folder / d, inherited)
        )
        for name in sorted(filenames):
            path = folder / name
            if (
                name.endswith(".py")
                and not _ignored(path, inherited)
                and might_contain_dag(path, airflow_compat)
            ):
                found.append(path)
    return found


def is_dag_file(path: Path, root: Path, airflow_compat: bool = False) -> bool:
    """Whether one changed file would be listed by :func:`list_dag_files` (no folder walk)."""
    if path.suffix != ".py" or not path.is_file() or not path.is_relative_to(root):
        return False
    folder = root
    parts = path.relative_to(root).parts
    for i, part in enumerate(parts):
        for p in _ignore_patterns(folder):
            if p.search(str(Path(*parts[i:]))):
                return False
        if i < len(parts) - 1:
            if part.startswith((".", "__")):
                return False
            folder = folder / part
    return might_contain_dag(path, airflow_compat)
