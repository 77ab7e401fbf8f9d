"""Jinja templating of task fields, with Airflow 3's semantics.

A task class names its templated fields (``template_fields``) and the file extensions
that make a string a template file (``template_ext``). When a try runs, the task renders
those fields with the try's context just before it does its work (Airflow's
``render_template_fields``): strings are Jinja templates, lists, tuples, sets and dicts
are rendered item by item, an upstream task's ``XComArg`` is replaced by its value (which
is not rendered itself), and a string ending in one of ``template_ext`` is read as a
template file from the DAG file's folder, then the DAG's ``template_searchpath``.

The environment is the DAG's: a sandboxed one (a ``NativeEnvironment`` with
``render_template_as_native_obj=True``), ``undefined=StrictUndefined`` unless the DAG's
``template_undefined`` says otherwise (an unknown name fails the try, naming it), the
``do`` extension, Airflow's ``ds``/``ts``... filters, then ``user_defined_macros`` (as
globals), ``user_defined_filters`` and ``jinja_environment_kwargs``.

jinja2 is imported only when a value holds template syntax: a plain command costs no
import. The rendered values are reported to the execution API (masked) through the
reporter the try installs (:func:`reporting_to`), so the API shows them per try.

The context objects templates use besides the try's own keys live here too: ``var``
(``var.value.X``, ``var.json.X``), ``conn`` (``conn.X``) and ``macros``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import date, datetime, timedelta
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import jinja2

    from ketch.authoring.context import Context
    from ketch.authoring.dag import DAG
    from ketch.authoring.tasks import BaseTask
    from ketch.authoring.xcom_args import XComPull

# Airflow's [core] max_templated_field_length: a longer rendered field is stored truncated.
MAX_FIELD_LENGTH = 4096
TRUNCATED = "Truncated (the rendered value is longer than 4096 characters). "

_TEMPLATE_MARKERS = ("{{", "{%", "{#")
_NEWLINES = re.compile(r"\r\n|\r|\n")


class TemplateError(Exception):
    """A templated field could not be rendered (syntax, undefined name, missing file)."""


# -- the context objects templates use ---------------------------------------------


class VariableAccessor:
    """``var.value.KEY`` / ``var.json.KEY`` and ``var.value.get(KEY, default)`` in a
    template: ketch's ``Variable.get`` (so sensitive values are masked in the log)."""

    def __init__(self, deserialize_json: bool) -> None:
        self._deserialize_json = deserialize_json

    def __getattr__(self, key: str) -> Any:
        if key.startswith("__"):
            raise AttributeError(key)
        from ketch.authoring.variable import Variable

        return Variable.get(key, deserialize_json=self._deserialize_json)

    def get(self, key: str, default: Any = None) -> Any:
        from ketch.authoring.variable import Variable

        return Variable.get(key, default, deserialize_json=self._deserialize_json)

    def __repr__(self) -> str:
        return "<VariableAccessor (dynamic access)>"


class ConnectionAccessor:
    """``conn.CONN_ID.host`` and ``conn.get(CONN_ID, default)`` in a template."""

    def __getattr__(self, conn_id: str) -> Any:
        if conn_id.startswith("__"):
            raise AttributeError(conn_id)
        from ketch.authoring.connection import Connection

        return Connection.get(conn_id)

    def get(self, conn_id: str, default_conn: Any = None) -> Any:
        from ketch.authoring.connection import Connection

        try:
            return Connection.get(conn_id)
        except KeyError:
            return default_conn

    def __repr__(self) -> str:
        return "<ConnectionAccessor (dynamic access)>"


def ds_add(ds: str, days: int) -> str:
    """Add or subtract days from a ``YYYY-MM-DD`` (Airflow's ``macros.ds_add``)."""
    if not days:
        return str(ds)
    return (datetime.strptime(str(ds), "%Y-%m-%d") + timedelta(days=days)).strftime("%Y-%m-%d")


def ds_format(ds: str, input_format: str, output_format: str) -> str:
    """Re-format a date string (Airflow's ``macros.ds_format``)."""
    return datetime.strptime(str(ds), input_format).strftime(output_format)


class _Macros:
    """Airflow's ``macros`` module, the subset ketch has: ``ds_add``, ``ds_format``,
    ``datetime``, ``timedelta``, ``json``, ``time``, ``uuid``, ``random`` (the function,
    as Airflow's ``from random import random``) and ``dateutil`` when installed
    (imported on first use)."""

    ds_add = staticmethod(ds_add)
    ds_format = staticmethod(ds_format)
    datetime = datetime
    timedelta = timedelta
    json = json

    def __getattr__(self, name: str) -> Any:
        import importlib

        if name in ("time", "uuid", "dateutil"):
            module = importlib.import_module(name)
            if name == "dateutil":
                for sub in ("parser", "relativedelta", "tz"):
                    importlib.import_module(f"dateutil.{sub}")
            setattr(self, name, module)
            return module
        if name == "random":
            from random import random

            return random
        raise AttributeError(f"macros has no attribute {name!r}")

    def __repr__(self) -> str:
        return "<ketch macros>"


