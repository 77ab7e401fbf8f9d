"""JSON lines on stdout (``[logging] json_format``): a try's output and ketch's own log.

A try's pump echoes each line of the (masked) output to the pod's stdout as one JSON
object for collectors such as Fluent Bit or Loki::

    {"timestamp":"2026-01-01T10:00:00.123456Z","level":"INFO","dag_id":"etl",
     "run_id":"manual__...","task_id":"load","try_number":1,"message":"loaded 10 rows"}

``map_index`` is added for a mapped try. The output is bytes and may not be UTF-8:
the message is decoded with ``surrogateescape`` and written with ``ensure_ascii``, so an
invalid byte survives as a ``\\udcXX`` escape and :func:`decode_stream` gives back the
exact bytes (the scheduler's rescue reads a pod's log this way). ``"partial": true``
marks a fragment that does not end its line: a progress bar flushed while it waits for
its newline (:meth:`LineFramer.flush_partial`), or a piece of a line longer than
:data:`MAX_FRAGMENT`.

:class:`JsonLogFormatter` formats the scheduler's and web's own log records the same
way (``timestamp``, ``level``, ``logger``, ``message``, ``exception``). Stdlib only.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime

# A line longer than this (newline included) is written as several partial fragments.
MAX_FRAGMENT = 64 * 1024

# The try's identity in each record, in this order; map_index only when given.
META_KEYS = ("dag_id", "run_id", "task_id", "try_number")
_RECORD_KEYS = frozenset({"timestamp", "level", *META_KEYS, "map_index", "message", "partial"})
_REQUIRED_KEYS = frozenset({"timestamp", "level", *META_KEYS, "message"})


def _utc_timestamp(when: datetime | None = None) -> str:
    return (when or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _dumps(value: object) -> str:
    return json.dumps(value, ensure_ascii=True, separators=(",", ":"))


class RecordEncoder:
    """:func:`encode_record` for one try: its identity is encoded once."""

    def __init__(self, meta: Mapping[str, object], level: str = "INFO") -> None:
        fields: dict[str, object] = {"level": level}
        fields.update((key, meta.get(key)) for key in META_KEYS)
        if "map_index" in meta:
            fields["map_index"] = meta["map_index"]
        # '{"timestamp":"…",' + this + '"message":…}'
        self._middle = _dumps(fields)[1:-1].encode() + b',"message":'

    def encode(self, fragment: bytes, partial: bool) -> bytes:
        if not partial and fragment.endswith(b"\n"):
            fragment = fragment[:-1]
        message = _dumps(fragment.decode("utf-8", "surrogateescape")).encode()
        return b"".join(
            (
                b'{"timestamp":"',
                _utc_timestamp().encode(),
                b'",',
                self._middle,
                message,
                b',"partial":true}\n' if partial else b"}\n",
            )
        )


def encode_record(fragment: bytes, meta: Mapping[str, object], partial: bool) -> bytes:
    """One JSON line (newline included) for ``fragment`` of a try's output.

    ``fragment`` is a whole line with its newline (``partial`` false; the message is
    the line without it), or a piece that does not end its line (``partial`` true, the
    fragment as is); ``meta`` holds the try's ``dag_id``,
    ``run_id``, ``task_id``, ``try_number`` and, when mapped, ``map_index``.
    """
    return RecordEncoder(meta).encode(fragment, partial)


def _utf8_boundary(buf: bytes, cut: int, start: int) -> int:
    """``cut`` moved back (at most 3 bytes) so that it does not split a UTF-8 sequence."""
    for back in range(4):
        at = cut - back
        if at <= start:
            break
        if not 0x80 <= buf[at] <= 0xBF:  # not a continuation byte: a sequence starts here
            return at
    return cut


class LineFramer:
    """Cuts a byte stream into the fragments of :func:`encode_record`.

    :meth:`feed` returns each complete line (``partial`` false, newline included) and,
    of a line longer than :data:`MAX_FRAGMENT`, pieces of that size (``partial`` true,
    cut between UTF-8 characters when the bytes allow). The rest of an unfinished line
    is kept until its newline comes, or until :meth:`flush_partial` takes it (the pump
    calls it when the output has been quiet a moment, so a progress bar shows live, and
    at the end of the stream).
    """

    def __init__(self, max_fragment: int = MAX_FRAGMENT) -> None:
        self._max = max_fragment
        self._pending = b""

    @property
    def pending(self) -> int:
        return len(self._pending)

    def feed(self, data: bytes) -> list[tuple[bytes, bool]]:
        buf = self._pending + data if self._pending else data
        out: list[tuple[bytes, bool]] = []
        limit = self._max
        start = 0
        size = len(buf)
        while True:
            newline = buf.find(b"\n", start)
            end = size if newline < 0 else newline + 1
            while end - start > limit:
                cut = _utf8_boundary(buf, start + limit, start)
                out.append((buf[start:cut], True))
                start = cut
            if newline < 0:
                break
            out.append((buf[start:end], False))
            start = end
        self._pending = buf[start:]
        return out

    def flush_partial(self) -> bytes:
        """The unfinished line held so far (``b""``: none); it is written as partial."""
        pending, self._pending = self._pending, b""
        return pending


def _record_bytes(line: bytes) -> bytes | None:
    """The output bytes a record line stands for (newline included unless partial), or
    None when ``line`` is not such a record."""
    if not (line.startswith(b"{") and line.endswith(b"}")):
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if (
        not isinstance(record, dict)
        or not _REQUIRED_KEYS <= record.keys() <= _RECORD_KEYS
        or not isinstance(record["message"], str)
        or not isinstance(record.get("partial", False), bool)
    ):
        return None
    try:
        data = record["message"].encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return None
    return data if record.get("partial") is True else data + b"\n"


def decode_stream(data: bytes) -> bytes:
    """The output bytes of a pod log made of :func:`encode_record` lines; a line that is
    not such a record (printed before the pump started) is kept as it is."""
    lines = data.split(b"\n")
    if not lines[-1]:
        lines.pop()  # data ends with a newline (or is empty)
        ends_with_newline = True
    else:
        ends_with_newline = False
    out: list[bytes] = []
    for index, line in enumerate(lines):
        decoded = _record_bytes(line)
        if decoded is not None:
            out.append(decoded)
        elif index < len(lines) - 1 or ends_with_newline:
            out.append(line + b"\n")
        else:
            out.append(line)
    return b"".join(out)


class JsonLogFormatter(logging.Formatter):
    """ketch's own log records as JSON lines: ``timestamp`` (UTC), ``level``,
    ``logger``, ``message`` and, with a traceback, ``exception``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "timestamp": _utc_timestamp(datetime.fromtimestamp(record.created, UTC)),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=True)
