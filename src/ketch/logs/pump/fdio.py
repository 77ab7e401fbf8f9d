"""Writes to raw file descriptors, shared by the pump's parts (stdlib ``os`` only)."""

from __future__ import annotations

import os

READ_SIZE = 65536


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