macros = _Macros()


def template_context() -> dict[str, Any]:
    """The context keys every try gets for templates: ``var``, ``conn``, ``macros``."""
    return {
        "var": SimpleNamespace(value=VariableAccessor(False), json=VariableAccessor(True)),
        "conn": ConnectionAccessor(),
        "macros": macros,
    }


# -- Airflow's filters ----------------------------------------------------------------


def _fmt(fmt: str) -> Callable[[date | None], str | None]:
    def apply(value: date | None) -> str | None:
        return None if value is None else value.strftime(fmt)

    return apply


def _ts(value: date | None) -> str | None:
    return None if value is None else value.isoformat()


def _ts_with_tz(value: date | None) -> str | None:
    return None if value is None else value.isoformat().replace("-", "").replace(":", "")


FILTERS: dict[str, Callable[..., Any]] = {
    "ds": _fmt("%Y-%m-%d"),
    "ds_nodash": _fmt("%Y%m%d"),
    "ts": _ts,
    "ts_nodash": _fmt("%Y%m%dT%H%M%S"),
    "ts_nodash_with_tz": _ts_with_tz,
}


# -- the environment --------------------------------------------------------------------


def search_path(dag: DAG | None) -> list[str]:
    """Where template files are looked up: the DAG file's folder, then template_searchpath."""
    import os

    if dag is None:
        return []
    folder = os.path.dirname(dag.fileloc) if dag.fileloc else ""
    return [p for p in [folder, *getattr(dag, "template_searchpath", [])] if p]


_env_classes: tuple[type, type] | None = None


def _environment_classes() -> tuple[type, type]:
    """Airflow's NativeEnvironment and SandboxedEnvironment (built once per process)."""
    global _env_classes
    if _env_classes is None:
        import jinja2.nativetypes
        import jinja2.sandbox

        class _Safe:
            def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
                # Airflow: "_private" attributes are allowed, "__dunder__" ones are not.
                return not jinja2.sandbox.is_internal_attribute(obj, attr)

        class NativeEnvironment(_Safe, jinja2.nativetypes.NativeEnvironment):
            pass

        class SandboxedEnvironment(_Safe, jinja2.sandbox.SandboxedEnvironment):
            pass

        _env_classes = (NativeEnvironment, SandboxedEnvironment)
    return _env_classes


def environment(dag: DAG | None) -> jinja2.Environment:
    """The DAG's Jinja environment (Airflow's ``DAG.get_template_env``)."""
    import jinja2

    native_class, sandboxed_class = _environment_classes()
    options: dict[str, Any] = {
        "loader": jinja2.FileSystemLoader(search_path(dag)),
        "undefined": getattr(dag, "template_undefined", None) or jinja2.StrictUndefined,
        "extensions": ["jinja2.ext.do"],
        "cache_size": 0,
    }
    options.update(getattr(dag, "jinja_environment_kwargs", None) or {})
    native = bool(getattr(dag, "render_template_as_native_obj", False))
    env: jinja2.Environment = (native_class if native else sandboxed_class)(**options)
    env.filters.update(FILTERS)
    env.globals.update(getattr(dag, "user_defined_macros", None) or {})
    env.filters.update(getattr(dag, "user_defined_filters", None) or {})
    return env


# -- rendering ---------------------------------------------------------------------------


class _Renderer:
    def __init__(
        self,
        task: BaseTask,
        context: Context,
        xcom_pull: XComPull | None,
        template_ext: Sequence[str],
    ) -> None:
        self.task = task
        self.dag = task.dag
        self.context = context
        self.xcom_pull = xcom_pull
        self.template_ext = tuple(template_ext)
        self._env: jinja2.Environment | None = None
        # Without these, a string with no template syntax renders to itself and jinja2
        # need not be imported at all (native rendering may turn "42" into 42: always render).
        self.plain_shortcut = not (
            getattr(self.dag, "render_template_as_native_obj", False)
            or getattr(self.dag, "jinja_environment_kwargs", None)
        )

    @property
    def env(self) -> jinja2.Environment:
        if self._env is None:
            self._env = environment(self.dag)
        return self._env

    def render(self, value: Any, seen: set[int]) -> Any:
        from ketch.authoring.xcom_args import XComArg

        if isinstance(value, str):
            return self._render_str(value)
        if isinstance(value, XComArg):
            # Airflow's ResolveMixin: the upstream value as it is, never rendered.
            if self.xcom_pull is None:
                raise TemplateError(f"{value!r} cannot be resolved outside a task try")
            return value.resolve(self.xcom_pull)
        if id(value) in seen:
            return value
        if value.__class__ is tuple:
            return tuple(self.render(v, seen) for v in value)
        if isinstance(value, tuple):  # a named tuple
            return value.__class__(*(self.render(v, seen) for v in value))
        if isinstance(value, list):
            return [self.render(v, seen) for v in value]
        if isinstance(value, dict):
            return {k: self.render(v, seen) for k, v in value.items()}
        if isinstance(value, set):
            return {self.render(v, seen) for v in value}
        if isinstance(value, frozenset):
            return frozenset(self.render(v, seen) for v in value)
        return value

    def _render_str(self, value: str) -> Any:
        if self.template_ext and value.endswith(self.template_ext):
            template = self.env.get_template(value)
        elif self.plain_shortcut and not any(m in value for m in _TEMPLATE_MARKERS):
            return plain_render(value)
        else:
            template = self.env.from_string(value)
        return template.render(self.context)


