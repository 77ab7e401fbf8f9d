"""Run conf merged over param defaults and validated, with messages naming the field."""

from __future__ import annotations

from typing import Any

import pytest

from ketch import Param
from ketch.authoring.params import resolve_params
from ketch.exceptions import ParamValidationError
from ketch.serialization import SerializedParam


def params(**items: Param) -> dict[str, SerializedParam]:
    return {k: p.serialize() for k, p in items.items()}


def test_defaults_and_conf_override() -> None:
    p = params(n=Param(5, type="integer", minimum=1), s=Param("a", enum=["a", "b"]))
    assert resolve_params(p, {}) == {"n": 5, "s": "a"}
    assert resolve_params(p, {"n": 9, "extra": [1]}) == {"n": 9, "s": "a", "extra": [1]}


@pytest.mark.parametrize(
    ("conf", "field", "fragment"),
    [
        ({"n": 0}, "n", "less than the minimum of 1"),
        ({"n": "x"}, "n", "is not of type 'integer'"),
        ({"s": "c"}, "s", "is not one of ['a', 'b']"),
    ],
)
def test_invalid_values_name_the_field(conf: dict[str, Any], field: str, fragment: str) -> None:
    p = params(n=Param(5, type="integer", minimum=1), s=Param("a", enum=["a", "b"]))
    with pytest.raises(ParamValidationError) as info:
        resolve_params(p, conf)
    assert info.value.field == field
    assert fragment in info.value.message
    assert f"param {field!r}" in str(info.value)


def test_missing_required_param() -> None:
    with pytest.raises(ParamValidationError, match="No value passed") as info:
        resolve_params(params(req=Param(type="string")), {})
    assert info.value.field == "req"
    assert resolve_params(params(req=Param(type="string")), {"req": "v"}) == {"req": "v"}


def test_null_default_allowed_by_schema() -> None:
    p = params(opt=Param(None, type=["null", "string"]))
    assert resolve_params(p, {}) == {"opt": None}


def test_format_is_checked() -> None:
    p = params(day=Param("2024-01-01", type="string", format="date"))
    with pytest.raises(ParamValidationError, match="day"):
        resolve_params(p, {"day": "yesterday"})


def test_serialized_round_trip() -> None:
    sp = Param(3, type="integer", description="count").serialize()
    back = SerializedParam.model_validate(sp.model_dump(mode="json", by_alias=True))
    assert back.schema_ == {"type": "integer"} and back.default == 3 and back.description == "count"
    assert resolve_params({"c": back}, {"c": 4}) == {"c": 4}
