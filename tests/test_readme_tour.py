"""The README's tour is real output: its console blocks run, command by command, against a sandbox started the way
the tour says, and what each command prints matches what the README shows (times, digests and absolute paths
aside; a `...` line in the README stands for any number of lines)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def tour_commands(readme: str) -> list[tuple[str, list[str]]]:
    """(command, expected output lines) for every `$ ` line of the tour's console blocks, in order."""
    tour = readme.split("## A tour", 1)[1].split("\n## ", 1)[0]
    steps: list[tuple[str, list[str]]] = []
    for block in re.findall(r"```console\n(.*?)```", tour, re.S):
        for line in block.splitlines():
            if line.startswith("$ "):
                steps.append((line[2:], []))
            else:
                steps[-1][1].append(line)
    return steps


_NORMAL = [
    (re.compile(r"\d{8}T\d{6}(?:\.\d+)?Z"), "<time>"),
    (re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)"), "<time>"),
    (re.compile(r"\b[0-9a-f]{12,64}\b"), "<hex>"),
    (re.compile(r"(?<![\w.])/(?:[\w.@+-]+/)*[\w.@+-]+"), "<path>"),
    (re.compile(r"[ \t]+$"), ""),
]


def _plan_folders(text: str) -> list[str]:
    return list(dict.fromkeys(re.findall(r"plans/\d{8}T\d{6}Z-[0-9a-f]{12}", text)))


def normal(line: str) -> str:
    for pattern, repl in _NORMAL:
        line = pattern.sub(repl, line)
    return line


def matches(expected: list[str], actual: list[str]) -> bool:
    """Line by line after normal(); a line that is just `...` (any indent) matches zero or more lines."""
    exp = [normal(e) for e in expected]
    act = [normal(a) for a in actual]

    def walk(i: int, j: int) -> bool:
        while i < len(exp):
            if exp[i].strip() == "...":
                return any(walk(i + 1, k) for k in range(j, len(act) + 1))
            if j >= len(act) or exp[i] != act[j]:
                return False
            i, j = i + 1, j + 1
        return j == len(act)

    return walk(0, 0)


def test_matching_ignores_times_digests_and_paths_and_nothing_else():
    exp = ["plan sha256:b5fa768d70d8597b: 20 action(s)", "...", "Plan: plans/20261125T013537Z-b5fa768d70d8/p.json"]
    act = ["plan sha256:0123456789abcdef: 20 action(s)", "a", "b", "Plan: plans/20270101T000000Z-0123456789ab/p.json"]
    assert matches(exp, act)
    assert not matches(exp, [act[0].replace("20", "21"), act[3]])
    assert matches(["stop: down --dir /home/you/sandbox"], ["stop: down --dir /tmp/pytest-1/x/sandbox"])
    assert not matches(["a", "b"], ["a"]) and not matches(["a"], ["a", "b"])


def test_the_readme_tour_runs_as_shown(tmp_path):
    steps = tour_commands((ROOT / "README.md").read_text())
    assert steps[0][0].startswith('eval "$(emailsync sandbox up --dir sandbox)"'), steps[0]
    assert any(cmd.startswith("emailsync sandbox down") for cmd, _ in steps), "the tour stops its sandbox"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "TYMEPLUSHR_", "DYNAMODB_", "EMAILSYNC_"))}
    env |= {"PATH": f"{Path(sys.executable).parent}:{env['PATH']}", "PYTHONUNBUFFERED": "1", "HOME": str(tmp_path)}
    env.pop("NO_COLOR", None)
    state = tmp_path / ".tour-env"
    cwd = tmp_path
    # The README's plan folders (plans/<time>-<digest>) stand for the ones this run makes, in the order they appear.
    folders: dict[str, str] = {}
    try:
        for cmd, expected in steps:
            for shown, real in folders.items():
                cmd = cmd.replace(shown, real)
            # One shell per command, carrying the working folder and exported variables on like a terminal does.
            script = "\n".join(
                [
                    f". {state}" if state.exists() else ":",
                    f"cd {cwd}",
                    cmd,
                    "rc=$?",
                    f"export -p > {state}",
                    f"pwd > {state}.cwd",
                    "exit $rc",
                ]
            )
            r = subprocess.run(
                ["bash", "--noprofile", "--norc", "-c", script],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=300,
            )
            cwd = Path((tmp_path / ".tour-env.cwd").read_text().strip())
            actual = r.stdout.splitlines()
            new_shown = [f for f in _plan_folders("\n".join(expected)) if f not in folders]
            new_real = [f for f in _plan_folders(r.stdout) if f not in folders.values()]
            folders.update(zip(new_shown, new_real, strict=False))
            assert matches(expected, actual), (
                f"$ {cmd}\n--- README shows ---\n" + "\n".join(expected) + "\n--- it prints ---\n" + r.stdout
            )
            expect_error = any(line.startswith("error:") for line in expected)
            assert (r.returncode != 0) == expect_error, (cmd, r.returncode, r.stdout)
    finally:
        if (tmp_path / "sandbox" / "emailsync-sandbox.json").exists():
            subprocess.run(
                ["bash", "-c", "emailsync sandbox down --dir sandbox"], cwd=tmp_path, env=env, capture_output=True
            )
    assert not (tmp_path / "sandbox" / "emailsync-sandbox.json").exists()
    assert (tmp_path / "sandbox" / ".gitignore").read_text().splitlines()[-1] == "*"
