"""What the ``airflow`` shim provides: module -> name -> where ketch has it, and what to
use instead of what it does not provide.

Each name lists candidates (``module:attribute``) tried in order when the name is first
used, so a name ketch gains later (``ketch.ShortCircuitOperator``...) works as soon as it
exists, without a change here.
"""

from __future__ import annotations

import importlib

_COMPAT = "ketch.airflow_compat.dag"

_DAG = (f"{_COMPAT}:DAG",)
_DAG_DECORATOR = (f"{_COMPAT}:dag",)
_CHAIN = ("ketch:chain", "ketch.authoring.helpers:chain")
_CROSS = ("ketch:cross_downstream", "ketch.authoring.helpers:cross_downstream")
_CONTEXT = ("ketch:get_current_context",)
_PYTHON = ("ketch:PythonOperator", "ketch.authoring.python:PythonTask")
_BRANCH = ("ketch:BranchPythonOperator", "ketch.authoring.python:BranchPythonTask")
_SHORT = ("ketch:ShortCircuitOperator",)
_BASH = ("ketch:BashOperator", "ketch:BashTask")
_EMPTY = ("ketch:EmptyOperator", "ketch:EmptyTask")
_DUMMY = ("ketch:DummyOperator", *_EMPTY)
_PYTHON_SENSOR = ("ketch:PythonSensor",)
_BASE_SENSOR = ("ketch:BaseSensorOperator",)
_POKE_RETURN = ("ketch:PokeReturnValue",)
_FILE_SENSOR = ("ketch:FileSensor",)
_S3_KEY_SENSOR = ("ketch:S3KeySensor",)


def _ketch(name: str) -> tuple[str, ...]:
    return (f"ketch:{name}",)


_SDK: dict[str, tuple[str, ...]] = {
    "dag": _DAG_DECORATOR,
    "DAG": _DAG,
    "task": _ketch("task"),
    "Variable": _ketch("Variable"),
    "Param": _ketch("Param"),
    "TaskGroup": _ketch("TaskGroup"),
    "task_group": _ketch("task_group"),
    "get_current_context": _CONTEXT,
    "chain": _CHAIN,
    "cross_downstream": _CROSS,
    "Connection": _ketch("Connection"),
    "XComArg": _ketch("XComArg"),
    "TriggerRule": _ketch("TriggerRule"),
    "BaseSensorOperator": _BASE_SENSOR,
    "PokeReturnValue": _POKE_RETURN,
}

_EXCEPTIONS: dict[str, tuple[str, ...]] = {
    "AirflowSkipException": ("ketch.exceptions:AirflowSkipException",),
    "AirflowFailException": ("ketch.exceptions:AirflowFailException",),
    # Airflow's base class: raising it fails the try (retries apply); catching it catches
    # ketch's own exceptions, skip and fail included, as in Airflow.
    "AirflowException": ("ketch.exceptions:AirflowException", "ketch.exceptions:KetchException"),
    "AirflowTaskTimeout": ("ketch.exceptions:AirflowTaskTimeout", "ketch.exceptions:TaskTimeout"),
    "AirflowSensorTimeout": ("ketch.exceptions:AirflowSensorTimeout",),
    "AirflowRescheduleException": ("ketch.exceptions:AirflowRescheduleException",),
}

_PYTHON_OPS: dict[str, tuple[str, ...]] = {
    "PythonOperator": _PYTHON,
    "BranchPythonOperator": _BRANCH,
    "ShortCircuitOperator": _SHORT,
    "get_current_context": _CONTEXT,
}

# Every module of the shim and the names it provides. A module not listed (and not a
# parent of one) is "outside the subset": importing it works, using any name from it is
# an ImportError with a suggestion, so the message names the symbol.
MODULES: dict[str, dict[str, tuple[str, ...]]] = {
    "airflow": {"DAG": _DAG, "XComArg": _ketch("XComArg")},
    "airflow.sdk": _SDK,
    "airflow.sdk.definitions": {},
    "airflow.sdk.exceptions": _EXCEPTIONS,
    "airflow.decorators": {
        "dag": _DAG_DECORATOR,
        "task": _ketch("task"),
        "task_group": _ketch("task_group"),
    },
    "airflow.exceptions": _EXCEPTIONS,
    "airflow.models": {
        "DAG": _DAG,
        "Variable": _ketch("Variable"),
        "Param": _ketch("Param"),
        "Connection": _ketch("Connection"),
        "XComArg": _ketch("XComArg"),
    },
    "airflow.models.dag": {"DAG": _DAG, "dag": _DAG_DECORATOR},
    "airflow.models.variable": {"Variable": _ketch("Variable")},
    "airflow.models.param": {"Param": _ketch("Param")},
    "airflow.models.connection": {"Connection": _ketch("Connection")},
    "airflow.models.xcom_arg": {"XComArg": _ketch("XComArg")},
    "airflow.models.baseoperator": {"chain": _CHAIN, "cross_downstream": _CROSS},
    "airflow.utils": {},
    "airflow.utils.task_group": {"TaskGroup": _ketch("TaskGroup")},
    "airflow.utils.trigger_rule": {"TriggerRule": _ketch("TriggerRule")},
    "airflow.utils.dates": {"days_ago": (f"{_COMPAT}:days_ago",)},
    "airflow.utils.helpers": {"chain": _CHAIN, "cross_downstream": _CROSS},
    "airflow.operators": {},
    "airflow.operators.python": _PYTHON_OPS,
    "airflow.operators.python_operator": _PYTHON_OPS,  # Airflow 1.10 paths Airflow 2 kept
    "airflow.operators.bash": {"BashOperator": _BASH},
    "airflow.operators.bash_operator": {"BashOperator": _BASH},
    "airflow.operators.empty": {"EmptyOperator": _EMPTY},
    "airflow.operators.dummy": {"DummyOperator": _DUMMY, "EmptyOperator": _EMPTY},
    "airflow.operators.dummy_operator": {"DummyOperator": _DUMMY},
    "airflow.sensors": {},
    "airflow.sensors.python": {"PythonSensor": _PYTHON_SENSOR},
    "airflow.sensors.base": {"BaseSensorOperator": _BASE_SENSOR, "PokeReturnValue": _POKE_RETURN},
    "airflow.sensors.filesystem": {"FileSensor": _FILE_SENSOR},
    "airflow.providers": {},
    "airflow.providers.standard": {},
    "airflow.providers.standard.operators": {},
    "airflow.providers.standard.operators.python": _PYTHON_OPS,
    "airflow.providers.standard.operators.bash": {"BashOperator": _BASH},
    "airflow.providers.standard.operators.empty": {"EmptyOperator": _EMPTY},
    "airflow.providers.standard.sensors": {},
    "airflow.providers.standard.sensors.python": {"PythonSensor": _PYTHON_SENSOR},
    "airflow.providers.standard.sensors.filesystem": {"FileSensor": _FILE_SENSOR},
    "airflow.providers.amazon": {},
    "airflow.providers.amazon.aws": {},
    "airflow.providers.amazon.aws.sensors": {},
    "airflow.providers.amazon.aws.sensors.s3": {"S3KeySensor": _S3_KEY_SENSOR},
}

