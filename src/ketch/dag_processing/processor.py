"""The DAG processor: parse DAG files in child processes and keep the database in step.

- A full pass lists the DAG files, parses them in parallel child processes
  (``parse_file``, killed after ``[core] dagbag_import_timeout``) and writes each
  file's outcome in its own transaction as soon as it arrives, so the first DAGs
  are schedulable before the slowest file finishes.
- A file that fails keeps its previously stored DAGs (the last good state) and
  gets an ``import_error`` row; other files are unaffected.
- ``start()`` runs a full pass, then watches the folders (watchfiles) and
  re-parses changed files at once, with a full rescan every
  ``[dag_processor] refresh_interval`` as a safety net.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ketch.authoring._defaults import PARSE_DEFAULTS_ENV, defaults_from_settings
from ketch.dag_processing.files import BUNDLED_EXAMPLES, is_dag_file, list_dag_files
from ketch.dag_processing.store import (
    StoreOutcome,
    deactivate_missing,
    forget_file,
    store_result,
)

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from ketch.config import Settings

log = logging.getLogger(__name__)

MAX_PARALLEL_PARSES = 4


@dataclass
class FileResult:
    """What parsing one file produced: serialized DAGs, or an error with its traceback."""

    path: Path
    root: Path
    dags: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    # The error in one line: the exception's class and message, the DAG file's line.
    error_type: str | None = None
    error_message: str | None = None
    lineno: int | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def relative_path(self) -> str:
        try:
            return self.path.relative_to(self.root).as_posix()
        except ValueError:
            return str(self.path)


@dataclass
class ParseSummary:
    files: int = 0
    dags: int = 0
    errors: dict[str, str] = field(default_factory=dict)
    changed: bool = False
    duration: float = 0.0


def parse_in_child(path: Path, root: Path, timeout: float, env: dict[str, str]) -> FileResult:
    """Run the parse child for one file; a timeout kills its whole process group."""
    cmd = [sys.executable, "-m", "ketch.dag_processing.parse_file", str(path), str(root)]
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(proc)
        return FileResult(
            path,
            root,
            error=f"DAG file {path} timed out after {timeout:g}s",
            error_message=f"import timed out after {timeout:g}s ([core] dagbag_import_timeout)",
        )
    try:
        data = json.loads(out)
    except ValueError:
        tail = err.decode(errors="replace")[-4000:]
        return FileResult(
            path,
            root,
            error=f"parsing {path} crashed (exit code {proc.returncode}):\n{tail}",
            error_message=f"parsing crashed (exit code {proc.returncode})",
        )
    if not data.get("ok"):
        lineno = data.get("lineno")
        return FileResult(
            path,
            root,
            error=str(data.get("error")),
            error_type=data.get("error_type") or None,
            error_message=data.get("error_message"),
            lineno=lineno if isinstance(lineno, int) else None,
        )
    return FileResult(path, root, dags=list(data.get("dags") or []))


def error_log_line(result: FileResult, error: str) -> str:
    """The one line the scheduler logs for a file that failed to import."""
    where = f"DAG file {result.relative_path}"
    if result.lineno is not None:
        where += f" line {result.lineno}"
    message = result.error_message
    if message is None:  # an error of the store (a DAG defined in two files)
        message = next((line for line in error.splitlines() if line.strip()), error)
    what = f"{result.error_type}: {message}" if result.error_type else message
    return f"{where}: {what} (ketch dags errors shows the traceback)"


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return -1.0


class DagProcessor:
    """Parses the DAGs folder into ``dag`` / ``dag_version`` / ``import_error`` rows."""

    def __init__(
        self, settings: Settings, engine: Engine, on_change: Callable[[], None] | None = None
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.on_change = on_change
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one pass at a time (the thread and parse_all callers)
        # mtime of each file when it was last parsed: the stat scan's memory.
        self._mtimes: dict[Path, float] = {}
        # The import error last logged per file: each is logged once, not every rescan.
        self._logged_errors: dict[Path, str] = {}
        # DAG files' top-level code runs in these children: they get what a task try gets
        # (an allow-list, never the database URL or a key), plus the DAG defaults.
        from ketch.executors.try_environment import try_environment

        self._child_env = {
            **try_environment(settings)[0],
            PARSE_DEFAULTS_ENV: json.dumps(defaults_from_settings(settings)),
        }

    # ----- folders --------------------------------------------------------------

    def roots(self) -> list[Path]:
        """The folders DAG files come from: dags_folder (or the examples), plus examples if asked."""
        folder = self.settings.core.dags_folder
        roots = [Path(folder).expanduser().resolve()] if folder else [BUNDLED_EXAMPLES]
        if self.settings.core.load_examples and BUNDLED_EXAMPLES not in roots:
            roots.append(BUNDLED_EXAMPLES)
        return roots

    def list_files(self) -> list[tuple[Path, Path]]:
        return [
            (path, root)
            for root in self.roots()
            for path in list_dag_files(root, self.settings.core.airflow_compat)
        ]

    def _root_of(self, path: Path) -> Path | None:
        for root in self.roots():
            if path.is_relative_to(root):
                return root
        return None

    # ----- passes ---------------------------------------------------------------

    def parse_all(self) -> ParseSummary:
        """A full synchronous pass over every DAG file; files gone since are forgotten."""
        with self._lock:
            started = time.monotonic()
            files = self.list_files()
            summary = self._parse_and_store(files)
            summary.changed |= deactivate_missing(self.engine, {str(p) for p, _ in files})
            listed = {p for p, _ in files}
            for gone in set(self._logged_errors) - listed:
                del self._logged_errors[gone]
            summary.duration = time.monotonic() - started
        self._notify(summary.changed)
        return summary

    def parse_paths(self, paths: Iterable[Path]) -> ParseSummary:
        """Re-parse just these files (changed, added or deleted)."""
        with self._lock:
            started = time.monotonic()
            to_parse: list[tuple[Path, Path]] = []
            changed = False
            for path in sorted(set(paths)):
                root = self._root_of(path)
                if root is not None and is_dag_file(path, root, self.settings.core.airflow_compat):
                    to_parse.append((path, root))
                else:
                    changed |= forget_file(self.engine, str(path))
                    self._logged_errors.pop(path, None)
            summary = self._parse_and_store(to_parse)
            summary.changed |= changed
            summary.duration = time.monotonic() - started
        self._notify(summary.changed)
        return summary

    def _parse_and_store(self, files: list[tuple[Path, Path]]) -> ParseSummary:
        summary = ParseSummary(files=len(files))
        timeout = self.settings.core.dagbag_import_timeout
        retry: list[FileResult] = []
        if not files:
            return summary
        for path, _root in files:
            self._mtimes[path] = _mtime(path)
        workers = min(MAX_PARALLEL_PARSES, len(files))
        final: dict[Path, tuple[FileResult, StoreOutcome]] = {}
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dag-parse") as pool:
            futures = [
                pool.submit(parse_in_child, path, root, timeout, self._child_env)
                for path, root in files
            ]
            for future in as_completed(futures):
                result = future.result()
                outcome = self._store(result)
                if outcome.duplicate:
                    retry.append(result)
                self._account(summary, result, outcome)
                final[result.path] = (result, outcome)
        # A DAG that moved between files may have met its old copy first: try once more.
        for result in retry:
            outcome = self._store(result)
            outcome.error_cleared = False  # the row it clears was written by this pass
            self._account(summary, result, outcome, recount=False)
            final[result.path] = (result, outcome)
        for result, outcome in final.values():
            self._log_import_outcome(result, outcome)
        return summary

    def _log_import_outcome(self, result: FileResult, outcome: StoreOutcome) -> None:
        """One WARNING per new or changed import error (the scheduler's log says what the
        database says), one INFO when a file that had one imports again."""
        if outcome.error:
            line = error_log_line(result, outcome.error)
            if self._logged_errors.get(result.path) != line:
                self._logged_errors[result.path] = line
                log.warning("%s", line)
        elif self._logged_errors.pop(result.path, None) is not None or outcome.error_cleared:
            log.info("DAG file %s imports again: its import error is cleared", result.relative_path)

    def _store(self, result: FileResult) -> StoreOutcome:
        return store_result(
            self.engine,
            result,
            paused_at_creation=self.settings.core.dags_are_paused_at_creation,
        )

    @staticmethod
    def _account(
        summary: ParseSummary, result: FileResult, outcome: StoreOutcome, recount: bool = True
    ) -> None:
        summary.changed |= outcome.changed
        key = str(result.path)
        if outcome.error:
            summary.errors[key] = outcome.error
        else:
            summary.errors.pop(key, None)
        if recount:
            summary.dags += outcome.stored

    def _notify(self, changed: bool) -> None:
        if changed and self.on_change is not None:
            try:
                self.on_change()
            except Exception:
                log.exception("on_change callback failed")

    # ----- background thread ----------------------------------------------------

    def start(self) -> None:
        """Full pass, then watch for changes, in a background thread."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="dag-processor", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _safely(self, func: Callable[[], Any]) -> None:
        try:
            func()
        except Exception:
            log.exception("DAG processor pass failed; continuing")

    def _run(self) -> None:
        self._safely(self.parse_all)
        next_full = time.monotonic() + self.settings.dag_processor.refresh_interval
        while not self._stop.is_set():
            roots = [r for r in self.roots() if r.is_dir()]
            try:
                next_full = self._watch(roots, next_full) if roots else self._idle(next_full)
            except Exception:
                log.exception("watching the DAGs folder failed; retrying")
                self._stop.wait(1.0)

    def _full_pass_if_due(self, next_full: float) -> float:
        if time.monotonic() < next_full:
            return next_full
        self._safely(self.parse_all)
        return time.monotonic() + self.settings.dag_processor.refresh_interval

    def _idle(self, next_full: float) -> float:
        self._stop.wait(1.0)
        return self._full_pass_if_due(next_full)

    def _watch(self, roots: list[Path], next_full: float) -> float:
        import watchfiles

        for changes in watchfiles.watch(
            *roots,
            stop_event=self._stop,
            debounce=50,
            step=20,
            rust_timeout=1000,
            yield_on_timeout=True,
            raise_interrupt=False,
            ignore_permission_denied=True,
        ):
            if changes:
                self._safely(lambda c=changes: self._handle_changes(c))  # type: ignore[misc]
            else:
                self._safely(self._stat_scan)
            next_full = self._full_pass_if_due(next_full)
            if self._stop.is_set():
                break
        return next_full

    def _stat_scan(self) -> None:
        """Re-parse files whose mtime changed, or that appeared or went, since last parsed.

        The watcher makes changes visible at once; this scan (a stat per file, once a
        second) catches what a watcher can miss: a file written between the first full
        pass and the watch starting, network filesystems, git-sync's symlink swaps.
        """
        listed = {path for path, _root in self.list_files()}
        stale = {p for p in listed if self._mtimes.get(p) != _mtime(p)}
        gone = set(self._mtimes) - listed
        for path in gone:
            self._mtimes.pop(path, None)
        if stale or gone:
            self.parse_paths(stale | gone)

    def _handle_changes(self, changes: set[tuple[Any, str]]) -> None:
        paths = {Path(p) for _, p in changes}
        if any(p.name == ".ketchignore" for p in paths):
            self.parse_all()
            return
        py = {p for p in paths if p.suffix == ".py"}
        if py:
            self.parse_paths(py)
