"""Nothing the test session starts outlives it: processes and temporary folders.

- **One temporary folder per session.** :func:`begin_session` points ``TMPDIR`` (and
  :mod:`tempfile`) at a fresh ``ketch-tests-*`` folder inside the real one, so whatever a
  test, a server, a task try or a shell task puts in the temporary folder — also when it
  is killed before it can clean up (``kill -9`` in the crash tests) — is inside it;
  :func:`end_session` removes it. pytest's own ``tmp_path`` folders stay where they were
  (``pytest-of-<user>``, the last three sessions kept, to read after a failure).
- **The session adopts its orphans.** The pytest process is a child subreaper
  (``PR_SET_CHILD_SUBREAPER``): a task try whose scheduler was killed, or a daemon such as
  PostgreSQL's postmaster, stays a descendant of pytest instead of becoming init's, so it
  can be found.
- **After each test** (:func:`kill_ketch_processes`, from the autouse ``ketch_home``
  fixture, once the test's own fixtures have stopped what they started): every ketch
  process (``python -m ketch...``) still running, with all its descendants, is sent
  SIGCONT (a SIGSTOPped process acts on nothing else) and SIGKILL with its process group.
  A fixture that keeps a ketch process for longer than one test calls :func:`spare`.
- **At the end of the session** (:func:`end_session`, from ``pytest_sessionfinish`` and
  ``atexit``; SIGTERM is turned into an interrupt so it gets there too): every
  descendant still alive is killed the same way, then the session's temporary folder and
  the folders given to :func:`remove_at_exit` are removed.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import psutil

PR_SET_CHILD_SUBREAPER = 36
SESSION_TMP_PREFIX = "ketch-tests-"

_spared: set[int] = set()
_dirs: list[Path] = []
_finalizers: list[Callable[[], None]] = []
_session_tmp: Path | None = None
_original_tmpdir: str | None = None
_ended = False


# -- the session ---------------------------------------------------------------------------


def begin_session() -> Path:
    """Private TMPDIR, subreaper, and the atexit safety net; returns the TMPDIR."""
    global _session_tmp, _original_tmpdir, _ended
    _ended = False
    _original_tmpdir = os.environ.get("TMPDIR")
    folder = Path(tempfile.mkdtemp(prefix=SESSION_TMP_PREFIX))
    # Servers run as other users (PostgreSQL as ``postgres``) keep their folders in here.
    folder.chmod(0o1777)
    os.environ["TMPDIR"] = str(folder)
    tempfile.tempdir = str(folder)
    _session_tmp = folder
    _become_subreaper()
    atexit.register(end_session)
    # ``timeout pytest ...`` and CI runners stop with SIGTERM, which skips atexit: make it
    # an interrupt, so the session's teardown and end still run.
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)
    return folder


def _interrupt(signum: int, _frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends it at once
    raise KeyboardInterrupt(f"signal {signum}")


def end_session() -> None:
    """Run the registered finalizers, kill every descendant, remove the folders (once)."""
    global _ended, _session_tmp
    if _ended:
        return
    _ended = True
    while _finalizers:
        finalizer = _finalizers.pop()
        with contextlib.suppress(Exception):
            finalizer()
    kill_processes(_descendants(), reap_all=True)
    _reap_zombies()
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


def _reap_zombies() -> None:
    """Orphans adopted as the subreaper that have exited since (nothing else waits on
    them), at the end of the session."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _become_subreaper() -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


# -- processes -----------------------------------------------------------------------------


def is_ketch_process(proc: psutil.Process) -> bool:
    """``python -m ketch ...`` (any ketch module: a server, the fork server and the tries
    it forks, a parse child, a try) or the ``ketch`` console script."""
    try:
        argv = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
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


def kill_ketch_processes() -> list[str]:
    """Kill every ketch process still running under this session (a test is over: what
    its fixtures did not stop), with its descendants; a description of each one killed."""
    descendants = _descendants()
    roots = [p for p in descendants if p.pid not in _spared and is_ketch_process(p)]
    if not roots:
        return []
    victims: dict[int, psutil.Process] = {}
    spared = _spared_tree(descendants)
    for root in roots:
        for proc in [root, *_children(root)]:
            if proc.pid not in spared:
                victims[proc.pid] = proc
    return kill_processes(victims.values())


def _children(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return list(proc.children(recursive=True))
    except psutil.Error:
        return []


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
    gone, and reap those pytest adopted.

    A process pytest started itself is reaped only with ``reap_all`` (the end of the
    session): reaping it earlier would take its exit status from its ``Popen``.
    """
    me = os.getpid()
    procs = [p for p in procs if p.pid != me]
    if not procs:
        return []
    described = [_describe(p) for p in procs]
    adopted = {p.pid for p in procs if _ppid(p) != me}
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
            if reap_all or pid in adopted:
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
