"""Where the graph view draws each task, each dependency and each task group.

Left to right as Airflow draws it: a task's column is the length of the longest path to
it from a root. Vertically the DAG is laid out level by level of its task groups (the
DAG itself, then each group): a level's items — its own tasks and its child groups, a
group laid out first as one block — are taken by first column, ordered by the mean
height of their upstream tasks already placed (one barycentre pass, which keeps most
edges short and uncrossed), and stacked on a skyline: an item goes just below whatever
occupies any column it spans. So a group's box spans its columns and its rows alone:
it contains exactly its tasks and its nested groups' boxes, never another task. Done
here in a few lines instead of with a JavaScript graph library: no build step, and the
page works without scripts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ketch.serialization import SerializedDag

NODE_WIDTH = 180
NODE_HEIGHT = 34
COLUMN_GAP = 70
ROW_GAP = 16
MARGIN = 10
LABEL_CHARS = 24  # longer ids are cut in the box (the whole id is its tooltip)
GROUP_HEADER = 24  # room for a group's label above its tasks
GROUP_BOTTOM = 8
GROUP_SIDE = 8  # a group's box reaches this far beside its columns, per nesting level


@dataclass(frozen=True, slots=True)
class Node:
    task_id: str
    label: str
    x: int
    y: int
    column: int
    task_group_id: str | None = None


@dataclass(frozen=True, slots=True)
class Edge:
    upstream: str
    downstream: str
    path: str  # SVG path data


@dataclass(frozen=True, slots=True)
class GroupBox:
    group_id: str
    label: str
    tooltip: str
    x: int
    y: int
    width: int
    height: int
    depth: int  # 0 for a top-level group: outer boxes are drawn first


@dataclass(frozen=True, slots=True)
class Graph:
    nodes: list[Node]
    edges: list[Edge]
    width: int
    height: int
    groups: list[GroupBox] = field(default_factory=list)


_Item = tuple[str, bool]
"""A level's item: (task id, False) or (group id, True)."""


@dataclass
class _Block:
    """One level laid out: task and group offsets from the level's top, its height and
    the columns it spans."""

    tasks: dict[str, int] = field(default_factory=dict)
    groups: dict[str, tuple[int, int]] = field(default_factory=dict)  # id: (top, height)
    height: int = 0
    first: int = 0
    last: int = 0


def columns_of(dag: SerializedDag) -> dict[str, int]:
    """Each task's column: the longest path from a root (tasks are in definition order,
    which need not be topological, so iterate to a fixed point over the acyclic graph)."""
    column = {task_id: 0 for task_id in dag.tasks}
    for _ in range(len(dag.tasks)):
        changed = False
        for task_id, task in dag.tasks.items():
            want = max((column[u] + 1 for u in task.upstream_task_ids if u in column), default=0)
            if want != column[task_id]:
                column[task_id], changed = want, True
        if not changed:
            break
    return column


