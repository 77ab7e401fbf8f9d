"""Return values keep their Python type between tasks: Airflow's serde envelope."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

import pytest

from ketch.worker.serde import decode, encode

PARIS = ZoneInfo("Europe/Paris")


class Point(NamedTuple):
    x: int
    y: int


def round_trip(value: Any) -> Any:
    return decode(json.loads(json.dumps(encode(value), allow_nan=False)))


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        3,
        2.5,
        "text",
        [1, "two", None],
        {"a": {"b": [1]}},
        datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=UTC),
        datetime(2026, 3, 29, 1, 30, tzinfo=PARIS),
        datetime(2026, 3, 1, 12, 0, tzinfo=timezone(timedelta(hours=-5, minutes=-30))),
        datetime(2026, 3, 1, 12, 0, 0, 1),  # naive
        date(2026, 3, 1),
        timedelta(days=2, seconds=5, microseconds=7),
        Decimal("1.10"),
        Decimal("12345678901234567890.123456789"),
        Decimal("100"),
        Decimal("-0.000"),
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
        (1, "a", (2, 3)),
        {1, 2, 3},
        frozenset({"x"}),
        {"when": [date(2026, 1, 1), (1, 2)], "ids": {uuid.UUID(int=1)}},
    ],
)
def test_a_value_comes_back_equal_and_of_the_same_type(value: Any) -> None:
    back = round_trip(value)
    assert back == value
    assert type(back) is type(value)
    if isinstance(value, datetime):
        assert back.tzinfo == value.tzinfo and back.utcoffset() == value.utcoffset()


def test_the_stored_form_is_airflows() -> None:
    assert encode(date(2026, 3, 1)) == {
        "__classname__": "datetime.date",
        "__version__": 2,
        "__data__": "2026-03-01",
    }
    assert encode(datetime(2026, 3, 1, tzinfo=UTC)) == {
        "__classname__": "datetime.datetime",
        "__version__": 2,
        "__data__": {
            "timestamp": 1772323200.0,
            "tz": {
                "__classname__": "builtins.tuple",
                "__version__": 1,
                "__data__": ["UTC", "pendulum.tz.timezone.FixedTimezone", 1, True],
            },
        },
    }
    assert encode(datetime(2026, 3, 1, tzinfo=PARIS))["__data__"]["tz"]["__data__"] == [
        "Europe/Paris",
        "zoneinfo.ZoneInfo",
        1,
        True,
    ]
    assert encode(timedelta(minutes=1))["__data__"] == 60.0
    assert encode(Decimal("100"))["__data__"] == 100
    assert encode(Decimal("1.10"))["__data__"] == "1.10"
    assert encode(uuid.UUID(int=1))["__data__"] == "00000000-0000-0000-0000-000000000001"
    assert encode((1, [2])) == {
        "__classname__": "builtins.tuple",
        "__version__": 1,
        "__data__": [1, [2]],
    }
    assert encode({"k": {"x"}})["k"]["__classname__"] == "builtins.set"


def test_plain_json_is_left_as_it_is() -> None:
    value = {"a": [1, 2.5, None, "x", {"b": True}]}
    assert encode(value) == value
    assert decode(value) == value
    # A dict that merely names a class, without a version, is not a tag; nor an unknown tag.
    assert decode({"__classname__": "x"}) == {"__classname__": "x"}
    unknown = {"__classname__": "my.Thing", "__version__": 1, "__data__": {"d": (1,)}}
    assert decode(json.loads(json.dumps(unknown))) == {
        "__classname__": "my.Thing",
        "__version__": 1,
        "__data__": {"d": [1]},
    }


def test_keys_become_strings_and_a_namedtuple_is_a_tuple() -> None:
    assert round_trip({1: "a", None: "b"}) == {"1": "a", "None": "b"}
    point = Point(1, 2)
    assert round_trip(point) == (1, 2) and type(round_trip(point)) is tuple


def test_what_json_cannot_hold_still_fails_with_jsons_words() -> None:
    with pytest.raises(TypeError, match=r"^Object of type object is not JSON serializable$"):
        encode({"a": [object()]})
    with pytest.raises(TypeError, match="Object of type bytes is not JSON serializable"):
        encode(b"raw")
    with pytest.raises(ValueError, match="reserved key '__classname__'"):
        encode({"__classname__": "mine"})
