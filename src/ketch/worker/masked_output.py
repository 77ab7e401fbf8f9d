"""Masking the output of a try that runs inside this process (``ketch dags test``).

A real try's output reaches its log through the log pump, which masks every sensitive
value the try read (:mod:`ketch.logs.pump`). ``dags test`` runs tries in its own process
and prints their output to the terminal, with no pump in between, so this module does the
pump's masking there: ``sys.stdout``, ``sys.stderr`` and the stream handlers of the root
logger that write to them are replaced, for the length of one try, by a writer that masks
each line with :func:`ketch.worker.secrets_mask.redact`.

Why whole lines: a secret written in two ``write`` calls must still be found, so text is
held until its line ends (or a flush). Output that bypasses ``sys.stdout`` (a C extension
or a child process writing to fd 1 itself) is not masked here; ketch's own bash task
copies its child's output through ``sys.stdout``, so it is.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from ketch.worker import secrets_mask


class MaskingWriter:
    """A text stream that writes ``target`` masked, one line at a time."""

    def __init__(self, target: TextIO) -> None:
        self.target = target
        self._partial = ""

    def write(self, text: str) -> int:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            self.target.write(secrets_mask.redact(line) + "\n")
        return len(text)

    def flush(self) -> None:
        if self._partial:
            self.target.write(secrets_mask.redact(self._partial))
            self._partial = ""
        self.target.flush()

    def isatty(self) -> bool:
        return self.target.isatty()

    def __getattr__(self, name: str) -> object:  # encoding, fileno, ...: the target's
        return getattr(self.target, name)


@contextmanager
def masked_output() -> Iterator[None]:
    """Mask what this process prints and logs until the block ends."""
    out, err = sys.stdout, sys.stderr
    writers = {id(out): MaskingWriter(out), id(err): MaskingWriter(err)}
    handlers = [
        handler
        for handler in logging.getLogger().handlers
        if isinstance(handler, logging.StreamHandler) and id(handler.stream) in writers
    ]
    originals = [handler.stream for handler in handlers]
    sys.stdout, sys.stderr = writers[id(out)], writers[id(err)]
    for handler in handlers:
        handler.setStream(writers[id(handler.stream)])
    try:
        yield
    finally:
        for writer in writers.values():
            writer.flush()
        sys.stdout, sys.stderr = out, err
        for handler, stream in zip(handlers, originals, strict=True):
            handler.setStream(stream)
