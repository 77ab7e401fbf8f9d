"""ketch: workflow orchestration for data teams on Kubernetes.

The public authoring API, as an Airflow 3 user expects it::

    from ketch import DAG, dag, task, task_group, TaskGroup, Param, BashTask, EmptyTask

Importing ``ketch`` stays light (no database, web or settings libraries): the
task-try process imports it for every try.
"""

from ketch.authoring.bash import BashTask
from ketch.authoring.connection import Connection
from ketch.authoring.context import get_current_context
from ketch.authoring.dag import DAG, dag
from ketch.authoring.decorators import task
from ketch.authoring.helpers import chain, cross_downstream
from ketch.authoring.params import Param
from ketch.authoring.python import BranchPythonTask, PythonTask
from ketch.authoring.s3_key_sensor import S3KeySensor
from ketch.authoring.sensors import BaseSensor, FileSensor, PokeReturnValue, PythonSensor
from ketch.authoring.short_circuit import ShortCircuitTask
from ketch.authoring.taskgroup import TaskGroup, task_group
from ketch.authoring.tasks import BaseTask, EmptyTask, TaskResult
from ketch.authoring.variable import Variable
from ketch.authoring.xcom_args import XComArg
from ketch.exceptions import AirflowFailException, AirflowSkipException, FailTask, SkipTask
from ketch.states import TriggerRule

# Airflow spellings at the top level too, so a moved DAG's ``from airflow... import X``
# becomes ``from ketch import X`` whatever X is (the exception aliases live in exceptions.py).
BashOperator = BashTask
EmptyOperator = EmptyTask
DummyOperator = EmptyTask  # Airflow 2's old name of EmptyOperator
PythonOperator = PythonTask
BranchPythonOperator = BranchPythonTask
ShortCircuitOperator = ShortCircuitTask
BaseSensorOperator = BaseSensor

__all__ = [
    "DAG",
    "AirflowFailException",
    "AirflowSkipException",
    "BaseSensor",
    "BaseSensorOperator",
    "BaseTask",
    "BashOperator",
    "BashTask",
    "BranchPythonOperator",
    "BranchPythonTask",
    "Connection",
    "DummyOperator",
    "EmptyOperator",
    "EmptyTask",
    "FailTask",
    "FileSensor",
    "Param",
    "PokeReturnValue",
    "PythonOperator",
    "PythonSensor",
    "PythonTask",
    "S3KeySensor",
    "ShortCircuitOperator",
    "ShortCircuitTask",
    "SkipTask",
    "TaskGroup",
    "TaskResult",
    "TriggerRule",
    "Variable",
    "XComArg",
    "chain",
    "cross_downstream",
    "dag",
    "get_current_context",
    "task",
    "task_group",
]
