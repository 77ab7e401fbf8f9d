"""JSON lines of a try's output (``ketch.logs.json_lines``) and of ketch's own log."""

from __future__ import annotations

import io
import itertools
import json
import logging
import random
import re
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from ketch.config import get_settings
from ketch.logging_setup import _QUIET, configure_logging
from ketch.logs.json_lines import (
    MAX_FRAGMENT,
    JsonLogFormatter,
    LineFramer,
    RecordEncoder,
    decode_stream,
    encode_record,
)

META: dict[str, object] = {
    "dag_id": "etl",
    "run_id": "manual__1",
    "task_id": "load",
    "try_number": 2,
}
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def frame_and_encode(pieces: list[bytes], meta: dict[str, object] = META) -> bytes:
    """What the pump writes to stdout for ``pieces`` of output (then EOF)."""
    framer = LineFramer()
    encoder = RecordEncoder(meta)
    out = []
    for piece in pieces:
        out += [encoder.encode(fragment, partial) for fragment, partial in framer.feed(piece)]
    rest = framer.flush_partial()
    if rest:
        out.append(encoder.encode(rest, True))
    return b"".join(out)


# -- encode_record --------------------------------------------------------------------


def test_a_record_is_one_json_line_with_the_try_identity() -> None:
    line = encode_record(b"loaded 10 rows\n", META, partial=False)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    record = json.loads(line)
    assert list(record) == [
        "timestamp",
        "level",
        "dag_id",
        "run_id",
        "task_id",
        "try_number",
        "message",
    ]
    assert TIMESTAMP.match(record["timestamp"])
    now = datetime.now(UTC).replace(tzinfo=None)
    assert abs((datetime.fromisoformat(record["timestamp"][:-1]) - now).total_seconds()) < 60
    assert record["level"] == "INFO"
    assert (record["dag_id"], record["run_id"], record["task_id"]) == ("etl", "manual__1", "load")
    assert record["try_number"] == 2 and record["message"] == "loaded 10 rows"


def test_map_index_and_partial() -> None:
    record = json.loads(encode_record(b"50%", {**META, "map_index": 3}, partial=True))
    assert record["map_index"] == 3 and record["partial"] is True
    assert record["message"] == "50%"
    assert "partial" not in json.loads(encode_record(b"done\n", META, partial=False))


def test_invalid_utf8_survives_as_surrogate_escapes_in_ascii_json() -> None:
    line = encode_record(b"bad \xff\xfe byte, good \xc3\xa9\n", META, partial=False)
    assert line.isascii()
    assert b"\\udcff\\udcfe" in line and b"\\u00e9" in line
    assert decode_stream(line) == b"bad \xff\xfe byte, good \xc3\xa9\n"


# -- LineFramer ---------------------------------------------------------------------------


def test_framer_gives_complete_lines_and_keeps_the_rest() -> None:
    framer = LineFramer()
    assert framer.feed(b"one\ntw") == [(b"one\n", False)]
    assert framer.pending == 2
    assert framer.feed(b"o\nthree\n\n") == [(b"two\n", False), (b"three\n", False), (b"\n", False)]
    assert framer.feed(b"\r 10%\r 20%") == []
    assert framer.flush_partial() == b"\r 10%\r 20%"
    assert framer.flush_partial() == b"" and framer.pending == 0
    assert framer.feed(b"\r100%\n") == [(b"\r100%\n", False)]


def test_framer_splits_a_long_line_into_partial_fragments() -> None:
    framer = LineFramer()
    line = b"x" * (3 * MAX_FRAGMENT + 10) + b"\n"
    fragments = []
    for at in range(0, len(line), 10_000):
        fragments += framer.feed(line[at : at + 10_000])
    assert [partial for _, partial in fragments] == [True, True, True, False]
    assert all(len(fragment) <= MAX_FRAGMENT for fragment, _ in fragments)
    assert b"".join(fragment for fragment, _ in fragments) == line
    assert framer.pending == 0


def test_framer_cuts_a_long_line_between_utf8_characters() -> None:
    framer = LineFramer(max_fragment=10)
    text = "aéé€€😀😀z\n".encode()
    fragments = framer.feed(text)
    assert b"".join(f for f, _ in fragments) == text
    for fragment, _ in fragments:
        fragment.decode("utf-8")  # no character cut in two


# -- decode_stream ---------------------------------------------------------------------


