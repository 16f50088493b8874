"""The plans/ folder: one folder per plan holding plan.json, plan.md and what happened when it was applied."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from emailsync.errors import UserError
from emailsync.plan import Plan, write_plan
from emailsync.render import plan_markdown


def save_plan(plan: Plan, path: Path) -> Path:
    """Write plan.json and plan.md side by side; returns the plan.md path."""
    if path.suffix != ".json":
        raise UserError(f"--out {path}: a plan file must end in .json")
    if path.exists():
        raise UserError(f"--out {path}: the file exists; plans are never overwritten, choose another path")
    write_plan(plan, path)
    md = path.with_name(path.stem + ".md") if path.name != "plan.json" else path.with_name("plan.md")
    md.write_text(plan_markdown(plan), encoding="utf-8")
    return md


def write_report(plan_path: Path, report: dict[str, Any]) -> Path:
    """report.json beside the plan: the latest apply's outcome per action (fsync'd, then renamed)."""
    out = plan_path.with_name("report.json" if plan_path.name == "plan.json" else plan_path.stem + ".report.json")
    tmp = out.with_suffix(".json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2, ensure_ascii=False, sort_keys=True, default=str)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(out)
    return out


def journal_writer(path: Path) -> Callable[[dict[str, Any]], None]:
    """An append-only JSON-lines journal beside the plan, each entry fsync'd before the write goes on."""

    def write(entry: dict[str, Any]) -> None:
        entry = {"at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"), **entry}
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry, sort_keys=True, ensure_ascii=False, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())

    return write
