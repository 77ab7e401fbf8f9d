"""Kubernetes label and field selectors (the subset the API server accepts)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

_SET_RE = re.compile(r"^\s*(!?)([A-Za-z0-9_./-]+)\s+(in|notin)\s*\(([^)]*)\)\s*$")
_EQ_RE = re.compile(r"^\s*([A-Za-z0-9_./-]+)\s*(==|!=|=)\s*([A-Za-z0-9_.-]*)\s*$")
_EXISTS_RE = re.compile(r"^\s*(!?)([A-Za-z0-9_./-]+)\s*$")


class SelectorError(ValueError):
    pass


def _split(selector: str) -> list[str]:
    parts: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in selector:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p for p in (p.strip() for p in parts) if p]


def _check(op: str, actual: str | None, values: frozenset[str]) -> bool:
    if op == "in":
        return actual in values
    if op == "notin":
        return actual not in values
    if op == "exists":
        return actual is not None
    if op == "!exists":
        return actual is None
    raise AssertionError(op)


def parse_label_selector(selector: str | None) -> Callable[[Mapping[str, str]], bool]:
    """Compile a label selector (``a=b,c!=d,e in (x,y),f notin (z),g,!h``)."""
    reqs: list[tuple[str, str, frozenset[str]]] = []
    for part in _split(selector or ""):
        m = _SET_RE.match(part)
        if m and not m.group(1):
            values = frozenset(v.strip() for v in m.group(4).split(",") if v.strip())
            reqs.append((m.group(2), m.group(3), values))
            continue
        m = _EQ_RE.match(part)
        if m:
            key, op, value = m.groups()
            reqs.append((key, "notin" if op == "!=" else "in", frozenset({value})))
            continue
        m = _EXISTS_RE.match(part)
        if m:
            neg, key = m.groups()
            reqs.append((key, "!exists" if neg else "exists", frozenset()))
            continue
        raise SelectorError(f"unable to parse requirement: {part!r}")

    def match(labels: Mapping[str, str]) -> bool:
        return all(_check(op, labels.get(key), values) for key, op, values in reqs)

    return match


def labels_match(selector: str | None, obj: Mapping[str, Any]) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return parse_label_selector(selector)(labels)


def _lookup(obj: Mapping[str, Any], path: str) -> str:
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, Mapping):
            return ""
        cur = cur.get(part)
    return "" if cur is None else str(cur)


def parse_field_selector(selector: str | None) -> Callable[[Mapping[str, Any]], bool]:
    """Compile a field selector (``involvedObject.name=x,metadata.namespace!=y``)."""
    reqs: list[tuple[str, bool, str]] = []
    for part in _split(selector or ""):
        m = _EQ_RE.match(part)
        if not m:
            raise SelectorError(f"invalid field selector: {part!r}")
        path, op, value = m.groups()
        reqs.append((path, op != "!=", value))

    def match(obj: Mapping[str, Any]) -> bool:
        return all((_lookup(obj, path) == value) == equal for path, equal, value in reqs)

    return match
