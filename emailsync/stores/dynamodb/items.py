"""DynamoDB items as plan JSON ({"S": ...}, {"N": ...}, {"SS": [...]}, binary as base64), exact and typed: codecs,
sizes, and paths into items.
"""

from __future__ import annotations

import base64
from typing import Any

from emailsync.plan import dumps


def to_json(av: dict[str, Any]) -> dict[str, Any]:
    """A boto3 AttributeValue as plan JSON: binary as base64, sets sorted (sets have no order)."""
    ((t, v),) = av.items()
    if t == "B":
        return {"B": base64.b64encode(v).decode()}
    if t == "BS":
        return {"BS": sorted(base64.b64encode(x).decode() for x in v)}
    if t in ("SS", "NS"):
        return {t: sorted(v)}
    if t == "M":
        return {"M": {k: to_json(x) for k, x in v.items()}}
    if t == "L":
        return {"L": [to_json(x) for x in v]}
    return {t: v}


def from_json(av: dict[str, Any]) -> dict[str, Any]:
    ((t, v),) = av.items()
    if t == "B":
        return {"B": base64.b64decode(v)}
    if t == "BS":
        return {"BS": [base64.b64decode(x) for x in v]}
    if t == "M":
        return {"M": {k: from_json(x) for k, x in v.items()}}
    if t == "L":
        return {"L": [from_json(x) for x in v]}
    return {t: v}


def item_to_json(item: dict[str, Any]) -> dict[str, Any]:
    return {k: to_json(v) for k, v in item.items()}


def item_from_json(item: dict[str, Any]) -> dict[str, Any]:
    return {k: from_json(v) for k, v in item.items()}


def normalized(item: dict[str, Any] | None) -> Any:
    """An item for comparison: sets as sorted lists, numbers as their decimal value."""
    if item is None:
        return None

    def norm(av: dict[str, Any]) -> Any:
        ((t, v),) = av.items()
        if t in ("SS", "BS"):
            return (t, sorted(v))
        if t == "NS":
            return (t, sorted(_num(x) for x in v))
        if t == "N":
            return (t, _num(v))
        if t == "M":
            return (t, {k: norm(x) for k, x in v.items()})
        if t == "L":
            return (t, [norm(x) for x in v])
        return (t, v)

    return {k: norm(v) for k, v in item.items()}


def _num(text: str) -> Any:
    from decimal import Decimal

    return Decimal(text).normalize()


def item_size(item: dict[str, Any]) -> int:
    """DynamoDB's item size: attribute names plus values (UTF-8), close enough to enforce the 400 KB limit."""

    def size(av: dict[str, Any]) -> int:
        ((t, v),) = av.items()
        if t == "S":
            return len(v.encode())
        if t == "N":
            return len(v) // 2 + 2
        if t == "B":
            return len(base64.b64decode(v)) if isinstance(v, str) else len(v)
        if t in ("SS", "NS", "BS"):
            return sum(size({t[0]: x}) for x in v)
        if t == "M":
            return 3 + sum(len(k.encode()) + size(x) + 1 for k, x in v.items())
        if t == "L":
            return 3 + sum(size(x) + 1 for x in v)
        return 1

    return sum(len(k.encode()) + size(v) for k, v in item.items())


def keystr(key: dict[str, Any]) -> str:
    return dumps(key)


def get_path(item: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any] | None:
    node: dict[str, Any] | None = item.get(path[0])
    for part in path[1:]:
        if not node or "M" not in node:
            return None
        node = node["M"].get(part)
    return node


def set_path(item: dict[str, Any], path: tuple[str, ...], value: dict[str, Any]) -> None:
    if len(path) == 1:
        item[path[0]] = value
        return
    node = item[path[0]]["M"]
    for part in path[1:-1]:
        node = node[part]["M"]
    node[path[-1]] = value