class _Layout:
    def __init__(self, dag: SerializedDag) -> None:
        self.dag = dag
        self.column = columns_of(dag)
        self.paths = {t: dag.task_group_path(t) for t in dag.tasks}
        self.nesting = {g: self._nesting(g) for g in dag.task_groups}
        deepest = max(self.nesting.values(), default=0)
        # Boxes of neighbouring columns share the gap between them.
        self.side = min(GROUP_SIDE, (COLUMN_GAP // 2 - 2) // deepest) if deepest else 0
        self.left = MARGIN + self.side * deepest

    def _nesting(self, group_id: str) -> int:
        """1 for a group without subgroups, one more per level of subgroups inside."""
        subgroups = [
            c for c in self.dag.task_groups[group_id].children if c in self.dag.task_groups
        ]
        return 1 + max((self._nesting(c) for c in subgroups), default=0)

    def level(self, group_id: str | None, depth: int) -> _Block:
        """Lay out the tasks directly in ``group_id`` (None: the DAG) and its child groups."""
        items = self._items(group_id, depth)
        blocks = {i: self.level(i, depth + 1) for i, is_group in items if is_group}
        return _Stack(self, items, blocks).block()

    def _items(self, group_id: str | None, depth: int) -> list[_Item]:
        """The level's own tasks and child groups, in definition order (of first task)."""
        items: dict[_Item, None] = {}
        for task_id, path in self.paths.items():
            if depth and (len(path) < depth or path[depth - 1] != group_id):
                continue
            sub = path[depth] if len(path) > depth else None
            items.setdefault((sub, True) if sub is not None else (task_id, False))
        return list(items)

    def x(self, column: int) -> int:
        return self.left + column * (NODE_WIDTH + COLUMN_GAP)


class _Stack:
    """One level's items stacked on a skyline, first column by first column."""

    def __init__(self, lay: _Layout, items: list[_Item], blocks: dict[str, _Block]) -> None:
        self.lay, self.items, self.blocks = lay, items, blocks
        self.order = {item: index for index, item in enumerate(items)}
        self.skyline: dict[int, int] = {}
        self.result = _Block()

    def span(self, item: _Item) -> tuple[int, int]:
        if item[1]:
            return self.blocks[item[0]].first, self.blocks[item[0]].last
        return self.lay.column[item[0]], self.lay.column[item[0]]

    def barycentre(self, item: _Item) -> float:
        """The mean height of the item's upstream tasks placed so far in this level."""
        members = list(self.blocks[item[0]].tasks) if item[1] else [item[0]]
        placed = self.result.tasks
        ups = [
            placed[u]
            for t in members
            for u in self.lay.dag.tasks[t].upstream_task_ids
            if u in placed
        ]
        if ups:
            return sum(ups) / len(ups)
        return float(self.order[item] * (NODE_HEIGHT + ROW_GAP))

    def place(self, item: _Item) -> None:
        lo, hi = self.span(item)
        top = max(self.skyline.get(c, 0) for c in range(lo, hi + 1))
        if item[1]:
            inner = self.blocks[item[0]]
            box = GROUP_HEADER + inner.height - ROW_GAP + GROUP_BOTTOM
            height = box + ROW_GAP
            for t, y in inner.tasks.items():
                self.result.tasks[t] = top + GROUP_HEADER + y
            self.result.groups[item[0]] = (top, box)
            for g, (y, h) in inner.groups.items():
                self.result.groups[g] = (top + GROUP_HEADER + y, h)
        else:
            height = NODE_HEIGHT + ROW_GAP
            self.result.tasks[item[0]] = top
        for c in range(lo, hi + 1):
            self.skyline[c] = top + height

    def block(self) -> _Block:
        by_first: dict[int, list[_Item]] = {}
        for item in self.items:
            by_first.setdefault(self.span(item)[0], []).append(item)
        for first in sorted(by_first):
            for item in sorted(by_first[first], key=self.barycentre):
                self.place(item)
        spans = [self.span(i) for i in self.items]
        self.result.height = max(self.skyline.values(), default=0)
        self.result.first = min((s[0] for s in spans), default=0)
        self.result.last = max((s[1] for s in spans), default=0)
        return self.result


def layout(dag: SerializedDag) -> Graph:
    lay = _Layout(dag)
    root = lay.level(None, 0)
    nodes = {
        task_id: Node(
            task_id,
            _label(task.task_display_name or task.label or task_id),
            lay.x(lay.column[task_id]),
            MARGIN + root.tasks[task_id],
            lay.column[task_id],
            task.task_group_id if lay.paths[task_id] else None,
        )
        for task_id, task in dag.tasks.items()
    }
    edges = [
        Edge(up, task_id, _curve(nodes[up], nodes[task_id]))
        for task_id, task in dag.tasks.items()
        for up in task.upstream_task_ids
        if up in nodes
    ]
    columns = max(lay.column.values(), default=0) + 1
    width = lay.left * 2 + columns * (NODE_WIDTH + COLUMN_GAP) - COLUMN_GAP
    groups = [_box(lay, dag, root, g) for g in root.groups]
    groups.sort(key=lambda b: b.depth)
    return Graph(list(nodes.values()), edges, width, MARGIN * 2 + root.height, groups)


def _box(lay: _Layout, dag: SerializedDag, root: _Block, group_id: str) -> GroupBox:
    group = dag.task_groups[group_id]
    tasks = [t for t, path in lay.paths.items() if group_id in path]
    first = min(lay.column[t] for t in tasks)
    last = max(lay.column[t] for t in tasks)
    reach = lay.side * lay.nesting[group_id]
    top, height = root.groups[group_id]
    return GroupBox(
        group_id,
        _label(group.label),
        group.tooltip,
        lay.x(first) - reach,
        MARGIN + top,
        lay.x(last) + NODE_WIDTH + reach - (lay.x(first) - reach),
        height,
        _depth(dag, group_id),
    )


def _depth(dag: SerializedDag, group_id: str) -> int:
    depth, parent = 0, dag.task_groups[group_id].parent_group_id
    while parent is not None and parent in dag.task_groups:
        depth, parent = depth + 1, dag.task_groups[parent].parent_group_id
    return depth


def _label(text: str) -> str:
    return text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 1] + "…"


def _curve(up: Node, down: Node) -> str:
    """A cubic Bézier from the right side of ``up`` to the left side of ``down``."""
    x1, y1 = up.x + NODE_WIDTH, up.y + NODE_HEIGHT // 2
    x2, y2 = down.x, down.y + NODE_HEIGHT // 2
    bend = max((x2 - x1) // 2, 20)
    return f"M{x1},{y1} C{x1 + bend},{y1} {x2 - bend},{y2} {x2},{y2}"
