"""How a log is laid out in S3 and joined back: chunk objects named by their offset.

Pure (no client): the object names below ``{prefix}/{key}/`` and the joining of listed
chunks into the pieces that make up the log up to its first gap, so the rules of
repeats, overlaps and gaps can be read and tested without a bucket.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

COMPLETE_NAME = "complete.json"
CHUNK_NAME = re.compile(r"(\d{16,})\.chunk")


@dataclass(frozen=True)
class Piece:
    """Bytes ``[start, end)`` of a log, held by the object ``name`` that begins at ``base``."""

    name: str
    base: int
    start: int
    end: int

    def range_header(self) -> str:
        return f"bytes={self.start - self.base}-{self.end - self.base - 1}"


def join_chunks(chunks: list[tuple[int, int, str]]) -> list[Piece]:
    """The pieces that make up the log from 0 to its first gap, from its chunks
    ``(offset, length, object name)``; repeats and overlaps are used once."""
    pieces: list[Piece] = []
    cursor = 0
    for offset, length, name in sorted(chunks):
        end = offset + length
        if end <= cursor:
            continue  # wholly below the cursor: a repeat
        if offset > cursor:
            break  # a gap: the rest is not available yet
        pieces.append(Piece(name, offset, cursor, end))
        cursor = end
    return pieces


@dataclass(frozen=True)
class Listing:
    """One listing of a log: its joined pieces, and whether it is final (``complete.json``
    was listed and the pieces reach the completion's size: nothing can be added)."""

    pieces: tuple[Piece, ...]
    final: bool

    @property
    def end(self) -> int:
        return self.pieces[-1].end if self.pieces else 0


def clip(pieces: tuple[Piece, ...], start: int, stop: int | None) -> Iterator[Piece]:
    for piece in pieces:
        low, high = max(piece.start, start), piece.end if stop is None else min(piece.end, stop)
        if low < high:
            yield Piece(piece.name, piece.base, low, high)
