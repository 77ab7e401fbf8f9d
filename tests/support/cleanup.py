"""Nothing the test session starts outlives it: processes and temporary folders.

- **A temporary folder per session, and one per test inside it.** :func:`begin_session`
  points ``TMPDIR`` (and :mod:`tempfile`) at a fresh ``ketch-tests-*`` folder inside the
  real one; the autouse ``ketch_home`` fixture gives each test a ``TMPDIR`` of its own
  inside that (:func:`test_tmpdir`). Whatever a test, a server, a task try or a shell
  task puts in the temporary folder — also when it is killed before it can clean up
  (``kill -9`` in the crash tests) — is inside the session's folder, which
  :func:`end_session` removes. pytest's own ``tmp_path`` folders stay where they were
  (``pytest-of-<user>``, the last three sessions kept, to read after a failure).
- **The TMPDIR tells whose a process is.** It is in the environment of every process a
  test starts, directly or not: the servers, the fork server and the tries it forks
  (``TMPDIR`` is one of the few variables a try gets), shell tasks. So a task try whose
  scheduler was stopped or killed — no longer anyone's child — is still found.
- **After each test** (:func:`kill_ketch_processes`, from ``ketch_home``, once the
  test's own fixtures have stopped what they started): every ketch process
  (``python -m ketch...``) of that test, or still a child of pytest, with all its
  descendants, is sent SIGCONT (a SIGSTOPped process acts on nothing else) and SIGKILL
  with its process group. A fixture that keeps a ketch process for longer than one test
  calls :func:`spare`.
- **At the end of the session** (:func:`end_session`, from ``pytest_sessionfinish`` and
  ``atexit``; SIGTERM is turned into an interrupt so it gets there too): the registered
  finalizers run (PostgreSQL servers are stopped and their folders removed), then every
  process of the session still alive — pytest's descendants, and any process with the
  session's TMPDIR — is killed the same way, and the folders are removed.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import psutil

SESSION_TMP_PREFIX = "ketch-tests-"

_spared: set[int] = set()
_dirs: list[Path] = []
_finalizers: list[Callable[[], None]] = []
_session_tmp: Path | None = None
_original_tmpdir: str | None = None
_ended = False
_test_counter = itertools.count(1)


# -- the session ---------------------------------------------------------------------------


def begin_session() -> Path:
    """The session's TMPDIR, and the safety nets that end it; returns the TMPDIR."""
    global _session_tmp, _original_tmpdir, _ended
    _ended = False
    _original_tmpdir = os.environ.get("TMPDIR")
    folder = Path(tempfile.mkdtemp(prefix=SESSION_TMP_PREFIX))
    # Servers run as other users (PostgreSQL as ``postgres``) keep their folders in here.
    folder.chmod(0o1777)
    os.environ["TMPDIR"] = str(folder)
    tempfile.tempdir = str(folder)
    _session_tmp = folder
    atexit.register(end_session)
    # ``timeout pytest ...`` and CI runners stop with SIGTERM, which skips atexit: make it
    # an interrupt, so the session's teardown and end still run.
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)
    return folder