def plain_render(value: str) -> str:
    """What Jinja's default lexer makes of text without template syntax: newlines
    normalised to ``\\n`` and one trailing newline dropped (``keep_trailing_newline``)."""
    text = _NEWLINES.sub("\n", value)
    return text[:-1] if text.endswith("\n") else text


def render_fields(
    task: BaseTask,
    context: Context,
    fields: Mapping[str, Any],
    *,
    xcom_pull: XComPull | None = None,
    template_ext: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Each of ``fields`` (name -> raw value) rendered with ``context``.

    Raises :class:`TemplateError` naming the task and the field for a syntax error, an
    undefined name or a missing template file; other errors raised by the template
    (a missing variable, a macro's own error) propagate with a note naming the field.
    """
    ext = getattr(task, "template_ext", ()) if template_ext is None else template_ext
    renderer = _Renderer(task, context, xcom_pull, ext)
    out: dict[str, Any] = {}
    for name, raw in fields.items():
        out[name] = _render_field(renderer, task, name, raw)
    return out


def _render_field(renderer: _Renderer, task: BaseTask, name: str, raw: Any) -> Any:
    where = f"task {task.task_id!r}, templated field {name!r}"
    try:
        return renderer.render(raw, set())
    except TemplateError:
        raise
    except Exception as exc:
        import sys

        jinja2 = sys.modules.get("jinja2")
        if jinja2 is None:
            exc.add_note(f"while rendering {where}")
            raise
        if isinstance(exc, jinja2.TemplateSyntaxError):
            file = exc.filename or exc.name
            source = f" in template file {file!r}" if file else ""
            raise TemplateError(
                f"{where}: template syntax error{source} at line {exc.lineno}: {exc.message}"
            ) from None
        if isinstance(exc, jinja2.TemplateNotFound):
            raise TemplateError(
                f"{where}: template file {exc.name!r} not found in {search_path(task.dag)}"
            ) from None
        if isinstance(exc, jinja2.UndefinedError | jinja2.exceptions.SecurityError):
            raise TemplateError(f"{where}: {exc.message}") from None
        exc.add_note(f"while rendering {where}")
        raise


# -- what the API shows ------------------------------------------------------------------

_reporters: list[Callable[[dict[str, Any]], None]] = []


@contextmanager
def reporting_to(reporter: Callable[[dict[str, Any]], None]) -> Iterator[None]:
    """While the block runs, rendered fields go to ``reporter`` (masked, JSON-able)."""
    _reporters.append(reporter)
    try:
        yield
    finally:
        _reporters.remove(reporter)


def report_rendered(fields: Mapping[str, Any]) -> None:
    """Send the rendered fields (masked, truncated, JSON-able) to the current reporter."""
    if _reporters:
        _reporters[-1](masked_fields(fields))


def masked_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """``fields`` as JSON values with every registered secret masked (and the values
    under sensitive keys such as ``password``), each at most MAX_FIELD_LENGTH long."""
    from ketch.worker.secrets_mask import looks_sensitive, redact

    def clean(value: Any, key: str | None = None) -> Any:
        if isinstance(value, str):
            return "***" if key is not None and looks_sensitive(key) and value else redact(value)
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, dict):
            return {str(k): clean(v, str(k)) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [clean(v) for v in value]
        try:
            text = str(value)
        except Exception:
            text = f"<{type(value).__name__} object>"
        return redact(text)

    out: dict[str, Any] = {}
    for name, value in fields.items():
        cleaned = clean(value)
        text = cleaned if isinstance(cleaned, str) else json.dumps(cleaned, default=str)
        if len(text) > MAX_FIELD_LENGTH:
            cleaned = TRUNCATED + text[: MAX_FIELD_LENGTH - len(TRUNCATED)]
        out[name] = cleaned
    return out
