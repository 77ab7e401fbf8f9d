"""``chain`` and ``cross_downstream``: Airflow's dependency helpers, with its semantics.

``chain(a, [b, c], d)`` is ``a >> [b, c] >> d``; two adjacent lists are linked pairwise
(they must have the same length); ``cross_downstream([a, b], [c, d])`` links every task of
the first list to every task of the second.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from ketch.authoring.dependencies import DependencyMixin


def chain(*tasks: Any) -> None:
    """Link the given tasks, task groups, XComArgs or lists of them one after another."""
    for up, down in itertools.pairwise(tasks):
        if isinstance(up, DependencyMixin):
            up.set_downstream(down)
            continue
        if isinstance(down, DependencyMixin):
            down.set_upstream(up)
            continue
        if not isinstance(up, Sequence) or not isinstance(down, Sequence):
            raise TypeError(
                f"Chain not supported between instances of {type(up).__name__} "
                f"and {type(down).__name__}"
            )
        if len(up) != len(down):
            raise ValueError(
                f"Chain not supported for different length Iterable. Got {len(up)} and {len(down)}."
            )
        for up_task, down_task in zip(up, down, strict=True):
            up_task.set_downstream(down_task)


def cross_downstream(from_tasks: Sequence[Any], to_tasks: Any) -> None:
    """Every task of ``from_tasks`` upstream of every task of ``to_tasks``."""
    for up in from_tasks:
        up.set_downstream(to_tasks)


__all__ = ["chain", "cross_downstream"]
