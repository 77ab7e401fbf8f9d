"""The trigger form's fields, one per DAG param, from its JSON Schema and default.

The browser turns each field back into a JSON value (``static/ketch.js``) and posts
``{"conf": {...}}`` to the REST trigger endpoint; the API validates against the
schema and its 422 names the param, shown next to its field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from ketch.serialization import SerializedParam

Kind = Literal["integer", "number", "boolean", "string", "enum", "json"]


@dataclass(frozen=True, slots=True)
class ParamField:
    name: str
    kind: Kind
    value: str  # what the input starts with (JSON text for kind "json")
    checked: bool  # booleans
    options: list[str]  # enums: the JSON text of each allowed value
    required: bool
    description: str | None
    minimum: Any = None
    maximum: Any = None


def _schema_type(schema: dict[str, Any]) -> str | None:
    kind = schema.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"]
        return kinds[0] if len(kinds) == 1 else None
    return kind if isinstance(kind, str) else None


def param_field(name: str, param: SerializedParam) -> ParamField:
    schema = param.schema_ or {}
    default = param.default if param.has_default else None
    kind: Kind
    options: list[str] = []
    if isinstance(schema.get("enum"), list):
        kind = "enum"
        options = [json.dumps(v) for v in schema["enum"]]
        value = json.dumps(default) if param.has_default else ""
    else:
        schema_type = _schema_type(schema)
        if schema_type in ("integer", "number", "boolean", "string"):
            kind = schema_type  # type: ignore[assignment]
        elif schema_type is None and isinstance(default, bool):
            kind = "boolean"
        elif schema_type is None and isinstance(default, int | float):
            kind = "number"
        elif schema_type is None and isinstance(default, str):
            kind = "string"
        else:
            kind = "json"
        if kind == "json":
            value = json.dumps(default, indent=2) if param.has_default else ""
        elif default is None or isinstance(default, bool):
            value = ""
        else:
            value = str(default)
    return ParamField(
        name=name,
        kind=kind,
        value=value,
        checked=default is True,
        options=options,
        required=not param.has_default,
        description=param.description or schema.get("description"),
        minimum=schema.get("minimum"),
        maximum=schema.get("maximum"),
    )


def param_fields(params: dict[str, SerializedParam]) -> list[ParamField]:
    return [param_field(name, p) for name, p in params.items()]