_POD = (
    "a @task in ketch already runs in its own pod (one pod per try): put the code in a "
    "@task (or @task.bash) and the image or resources in executor_config"
)
_CUSTOM = (
    "custom operators (BaseOperator subclasses) are not supported: write the work as a "
    "@task (Python) or a BashTask / @task.bash (shell)"
)
_HOOK = (
    "provider hooks are not supported: use the service's Python library directly in a "
    "@task (credentials: ketch.Connection.get / Variable.get)"
)
_PROVIDER_OPERATOR = (
    "provider operators are not supported: call the service's Python library in a @task"
)
_PROVIDER_SENSOR = "provider sensors are not supported: poll with the library in a PythonSensor"

# Names with a specific suggestion, wherever they are imported from.
SYMBOL_SUGGESTIONS: dict[str, str] = {
    "KubernetesPodOperator": _POD,
    "BaseOperator": _CUSTOM,
    "BaseHook": _HOOK,
    "Dataset": "data-aware scheduling is not supported: use a cron or timedelta schedule",
    "Asset": "data-aware scheduling is not supported: use a cron or timedelta schedule",
    "Label": "edge labels are not supported: drop the label (plain >> between the tasks)",
    "TaskInstance": "read upstream results by passing a @task's return value (XComArg)",
    "XCom": "read upstream results by passing a @task's return value (XComArg)",
    "DockerOperator": "a @task already runs in its own container: set its image in executor_config",
    "PythonVirtualenvOperator": "install the packages in the task image and use a @task",
    "ExternalPythonOperator": "install the packages in the task image and use a @task",
    "TriggerDagRunOperator": "trigger the DAG through ketch's REST API from a @task",
    "ExternalTaskSensor": "not supported: poll ketch's REST API in a PythonSensor",
    "SubDagOperator": "use a TaskGroup",
}

DEFAULT_SUGGESTION = "it is outside ketch's Airflow subset (see docs/airflow-compat.md)"


def suggestion(module: str, name: str) -> str:
    """What to use in ketch instead of ``name`` imported from ``module``."""
    if name in SYMBOL_SUGGESTIONS:
        return SYMBOL_SUGGESTIONS[name]
    if module.startswith("airflow.timetables"):
        return "pass a cron string, a timedelta or one of ketch's timetables as schedule="
    if module.startswith("airflow.hooks") or ".hooks" in module or name.endswith("Hook"):
        return _HOOK
    if module.startswith("airflow.providers."):
        if name.endswith("Sensor") or ".sensors" in module:
            return _PROVIDER_SENSOR
        return _PROVIDER_OPERATOR
    if name.endswith("Operator"):
        return _CUSTOM if name == "BaseOperator" else DEFAULT_SUGGESTION
    return DEFAULT_SUGGESTION


def known_module(name: str) -> bool:
    return name in MODULES


def provided(module: str, name: str) -> bool:
    """Whether the shim module ``module`` lists ``name`` (whether or not ketch has it yet)."""
    return name in MODULES.get(module, {})


class UnsupportedAirflowImport(ImportError):
    """A name the shim does not provide, with what to use in ketch instead."""


def unsupported_error(module: str, name: str) -> UnsupportedAirflowImport:
    if provided(module, name):
        why = f"ketch does not provide {name} yet"
    else:
        why = suggestion(module, name)
    return UnsupportedAirflowImport(
        f"cannot import name {name!r} from {module!r} (ketch's Airflow compatibility): {why}",
        name=module,
    )


def resolve(module: str, name: str) -> object:
    """The ketch object behind ``module.name``; :class:`UnsupportedAirflowImport` when there is none (yet)."""
    for candidate in MODULES.get(module, {}).get(name, ()):
        mod_name, _, attr = candidate.partition(":")
        try:
            value = getattr(importlib.import_module(mod_name), attr)
        except (ImportError, AttributeError):
            continue
        return value
    raise unsupported_error(module, name)


def is_airflow_name(module: str) -> bool:
    return module == "airflow" or module.startswith("airflow.")
