"""``ketch tasks test --map-index N`` on a mapped task: which instances exist without a run.

There is no database state here, so upstream values read as None: a mapped task that maps
over one cannot be expanded, and says so instead of failing on ``None`` deep inside the
try. Over literals only, the number of instances is known and N is checked against it (the
cross product index would otherwise wrap around silently).
"""

from __future__ import annotations

import math
from typing import Any

from ketch.cli._common import CliError


def literal_length(task: Any) -> int | None:
    """The number of instances of a mapped task that maps over literals only, else None."""
    from ketch.authoring.mapped import DICT_OF_LISTS
    from ketch.authoring.xcom_args import XComArg

    value = task.expand_value
    if task.expand_kind == DICT_OF_LISTS:
        if any(isinstance(v, XComArg) for v in value.values()):
            return None
        return math.prod(len(v) for v in value.values())
    return None if isinstance(value, XComArg) else len(value)


def check_instance(task: Any, map_index: int) -> None:
    """One clear line when instance ``map_index`` of ``task`` cannot be run here."""
    length = literal_length(task)
    if length is None:
        upstream = ", ".join(repr(t) for t in sorted(task.mapped_upstream_ids()))
        raise CliError(
            f"task {task.task_id!r} maps over the value of {upstream}, which `ketch tasks "
            "test` cannot read (it runs without a run's state: upstream values read as None)"
        )
    if map_index >= length:
        raise CliError(
            f"map_index {map_index} is out of range: task {task.task_id!r} has {length} "
            f"instance{'s' if length != 1 else ''} (0..{length - 1})"
        )
