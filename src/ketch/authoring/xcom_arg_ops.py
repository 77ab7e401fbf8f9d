"""``XComArg.map()``, ``.zip()`` and ``.concat()``: Airflow's MapXComArg, ZipXComArg and
ConcatXComArg.

Each wraps upstream values without reading them: a mapped task (``.expand(x=...)``) or any
task taking one as an argument gets, in its own try, a lazy sequence built from the
upstream values. ``map(f)`` calls ``f`` on an element only when that element is read, so
the callable runs in the consuming try, as in Airflow; ``zip`` gives tuples (shortest
length, or longest with ``fillvalue``), ``concat`` chains the values one after another.

The scheduler never runs the callables: it needs only the number of elements, which the
DAG processor stores as a shape (:func:`serialize_source`): ``map`` keeps its source's
length, ``zip`` takes the min (max with a fillvalue) of its parts, ``concat`` their sum
(Airflow's ``get_task_map_length``). A dict upstream gives ``(key, value)`` pairs here, as
mapping directly over a dict does (:func:`ketch.authoring.mapped.element`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ketch.authoring.params import NOTSET
from ketch.authoring.xcom_args import DagParam, XComArg, XComPull

if TYPE_CHECKING:
    from ketch.serialization import SerializedExpandArg


def _element(value: Any, index: int) -> Any:
    from ketch.authoring.mapped import element

    return element(value, index)


def _check_index(index: Any, length: int) -> int:
    if not isinstance(index, int):
        raise TypeError(f"indices must be integers, not {type(index).__name__}")
    if index < 0:
        index += length
    if not 0 <= index < length:
        raise IndexError("index out of range")
    return index


def _checked_values(what: str, args: Sequence[XComArg], xcom_pull: XComPull) -> list[Any]:
    from ketch.authoring.mapped import is_mappable_value

    values = [arg.resolve(xcom_pull) for arg in args]
    for value in values:
        if not is_mappable_value(value):
            raise ValueError(f"XCom {what} expects sequence or dict, not {type(value).__name__}")
    return values


def _check_sources(what: str, args: Sequence[Any]) -> None:
    for arg in args:
        if isinstance(arg, DagParam):
            raise ValueError(f"{what}() cannot take the DAG param {arg.name!r}")
        if not isinstance(arg, XComArg):
            raise TypeError(
                f"{what}() takes upstream tasks' values (XComArg), not {type(arg).__name__!r}"
            )


def _is_task(f: Any) -> bool:
    from ketch.authoring.decorators import DecoratedTask
    from ketch.authoring.tasks import BaseTask

    return isinstance(f, DecoratedTask | BaseTask)


class _LazyResult(Sequence[Any]):
    """What a try reads: shown (rendered fields, logs) by its kind and length, without
    reading its elements (a map's callable runs only when an element is read)."""

    kind = ""

    def __repr__(self) -> str:
        return f"<XCom {self.kind} of {len(self)} items>"


class _MapResult(_LazyResult):
    """The upstream value with the callables applied to an element when it is read."""

    kind = "map"

    def __init__(self, value: Any, callables: Sequence[Callable[[Any], Any]]) -> None:
        self.value = value
        self.callables = callables

    def __getitem__(self, index: Any) -> Any:
        value = _element(self.value, _check_index(index, len(self)))
        for f in self.callables:
            value = f(value)
        return value

    def __len__(self) -> int:
        return len(self.value)


class _ZipResult(_LazyResult):
    kind = "zip"

    def __init__(self, values: list[Any], fillvalue: Any) -> None:
        self.values = values
        self.fillvalue = fillvalue

    def __getitem__(self, index: Any) -> Any:
        index = _check_index(index, len(self))
        return tuple(_element(v, index) if index < len(v) else self.fillvalue for v in self.values)

    def __len__(self) -> int:
        lengths = [len(v) for v in self.values]
        return min(lengths) if self.fillvalue is NOTSET else max(lengths)


class _ConcatResult(_LazyResult):
    kind = "concat"

    def __init__(self, values: list[Any]) -> None:
        self.values = values

    def __getitem__(self, index: Any) -> Any:
        index = _check_index(index, len(self))
        for value in self.values:
            if index < len(value):
                return _element(value, index)
            index -= len(value)
        raise IndexError("index out of range")  # pragma: no cover - _check_index bounds it

    def __len__(self) -> int:
        return sum(len(v) for v in self.values)


class _DerivedXComArg(XComArg):
    """Common ground: links to every upstream it reads, and no ``["key"]`` lookup (only a
    plain XComArg has one, as in Airflow)."""

    def plain_args(self) -> list[XComArg]:
        raise NotImplementedError

    @property
    def roots(self) -> list[Any]:
        return [a.operator for a in self.plain_args()]

    @property
    def leaves(self) -> list[Any]:
        return self.roots

    def __getitem__(self, key: str) -> XComArg:
        raise TypeError(f"{self!r} cannot be subscripted")

    def _return_value_only(self, message: str) -> None:
        """Its sources were checked when it was made (it has no key of its own)."""


class MapXComArg(_DerivedXComArg):
    """``arg.map(f)``: each element passed through ``f`` (then the next ``.map``'s)."""

    def __init__(self, arg: XComArg, callables: Sequence[Callable[[Any], Any]]) -> None:
        for f in callables:
            if _is_task(f):
                raise ValueError("map() argument must be a plain function, not a @task operator")
            if not callable(f):
                raise TypeError(f"map() argument must be callable, not {type(f).__name__!r}")
        self.arg = arg
        self.callables = list(callables)

    def plain_args(self) -> list[XComArg]:
        return self.arg.plain_args()

    def map(self, f: Callable[[Any], Any]) -> XComArg:
        # arg.map(f1).map(f2) is one MapXComArg, as in Airflow.
        return MapXComArg(self.arg, [*self.callables, f])

    def resolve(self, xcom_pull: XComPull) -> Any:
        (value,) = _checked_values("map", [self.arg], xcom_pull)
        return _MapResult(value, self.callables)

    def __repr__(self) -> str:
        calls = "".join(f".map({getattr(f, '__name__', '<function>')})" for f in self.callables)
        return f"{self.arg!r}{calls}"


class ZipXComArg(_DerivedXComArg):
    """``a.zip(b, ...)``: tuples, like :func:`zip` (:func:`itertools.zip_longest` with a
    ``fillvalue``)."""

    def __init__(self, args: Sequence[Any], *, fillvalue: Any = NOTSET) -> None:
        _check_sources("zip", args)
        self.args: list[XComArg] = list(args)
        self.fillvalue = fillvalue

    def plain_args(self) -> list[XComArg]:
        return [p for a in self.args for p in a.plain_args()]

    def resolve(self, xcom_pull: XComPull) -> Any:
        return _ZipResult(_checked_values("zip", self.args, xcom_pull), self.fillvalue)

    def __repr__(self) -> str:
        first, *rest = self.args
        fill = "" if self.fillvalue is NOTSET else f", fillvalue={self.fillvalue!r}"
        return f"{first!r}.zip({', '.join(repr(a) for a in rest)}{fill})"


class ConcatXComArg(_DerivedXComArg):
    """``a.concat(b, ...)``: the elements of each value, one value after the other."""

    def __init__(self, args: Sequence[Any]) -> None:
        _check_sources("concat", args)
        self.args: list[XComArg] = list(args)

    def plain_args(self) -> list[XComArg]:
        return [p for a in self.args for p in a.plain_args()]

    def concat(self, *others: XComArg) -> XComArg:
        # a.concat(b).concat(c) is one ConcatXComArg, as in Airflow.
        return ConcatXComArg([*self.args, *others])

    def resolve(self, xcom_pull: XComPull) -> Any:
        return _ConcatResult(_checked_values("concat", self.args, xcom_pull))

    def __repr__(self) -> str:
        first, *rest = self.args
        return f"{first!r}.concat({', '.join(repr(a) for a in rest)})"


def serialize_source(value: XComArg, name: str | None) -> SerializedExpandArg:
    """The shape the scheduler computes the number of instances from (no callables, no
    fillvalue: only whether one was given)."""
    from ketch.serialization import SerializedExpandArg

    if isinstance(value, MapXComArg):
        return serialize_source(value.arg, name)
    if isinstance(value, ZipXComArg | ConcatXComArg):
        return SerializedExpandArg(
            name=name,
            combine="zip" if isinstance(value, ZipXComArg) else "concat",
            parts=[serialize_source(a, None) for a in value.args],
            fill=isinstance(value, ZipXComArg) and value.fillvalue is not NOTSET,
        )
    return SerializedExpandArg(name=name, xcom_task_id=value.operator.task_id, xcom_key=value.key)