def _interrupt(signum: int, _frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends it at once
    raise KeyboardInterrupt(f"signal {signum}")


def session_tmpdir() -> Path | None:
    return _session_tmp


def test_tmpdir() -> Path | None:
    """A new TMPDIR for one test, inside the session's (None before the session began)."""
    if _session_tmp is None:
        return None
    folder = _session_tmp / f"test-{next(_test_counter)}"
    folder.mkdir(mode=0o1777)
    folder.chmod(0o1777)
    return folder


def end_session() -> None:
    """Run the finalizers, kill every process of the session, remove the folders (once)."""
    global _ended, _session_tmp
    if _ended:
        return
    _ended = True
    while _finalizers:
        finalizer = _finalizers.pop()
        with contextlib.suppress(Exception):
            finalizer()
    victims = {p.pid: p for p in _descendants()}
    if _session_tmp is not None:
        for proc in _with_tmpdir(_session_tmp, exact=False):
            victims.setdefault(proc.pid, proc)
    kill_processes(victims.values(), reap_all=True)
    while _dirs:
        remove_dir(_dirs.pop())
    if _session_tmp is not None:
        remove_dir(_session_tmp)
        _session_tmp = None
        tempfile.tempdir = None
        if _original_tmpdir is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = _original_tmpdir


def at_session_end(finalizer: Callable[[], None]) -> None:
    """Call ``finalizer`` at the end of the session (also when it fails or is interrupted),
    before the remaining processes are killed; the last registered runs first."""
    _finalizers.append(finalizer)


def remove_at_exit(path: Path) -> None:
    """Remove ``path`` at the end of the session if nothing removed it before."""
    _dirs.append(path)


def remove_dir(path: Path) -> None:
    """Remove a folder even when a server running as another user wrote it."""
    if path.exists():
        shutil.rmtree(path, ignore_errors=True)


def spare(pid: int) -> None:
    """Do not kill ``pid`` (and its descendants) after each test, only at the session's end."""
    _spared.add(pid)


# -- processes -----------------------------------------------------------------------------


def is_ketch_process(proc: psutil.Process) -> bool:
    """``python -m ketch ...`` (any ketch module: a server, the fork server and the tries
    it forks, a parse child, a try) or the ``ketch`` console script."""
    try:
        argv = proc.cmdline()
    except psutil.Error:
        return False
    for i, arg in enumerate(argv[:-1]):
        module = argv[i + 1]
        if arg == "-m" and (module == "ketch" or module.startswith("ketch.")):
            return True
    return any(os.path.basename(arg) == "ketch" for arg in argv[:2])


def _descendants() -> list[psutil.Process]:
    try:
        return list(psutil.Process().children(recursive=True))
    except psutil.Error:
        return []


def _children(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return list(proc.children(recursive=True))
    except psutil.Error:
        return []


def _tmpdir_of(proc: psutil.Process) -> str | None:
    try:
        return proc.environ().get("TMPDIR")
    except psutil.Error:
        return None


def _with_tmpdir(folder: Path, *, exact: bool) -> list[psutil.Process]:
    """Processes whose TMPDIR is ``folder`` (or, not ``exact``, inside it)."""
    wanted = str(folder)
    found = []
    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue
        tmpdir = _tmpdir_of(proc)
        if tmpdir is not None and (
            tmpdir == wanted or (not exact and tmpdir.startswith(wanted + os.sep))
        ):
            found.append(proc)
    return found


def kill_ketch_processes(tmpdir: Path | None) -> list[str]:
    """Kill the ketch processes of a test that is over (those with its ``tmpdir``, and any
    still a child of pytest) with their descendants; a description of each one killed."""
    mine = os.getpid()
    candidates: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter():
        if proc.pid == mine or proc.pid in _spared or not is_ketch_process(proc):
            continue
        if _ppid(proc) == mine or (tmpdir is not None and _tmpdir_of(proc) == str(tmpdir)):
            candidates[proc.pid] = proc
    if not candidates:
        return []
    spared = _spared_tree(_descendants())
    victims: dict[int, psutil.Process] = {}
    for root in candidates.values():
        for proc in [root, *_children(root)]:
            if proc.pid not in spared:
                victims[proc.pid] = proc
    return kill_processes(victims.values())


def _spared_tree(descendants: Iterable[psutil.Process]) -> set[int]:
    spared: set[int] = set()
    for proc in descendants:
        if proc.pid in _spared:
            spared.add(proc.pid)
            spared.update(p.pid for p in _children(proc))
    return spared


def _describe(proc: psutil.Process) -> str:
    try:
        return f"{proc.pid} ({proc.status()}): {' '.join(proc.cmdline())[:200]}"
    except psutil.Error:
        return str(proc.pid)


def _protected_groups() -> set[int]:
    """Process groups never signalled as a whole: this process's, and its ancestors'
    (``make test`` runs pytest in make's group)."""
    groups = {os.getpgrp()}
    with contextlib.suppress(psutil.Error):
        for parent in psutil.Process().parents():
            with contextlib.suppress(OSError):
                groups.add(os.getpgid(parent.pid))
    return groups


def kill_processes(procs: Iterable[psutil.Process], *, reap_all: bool = False) -> list[str]:
    """SIGCONT, then SIGKILL each process and, when it leads its own process group (a
    server, the fork server, a try, a shell task), that whole group; wait until they are
    gone.

    A child of pytest is reaped only with ``reap_all`` (the end of the session): reaping
    it earlier would take its exit status from its ``Popen``.
    """
    me = os.getpid()
    procs = [p for p in procs if p.pid != me]
    if not procs:
        return []
    described = [_describe(p) for p in procs]
    protected = _protected_groups()
    for sig in (signal.SIGCONT, signal.SIGKILL):
        for proc in procs:
            with contextlib.suppress(OSError):
                group = os.getpgid(proc.pid)
                if group == proc.pid and group not in protected:
                    os.killpg(group, sig)
            with contextlib.suppress(OSError):
                os.kill(proc.pid, sig)
    deadline = time.monotonic() + 5
    waiting = {p.pid: p for p in procs}
    while waiting and time.monotonic() < deadline:
        for pid, proc in list(waiting.items()):
            if reap_all:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
            if _gone(proc):
                del waiting[pid]
        if waiting:
            time.sleep(0.02)
    return described


def _gone(proc: psutil.Process) -> bool:
    """Dead: no such process, or a zombie waiting for its parent."""
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False


def _ppid(proc: psutil.Process) -> int | None:
    try:
        return proc.ppid()
    except psutil.Error:
        return None
