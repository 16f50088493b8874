"""Plans hold personal data (addresses, whole rows and items). A redacted copy is for rendering plan.md into a public
pull request: every address becomes a keyed hash that keeps its domain (`h-3f9a1c2b7d04@oldco.com`), so reviewers
still see which changes go together and where each address moves. Whole rows and items are replaced by their
column names. The plan file itself is never redacted: apply needs the real values.

The hash is an HMAC under EMAILSYNC_PLAN_KEY when it is set (the same address gives the same hash in every plan
rendered with that key), otherwise under a random key made for this rendering: addresses then cannot be guessed
back by hashing candidates, but hashes only match within one rendering.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from emailsync.plan import Action, Plan, Rows, Skipped, parse_action

T = TypeVar("T")
U = TypeVar("U")

# Anything that looks like an address, generously: the text around must not keep a fragment of one.
_ADDRESS = re.compile(r"[^\s@<>()\[\]{}|,;:\"'`]+@([^\s@<>()\[\]{}|,;:\"'`]+)")
# Fields holding whole rows or items: shown as their field names only.
_WHOLE = ("row", "existing", "merged", "remains")


class Redactor:
    def __init__(self, key: bytes | None) -> None:
        self.key = key if key is not None else secrets.token_bytes(32)

    def address(self, match: re.Match[str]) -> str:
        digest = hmac.new(self.key, match.group(0).encode(), hashlib.sha256).hexdigest()[:12]
        return f"h-{digest}@{match.group(1)}"

    def text(self, value: str) -> str:
        return _ADDRESS.sub(self.address, value) if "@" in value else value

    def value(self, value: Any) -> Any:
        """Addresses hashed wherever they are; every other value kept (keys, steps, kinds)."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self.value(v) for v in value]
        if isinstance(value, dict):
            return {self.text(k): self.value(v) for k, v in value.items()}
        return value

    def whole(self, value: Any) -> Any:
        """A row or item: its field names, no values (names, phones and the like are personal data too)."""
        if not isinstance(value, dict):
            return value
        return {"redacted": f"{len(value)} fields: {', '.join(sorted(self.text(k) for k in value))}"}


NOTE = (
    "addresses are shown as keyed hashes that keep the domain (h-…@domain), and whole rows and items as their field "
    "names; the plan file holds the real values"
)


def redacted(plan: Plan, key: bytes | None) -> Plan:
    """A view of the plan for rendering only: same digest, addresses hashed, rows and items reduced to names. Its
    actions are redacted one by one as they stream past, never all at once."""
    r = Redactor(key)
    data = plan.model_dump(mode="python")
    data = {
        k: (v if k in ("digest", "signature", "created_at", "tool_version", "targets", "reads") else r.value(v))
        for k, v in data.items()
    }
    view = Plan.model_validate(data)

    def action(a: Action) -> Action:
        d = a.model_dump(mode="python")
        for f in _WHOLE:
            if f in d:  # each store's actions have their own fields
                d[f] = r.whole(d[f])
        if isinstance(d.get("conflict"), dict):
            d["conflict"] = r.value(d["conflict"]) | ({"values": "redacted"} if "values" in d["conflict"] else {})
        return parse_action(r.value(d))

    view._actions = _Mapped(plan.actions, action)
    view._skipped = _Mapped(plan.skipped, lambda s: Skipped.model_validate(r.value(s.model_dump(mode="python"))))
    return view


class _Mapped(Generic[T, U]):
    """Rows seen through a function, item by item."""

    def __init__(self, rows: Rows[T], fn: Callable[[T], U]) -> None:
        self._rows, self._fn = rows, fn

    def __iter__(self) -> Iterator[U]:
        return map(self._fn, self._rows)

    def __len__(self) -> int:
        return len(self._rows)
