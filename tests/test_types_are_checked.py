"""The package type-checks with mypy as pyproject.toml configures it ([tool.mypy]: strict, the pydantic plugin, the
boto3 and PyYAML stubs), so the protocols between modules (what a store hands the planner, what a plan holds, what
a boto3 client accepts) are checked on every run of the suite, not only exercised by it."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

from mypy import api

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "pyproject.toml"


def _mypy(*args: str) -> tuple[str, int]:
    out, err, status = api.run(["--config-file", str(CONFIG), "--no-color-output", *args])
    return out + err, status


def test_the_package_has_no_type_errors(monkeypatch):
    monkeypatch.chdir(ROOT)  # `files = ["emailsync"]` is read relative to the working directory
    report, status = _mypy()
    errors = [line for line in report.splitlines() if ": error:" in line]
    assert status == 0 and not errors, f"mypy found {len(errors)} error(s) (exit {status}):\n{report}"
    # Every module was checked: a configuration that named no files, or the wrong ones, would pass anything.
    checked = re.search(r"(?:in|checked) (\d+) source files?", report)
    assert checked, report
    assert int(checked.group(1)) == len(list((ROOT / "emailsync").rglob("*.py"))), report


def test_the_configuration_is_strict(tmp_path, monkeypatch):
    """What the configuration promises is in force: an unannotated function, a bare ignore and an unused one fail."""
    monkeypatch.chdir(ROOT)
    bad = tmp_path / "loose.py"
    bad.write_text(
        textwrap.dedent("""\
            def untyped(x):
                return x


            n: int = "a"  # type: ignore
            m: int = 1  # type: ignore[assignment]
        """),
        encoding="utf-8",
    )
    report, status = _mypy(str(bad))
    assert status == 1, report
    assert "[no-untyped-def]" in report, report
    assert "[ignore-without-code]" in report, report
    assert "[unused-ignore]" in report, report
