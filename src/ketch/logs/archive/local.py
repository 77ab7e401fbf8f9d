"""The archive as a local folder: a log's bytes are the file ``{folder}/{key}``.

This is the same file the local executor's try writes live, so the folder keeps
Airflow's layout (``dag_id=D/run_id=R/task_id=T/attempt=N.log``) and the archive
adds only a sidecar ``{key}.complete`` (the :class:`Completion` as JSON). Chunks are
written in place with ``os.pwrite``, so a repeated or overlapping chunk rewrites the
same bytes; a chunk beyond the end leaves a hole that reads as NUL bytes (a file
cannot tell a hole from written zeros, unlike the S3 archive's gaps).

Keys come from :func:`~ketch.logs.archive.base.log_key`, but every path is checked
again: its folder must resolve inside the archive's folder, and a file that is a
symlink must point inside it too (the folder may be shared with tries that could
plant a link to ``/etc/shadow``).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO

from ketch.logs.archive.base import ArchiveError, Completion
from ketch.worker.task_log import LOG_FILE_MODE, make_private_dirs

COMPLETE_SUFFIX = ".complete"


def _os_error(path: str | os.PathLike[str], exc: OSError) -> ArchiveError:
    """``/logs/x.log: [Errno 13] Permission denied``: one line with the path."""
    what = f"[Errno {exc.errno}] {exc.strerror}" if exc.errno else str(exc)
    return ArchiveError(f"{os.fspath(path)}: {what}")


class LocalFolderArchive:
    """Logs kept as files below ``folder`` (``$KETCH_HOME/logs`` by default)."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)

    def describe(self) -> str:
        return str(self.folder)

    # -- paths -------------------------------------------------------------------------

    def _root(self) -> Path:
        return self.folder.resolve()

    def _path(self, key: str) -> Path:
        """The log's file, refused (ArchiveError) unless it lies inside the folder."""
        path = self.folder / key
        root = self._root()
        if path.name in ("", ".", "..") or not path.parent.resolve().is_relative_to(root):
            raise ArchiveError(f"{self.folder}: log key {key!r} lies outside the log folder")
        self._refuse_outside_link(path, root)
        return path

    def _refuse_outside_link(self, path: Path, root: Path) -> None:
        """A symlink is followed only when it points inside the folder."""
        if path.is_symlink() and not path.resolve().is_relative_to(root):
            raise ArchiveError(f"{path}: a symlink pointing outside the log folder")

    def _sidecar(self, key: str) -> Path:
        path = self._path(key)
        sidecar = path.with_name(path.name + COMPLETE_SUFFIX)
        self._refuse_outside_link(sidecar, self._root())
        return sidecar

    # -- writing -----------------------------------------------------------------------

    def check(self) -> None:
        """The folder exists (or can be made) and a file can be created in it."""
        try:
            make_private_dirs(self.folder)
            fd, probe = tempfile.mkstemp(dir=self.folder, prefix=".ketch-check-")
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise _os_error(self.folder, exc) from None

    def write_chunk(self, key: str, offset: int, data: bytes) -> None:
        if offset < 0:
            raise ValueError(f"negative offset {offset}")
        path = self._path(key)
        try:
            make_private_dirs(path.parent)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, LOG_FILE_MODE)
            try:
                view = memoryview(data)
                while view:  # pwrite may write less than asked (a signal, a full disk)
                    written = os.pwrite(fd, view, offset)
                    view, offset = view[written:], offset + written
            finally:
                os.close(fd)
        except OSError as exc:
            raise _os_error(path, exc) from None

    def complete(self, key: str, completion: Completion) -> None:
        """Write the sidecar atomically: a reader sees no sidecar or a whole one."""
        sidecar = self._sidecar(key)
        try:
            make_private_dirs(sidecar.parent)
            fd, tmp = tempfile.mkstemp(dir=sidecar.parent, prefix=f".{sidecar.name}.")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as file:  # mkstemp: mode 0600
                    json.dump(completion.to_json(), file)
                os.replace(tmp, sidecar)
            except BaseException:
                with suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as exc:
            raise _os_error(sidecar, exc) from None

    # -- reading -----------------------------------------------------------------------

    def completion(self, key: str) -> Completion | None:
        sidecar = self._sidecar(key)
        try:
            text = sidecar.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _os_error(sidecar, exc) from None
        try:
            return Completion.from_json(json.loads(text))
        except (ValueError, KeyError, TypeError) as exc:
            raise ArchiveError(f"{sidecar}: not a completion record: {exc}") from None

    def size(self, key: str) -> int:
        path = self._path(key)
        try:
            return path.stat().st_size
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise _os_error(path, exc) from None

    def read(self, key: str, offset: int, limit: int) -> bytes:
        if offset < 0 or limit < 0:
            raise ValueError(f"negative offset {offset} or limit {limit}")
        path = self._path(key)
        with self._open(path) as file:
            return self._read_at(file, path, offset, limit) if file else b""

    def iter_bytes(self, key: str, offset: int = 0, chunk_size: int = 65536) -> Iterator[bytes]:
        """The file from ``offset`` to its end now, ``chunk_size`` bytes at a time."""
        if offset < 0 or chunk_size <= 0:
            raise ValueError(f"negative offset {offset} or chunk size {chunk_size}")
        path = self._path(key)
        with self._open(path) as file:
            while file and (piece := self._read_at(file, path, offset, chunk_size)):
                yield piece
                offset += len(piece)

    @contextmanager
    def _open(self, path: Path) -> Iterator[BinaryIO | None]:
        """The open file, or None when the log is absent."""
        try:
            file = open(path, "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            file = None
        except OSError as exc:
            raise _os_error(path, exc) from None
        if file is None:
            yield None
            return
        with file:
            yield file

    @staticmethod
    def _read_at(file: BinaryIO, path: Path, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset``: a seek, never the whole file."""
        try:
            file.seek(offset)
            return file.read(size)
        except OSError as exc:
            raise _os_error(path, exc) from None

    # -- retention ---------------------------------------------------------------------

    def delete_older_than(self, cutoff: dt.datetime) -> int:
        """Delete ``*.log`` files last written before ``cutoff`` (and their sidecars),
        then the folders this left empty; the folder itself stays."""
        if cutoff.tzinfo is None:
            cutoff = cutoff.replace(tzinfo=dt.UTC)
        limit = cutoff.timestamp()
        root = self.folder
        deleted = 0
        for folder, _dirs, files in os.walk(root, topdown=False):
            for name in files:
                if name.endswith(".log") and self._delete_if_old(Path(folder, name), limit):
                    deleted += 1
            if Path(folder) != root:
                with suppress(OSError):  # not empty (or gone): keep it
                    os.rmdir(folder)
        return deleted

    @staticmethod
    def _delete_if_old(path: Path, limit: float) -> bool:
        """Delete the log (a symlink itself, never its target) if it is older."""
        try:
            if path.lstat().st_mtime >= limit:
                return False
            path.unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise _os_error(path, exc) from None
        with suppress(FileNotFoundError):
            path.with_name(path.name + COMPLETE_SUFFIX).unlink()
        return True