def test_lines_before_the_pump_pass_through() -> None:
    before = b"starting pod\n{not json}\n" + json.dumps({"message": "m", "level": "x"}).encode()
    stream = before + b"\n" + encode_record(b"from the try\n", META, False)
    assert decode_stream(stream) == before + b"\nfrom the try\n"
    assert decode_stream(b"") == b""
    assert decode_stream(b"no newline at the end") == b"no newline at the end"


def test_a_record_with_other_keys_or_types_is_not_decoded() -> None:
    record = json.loads(encode_record(b"m\n", META, False))
    for changed in (
        {**record, "extra": 1},
        {**record, "message": 5},
        {**record, "partial": 1},
        {k: v for k, v in record.items() if k != "task_id"},
    ):
        line = json.dumps(changed).encode() + b"\n"
        assert decode_stream(line) == line


@pytest.mark.parametrize("seed", range(60))
def test_round_trip_of_random_output(seed: int) -> None:
    rng = random.Random(seed)
    parts = []
    for _ in range(rng.randint(0, 40)):
        kind = rng.random()
        if kind < 0.3:
            parts.append(bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 50))))
        elif kind < 0.5:
            parts.append(rng.choice([b"\n", b"\r", b"\r\n", b"\xff", b"\xed\xa0\x80", b"{", b"}"]))
        elif kind < 0.55:
            parts.append(b"y" * rng.randint(MAX_FRAGMENT - 2, 2 * MAX_FRAGMENT + 2))
        elif kind < 0.6:
            parts.append(encode_record(b"a record printed by the task\n", META, False))
        else:
            parts.append('text é € 😀 \t\x00"\\ '.encode()[: rng.randint(0, 30)])
    data = b"".join(parts)
    cuts = sorted(rng.randint(0, len(data)) for _ in range(rng.randint(0, 20)))
    bounds = [0, *cuts, len(data)]
    pieces = [data[a:b] for a, b in itertools.pairwise(bounds)]
    encoded = frame_and_encode(pieces, {**META, "map_index": seed})
    assert encoded.isascii()
    assert all(json.loads(line) for line in encoded.splitlines())
    assert decode_stream(encoded) == data


def test_a_partial_flushed_mid_line_still_round_trips() -> None:
    framer = LineFramer()
    encoder = RecordEncoder(META)
    out = [encoder.encode(f, p) for f, p in framer.feed(b"progress: 10%")]
    out.append(encoder.encode(framer.flush_partial(), True))  # quiet for a moment
    out += [encoder.encode(f, p) for f, p in framer.feed(b"\rprogress: 100%\ndone\n")]
    assert decode_stream(b"".join(out)) == b"progress: 10%\rprogress: 100%\ndone\n"


# -- ketch's own log -------------------------------------------------------------------


def test_json_log_formatter() -> None:
    record = logging.LogRecord(
        "ketch.scheduler", logging.WARNING, __file__, 1, "x=%s", ("é",), None
    )
    entry = json.loads(JsonLogFormatter().format(record))
    assert entry["level"] == "WARNING" and entry["logger"] == "ketch.scheduler"
    assert entry["message"] == "x=é" and TIMESTAMP.match(entry["timestamp"])
    assert "exception" not in entry
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        failed = logging.LogRecord(
            "ketch", logging.ERROR, __file__, 1, "failed", None, sys.exc_info()
        )
    entry = json.loads(JsonLogFormatter().format(failed))
    assert "ValueError: boom" in entry["exception"] and "Traceback" in entry["exception"]


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    """configure_logging changes global loggers: put them back as they were."""
    names = ["", *_QUIET, "uvicorn", "uvicorn.error", "uvicorn.access"]
    saved = {}
    for name in names:
        logger = logging.getLogger(name)
        saved[name] = (list(logger.handlers), logger.level, logger.propagate, list(logger.filters))
    yield
    for name, (handlers, level, propagate, filters) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate
        logger.filters[:] = filters


@pytest.mark.usefixtures("restore_root_logger")
@pytest.mark.parametrize("json_format", [False, True])
def test_configure_logging_uses_json_when_set(
    json_format: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    settings = get_settings()
    settings = settings.model_copy(
        update={"logging": settings.logging.model_copy(update={"json_format": json_format})}
    )
    configure_logging(settings)
    logging.getLogger("ketch.test").warning("hello %d", 1)
    line = stream.getvalue().strip()
    if json_format:
        entry = json.loads(line)
        assert entry["message"] == "hello 1" and entry["logger"] == "ketch.test"
    else:
        assert line.endswith("ketch.test: hello 1")
