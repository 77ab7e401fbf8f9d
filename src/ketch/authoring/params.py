"""DAG params: a default plus a JSON Schema, and the validation of a run's conf.

``Param(default, type=..., enum=..., minimum=..., description=...)`` keeps every
keyword but ``description`` as JSON Schema, like Airflow's Param. jsonschema is
imported only when something is validated (never in a task try).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ketch.exceptions import DagDefinitionError, ParamValidationError

if TYPE_CHECKING:
    from ketch.serialization import SerializedParam


class _NotSet:
    def __repr__(self) -> str:
        return "NOTSET"


NOTSET: Any = _NotSet()


class Param:
    """A DAG param: ``default`` (optional) and the JSON Schema a value must satisfy."""

    def __init__(self, default: Any = NOTSET, description: str | None = None, **schema: Any):
        self.value = default
        self.description = description
        self.schema: dict[str, Any] = schema

    @property
    def has_default(self) -> bool:
        return self.value is not NOTSET

    def serialize(self) -> SerializedParam:
        from ketch.serialization import SerializedParam

        return SerializedParam(
            default=None if self.value is NOTSET else self.value,
            has_default=self.has_default,
            schema=self.schema,
            description=self.description,
        )

    def __repr__(self) -> str:
        return f"Param({self.value!r}, schema={self.schema!r})"


def _validate(field: str, value: Any, schema: dict[str, Any]) -> None:
    import jsonschema

    try:
        jsonschema.validate(value, schema, format_checker=jsonschema.FormatChecker())
    except jsonschema.ValidationError as err:
        raise ParamValidationError(field, err.message) from None
    except jsonschema.SchemaError as err:
        raise ParamValidationError(field, f"invalid schema: {err.message}") from None


def resolve_params(params: dict[str, SerializedParam], conf: dict[str, Any]) -> dict[str, Any]:
    """Run conf merged over the param defaults, every param validated against its schema.

    A conf key that is not a param is passed through unvalidated (Airflow adds it
    to the run's params too). A param with neither default nor conf value fails.
    """
    resolved: dict[str, Any] = dict(conf)
    for name, param in params.items():
        if name in conf:
            value = conf[name]
        elif param.has_default:
            value = param.default
        else:
            raise ParamValidationError(name, "No value passed and Param has no default value")
        _validate(name, value, param.schema_)
        resolved[name] = value
    return resolved


def check_param_defaults(params: dict[str, Param], *, scheduled: bool, dag_id: str) -> None:
    """Parse-time check: defaults satisfy their schema; a scheduled DAG needs every default."""
    import json

    for name, param in params.items():
        if not param.has_default:
            if scheduled:
                raise DagDefinitionError(
                    f"DAG {dag_id!r}: param {name!r} has no default; a scheduled DAG needs a "
                    "default for every param"
                )
            continue
        try:
            json.dumps(param.value)
        except (TypeError, ValueError):
            raise DagDefinitionError(
                f"DAG {dag_id!r}: param {name!r} default {param.value!r} is not JSON-serializable"
            ) from None
        try:
            _validate(name, param.value, param.schema)
        except ParamValidationError as err:
            raise DagDefinitionError(
                f"DAG {dag_id!r}: default of param {name!r} is invalid: {err.message}"
            ) from None
