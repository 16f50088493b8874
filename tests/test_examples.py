"""The examples shipped with the project stay true to the CLI: every emailsync command and option they use exists."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_github_actions_example_uses_real_commands_and_options(ws):
    wf = yaml.safe_load((ROOT / "examples/github-actions/emailsync.yml").read_text())
    jobs = wf["jobs"]
    assert set(jobs) == {"plan", "apply"}
    assert jobs["apply"]["environment"] == "production"  # the approval gate
    scripts = "\n".join(step.get("run", "") for job in jobs.values() for step in job["steps"])
    uses = re.findall(r"emailsync (\w+)((?:[^\n\\]|\\\n)*)", scripts)
    assert {cmd for cmd, _ in uses} >= {"plan", "apply", "verify"}
    for cmd, rest in uses:
        if cmd in ("plan", "apply", "verify"):
            help_text = ws.run(cmd, "--help").out
            for option in re.findall(r"--[a-z-]+", rest):
                assert option in help_text, f"emailsync {cmd} has no option {option}"
