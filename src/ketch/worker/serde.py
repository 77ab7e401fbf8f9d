"""Return values as JSON that keeps their Python type: Airflow's serde envelope.

A task's return value travels to its downstream tasks as JSON (the ``xcom`` row). Plain
JSON would turn a ``datetime`` into an error and a tuple into a list, where Airflow hands
the downstream task the same type back. So values JSON has no form for are tagged as
Airflow 3's ``airflow.sdk.serde`` tags them, ``{"__classname__": "datetime.date",
"__version__": 2, "__data__": "2026-03-01"}``, with the same data forms, for the common
types: ``datetime``, ``date``, ``timedelta``, ``Decimal``, ``UUID``, ``tuple``, ``set``
and ``frozenset`` (nested in lists and dicts too). Anything else JSON cannot hold still
fails the try with json's own message. As in Airflow, a dict using the reserved key
``__classname__`` is refused, dict keys become strings, and a tag this module does not
know is left as the dict it is.

Stdlib only and imported by every try: ``decimal`` and ``uuid`` are looked up in
``sys.modules`` when encoding (a value of theirs means they are imported already) and
imported when decoding needs them.
"""

from __future__ import annotations

import datetime as dt
import sys
from typing import Any

CLASSNAME = "__classname__"
VERSION = "__version__"
DATA = "__data__"

_DATETIME_VERSION = 2  # airflow.sdk.serde.serializers.datetime
_COLLECTION_VERSION = 1  # .builtin
_OTHER_VERSION = 1  # .bignum (Decimal), .uuid, .timezone
_FIXED_TZ = "pendulum.tz.timezone.FixedTimezone"
_ZONEINFO = "zoneinfo.ZoneInfo"
_PENDULUM_TZ = "pendulum.tz.timezone.Timezone"
_COLLECTIONS: dict[type, str] = {
    tuple: "builtins.tuple",
    set: "builtins.set",
    frozenset: "builtins.frozenset",
}


_BY_NAME: dict[str, Any] = {name: cls for cls, name in _COLLECTIONS.items()}


def _tag(classname: str, version: int, data: Any) -> dict[str, Any]:
    return {CLASSNAME: classname, VERSION: version, DATA: data}


def encode(value: Any) -> Any:
    """``value`` as plain JSON types, tagging what JSON cannot hold; ``TypeError`` (json's
    wording) for a value of no supported type, ``ValueError`` for the reserved key."""
    if value is None or isinstance(value, str | int | float):  # bool is an int
        return value
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        if CLASSNAME in value:
            raise ValueError(f"reserved key {CLASSNAME!r} found in a dict to serialise")
        return {str(k): encode(v) for k, v in value.items()}
    if isinstance(value, tuple | set | frozenset):  # a namedtuple too: a tuple, as Airflow does
        classname = next(name for cls, name in _COLLECTIONS.items() if isinstance(value, cls))
        return _tag(classname, _COLLECTION_VERSION, [encode(v) for v in value])
    if isinstance(value, dt.datetime):  # before date: a datetime is a date
        tz = _encode_tz(value.tzinfo) if value.tzinfo is not None else None
        stamp = {"timestamp": value.timestamp(), "tz": tz}
        return _tag("datetime.datetime", _DATETIME_VERSION, stamp)
    if isinstance(value, dt.date):
        return _tag("datetime.date", _DATETIME_VERSION, value.isoformat())
    if isinstance(value, dt.timedelta):
        return _tag("datetime.timedelta", _DATETIME_VERSION, value.total_seconds())
    decimal, uuid = sys.modules.get("decimal"), sys.modules.get("uuid")
    if decimal is not None and isinstance(value, decimal.Decimal):
        exponent = value.as_tuple().exponent
        # No digits after the point: an int; else str keeps every digit a float would round.
        data = int(value) if isinstance(exponent, int) and exponent >= 0 else str(value)
        return _tag("decimal.Decimal", _OTHER_VERSION, data)
    if uuid is not None and isinstance(value, uuid.UUID):
        return _tag("uuid.UUID", _OTHER_VERSION, str(value))
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _encode_tz(tz: dt.tzinfo) -> dict[str, Any]:
    """Airflow's form of a datetime's zone: the serializer's (data, classname, version,
    is_serialized) tuple, itself tagged as a tuple. A named zone keeps its name (so
    arithmetic across a DST change stays right downstream); a fixed offset, its seconds."""
    name = getattr(tz, "key", None) or getattr(tz, "zone", None)
    found: tuple[str | int, str, int, bool]
    if isinstance(name, str):
        found = (name, _ZONEINFO, _OTHER_VERSION, True)
    else:
        offset = tz.utcoffset(None)
        if offset is None:
            raise TypeError(f"Object of type {type(tz).__name__} is not JSON serializable")
        seconds = int(offset.total_seconds())
        found = ("UTC" if seconds == 0 else seconds, _FIXED_TZ, _OTHER_VERSION, True)
    return _tag("builtins.tuple", _COLLECTION_VERSION, list(found))


def decode(value: Any) -> Any:
    """The Python value :func:`encode` (or Airflow's serde, for these types) stored."""
    if isinstance(value, list):
        return [decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    classname, data = value.get(CLASSNAME), value.get(DATA)
    if not isinstance(classname, str) or VERSION not in value:
        return {k: decode(v) for k, v in value.items()}
    if classname in _BY_NAME:
        return _BY_NAME[classname](decode(data))
    if classname == "datetime.datetime" and isinstance(data, dict):
        tz = decode(data.get("tz"))
        return dt.datetime.fromtimestamp(float(data["timestamp"]), tz=_decode_tz(tz))
    if classname == "datetime.date" and isinstance(data, str):
        return dt.date.fromisoformat(data)
    if classname == "datetime.timedelta" and isinstance(data, int | float | str):
        return dt.timedelta(seconds=float(data))
    if classname == "decimal.Decimal":
        from decimal import Decimal

        return Decimal(str(data))
    if classname == "uuid.UUID" and isinstance(data, str):
        from uuid import UUID

        return UUID(data)
    return {k: decode(v) for k, v in value.items()}  # not ours: the dict as it is


def _decode_tz(tz: Any) -> dt.tzinfo | None:
    """The zone of :func:`_encode_tz`'s tuple: a ZoneInfo by name, UTC, or a fixed offset."""
    if not tz:
        return None
    data, classname = tz[0], tz[1]
    if isinstance(data, int):
        return dt.timezone(dt.timedelta(seconds=data))
    if classname == _FIXED_TZ and data == "UTC":
        return dt.UTC
    if classname in (_ZONEINFO, _PENDULUM_TZ) and isinstance(data, str):
        from zoneinfo import ZoneInfo

        return ZoneInfo(data)
    raise ValueError(f"cannot decode the time zone {tz!r}")
