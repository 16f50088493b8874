"""examples/github-actions/emailsync.yml, run the way a GitHub runner runs it, against real PostgreSQL.

The workflow file is parsed as it ships and its jobs are walked step by step: actions/checkout is done as the action
does it (git init, a fetch honouring `fetch-depth` and `ref`, checkout -B) from a bare "origin" repository;
actions/upload-artifact copies the path into a folder the test reads; every `run:` step is written to a file and run
with `bash --noprofile --norc -eo pipefail FILE` in the checkout, after `${{ … }}` was substituted from the event's
contexts, with the workflow's, job's and step's `env:`, honouring `if:` and GITHUB_OUTPUT. Only actions/setup-python
and the `pip install` step are skipped: emailsync is installed in this virtualenv, whose bin/ is first on PATH.
`gh` (GitHub's CLI) is a fake that records what it was asked and hands back a canned approvals history.
"""

from __future__ import annotations

import gzip
import hashlib
import hmac
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import plan_doc, snapshot

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / "examples/github-actions/emailsync.yml"
VENV_BIN = ROOT / ".venv/bin" if (ROOT / ".venv/bin/emailsync").exists() else Path(sys.executable).parent
COMMENT_LIMIT = 65_536  # characters: GitHub refuses a longer comment
SERVER, REPO = "https://github.example", "acme/hr-emails"
BOT = "emailsync <emailsync@users.noreply.github.com>"
KEY = "k" * 24 + "-the-ci-plan-key-0123456789abcdef"
OTHER_KEY = "o" * 24 + "-someone-elses-key-fedcba9876543210"

TARGETS = """\
version: 1
mappings: email_mappings.json
postgres:
  - name: tymeplushr-core
    dsn: ${TYMEPLUSHR_CORE_DSN}
    tables:
      - table: public.employees
        columns: [email, manager_email]
        on_conflict: delete
  - name: tymeplushr-leave
    dsn: ${TYMEPLUSHR_LEAVE_DSN}
    tables:
      - table: public.leave_requests
        columns: [employee_email, approver_emails]
"""
OLD_MAPPINGS = {"former@oldco.com": "former@newco.com"}  # on main already: matches no row
MAPPINGS = {"ana@oldco.com": "ana@newco.com", "raj@oldco.com": "raj@newco.com"}  # what the pull request brings
EMPLOYEES = [
    (1, "ana@oldco.com", None, "Ana Souza", "+1 555 0101"),
    (2, "raj@oldco.com", "ana@oldco.com", "Raj Patel", "+1 555 0102"),
    (3, "ana@newco.com", None, "Ana Duplicate", "+1 555 0199"),  # holds ana's new address: ana's old row goes
    (4, "li@partner.org", "raj@oldco.com", "Li Wei", "+1 555 0104"),
]
LEAVE = [
    (10, "raj@oldco.com", ["ana@oldco.com", "li@partner.org"]),
    (11, "li@partner.org", ["raj@oldco.com"]),
]
# After the apply: ana's old row deleted (her new address was taken), every other address moved.
EMPLOYEES_AFTER = [
    (2, "raj@newco.com", "ana@newco.com", "Raj Patel", "+1 555 0102"),
    (3, "ana@newco.com", None, "Ana Duplicate", "+1 555 0199"),
    (4, "li@partner.org", "raj@newco.com", "Li Wei", "+1 555 0104"),
]
LEAVE_AFTER = [
    (10, "raj@newco.com", ["ana@newco.com", "li@partner.org"]),
    (11, "li@partner.org", ["raj@newco.com"]),
]
PERSONAL = ["Ana Souza", "Ana Duplicate", "Raj Patel", "Li Wei", "555 01"]  # whole rows: never in a comment

FAKE_GH = """\
#!{python}
# A stand-in for GitHub's CLI: records each call; `pr comment` keeps the body; `api …/approvals` answers from
# approvals.json through the real jq (as `gh api --jq` does); anything else is a mistake of the workflow.
import json, os, shutil, subprocess, sys
d = os.environ["FAKE_GH_DIR"]
args = sys.argv[1:]
n = len(os.listdir(os.path.join(d, "calls")))
json.dump({{"args": args, "cwd": os.getcwd(), "token": os.environ.get("GH_TOKEN")}},
          open(os.path.join(d, "calls", f"{{n:03}}.json"), "w"))
if not os.environ.get("GH_TOKEN"):
    sys.exit("gh: set the GH_TOKEN environment variable to use GitHub CLI in GitHub Actions")
if args[:2] == ["pr", "comment"]:
    body = open(args[args.index("--body-file") + 1], encoding="utf-8").read()
    if len(body) > {limit}:
        sys.exit("HTTP 422: Validation Failed (body is too long (maximum is {limit} characters))")
    shutil.copy(args[args.index("--body-file") + 1], os.path.join(d, f"comment-{{n:03}}.md"))
    print("{server}/{repo}/pull/" + args[2] + "#issuecomment-" + str(n))
elif args[:1] == ["api"] and args[1].endswith("/approvals"):
    path = os.path.join(d, "approvals.json")
    response = open(path).read() if os.path.exists(path) else "[]"
    if "--jq" in args:
        response = subprocess.run(["jq", "-r", args[args.index("--jq") + 1]], input=response, text=True,
                                  capture_output=True, check=True).stdout
    sys.stdout.write(response)
else:
    sys.exit("fake gh: unexpected call " + repr(args))
"""


# --- the runner ------------------------------------------------------------------------------------------------


@dataclass
class Step:
    id: str | None
    name: str
    outcome: str  # success, failure or skipped
    out: str = ""
    err: str = ""
    outputs: dict[str, str] = field(default_factory=dict)


@dataclass
class Job:
    workspace: Path
    steps: list[Step] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(s.outcome != "failure" for s in self.steps)

    def step(self, step_id: str) -> Step:
        (s,) = [s for s in self.steps if s.id == step_id]
        return s

    def log(self) -> str:
        return "\n".join(f"--- {s.name} [{s.outcome}]\n{s.out}{s.err}" for s in self.steps)


class GitHub:
    """A bare origin repository, a developer's clone of it, and a runner that runs the workflow's jobs."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.origin = tmp / "origin.git"
        self.gh_dir = tmp / "gh"
        (self.gh_dir / "calls").mkdir(parents=True)
        self.artifacts = tmp / "artifacts"
        self.artifacts.mkdir()
        home, bin_dir = tmp / "home", tmp / "bin"
        home.mkdir()
        bin_dir.mkdir()
        # Like a hosted runner: git has no identity of its own; the workflow sets one where it commits.
        (home / ".gitconfig").write_text("[init]\n\tdefaultBranch = main\n[advice]\n\tdetachedHead = false\n")
        gh = bin_dir / "gh"
        gh.write_text(FAKE_GH.format(python=sys.executable, limit=COMMENT_LIMIT, server=SERVER, repo=REPO))
        gh.chmod(0o755)
        self.env = {
            "PATH": os.pathsep.join([str(bin_dir), str(VENV_BIN), os.environ.get("PATH", "/usr/bin:/bin")]),
            "HOME": str(home),
            "LANG": "C.UTF-8",
            "TMPDIR": str(tmp),
            "GIT_CONFIG_NOSYSTEM": "1",
            "FAKE_GH_DIR": str(self.gh_dir),
        }
        self.run_ids = itertools.count(4001)
        self.git("init", "--bare", "-q", str(self.origin), cwd=tmp)
        self.dev = tmp / "dev"
        self.git("clone", "-q", self.url, str(self.dev), cwd=tmp)

    @property
    def url(self) -> str:
        return self.origin.as_uri()

    def git(self, *args: str, cwd: Path, strip: bool = True) -> str:
        r = subprocess.run(["git", *args], cwd=cwd, env=self.env, capture_output=True, text=True)
        if r.returncode != 0:
            raise AssertionError(f"git {' '.join(args)}: {r.stderr}")
        return r.stdout.strip() if strip else r.stdout

    # -- the developer's side --

    def commit(self, files: Mapping[str, str | bytes], message: str) -> str:
        for name, content in files.items():
            (self.dev / name).parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                (self.dev / name).write_bytes(content)
            else:
                (self.dev / name).write_text(content)
        self.git("add", *files, cwd=self.dev)
        self.git("-c", "user.name=Dev", "-c", "user.email=dev@example.invalid", "commit", "-qm", message, cwd=self.dev)
        return self.git("rev-parse", "HEAD", cwd=self.dev)

    def origin_sha(self, ref: str) -> str:
        return self.git("rev-parse", ref, cwd=self.origin)

    def origin_files(self, ref: str) -> list[str]:
        return self.git("ls-tree", "-r", "--name-only", ref, cwd=self.origin).splitlines()

    def origin_text(self, ref: str, path: str) -> str:
        return self.git("show", f"{ref}:{path}", cwd=self.origin, strip=False)

    def origin_bytes(self, ref: str, path: str) -> bytes:
        return subprocess.run(
            ["git", "cat-file", "blob", f"{ref}:{path}"], cwd=self.origin, env=self.env, capture_output=True, check=True
        ).stdout

    def origin_plan(self, ref: str, path: str) -> dict[str, Any]:
        """A plan file in origin, read as one document (helpers.plan_doc): header fields, actions, skipped."""
        copy = self.tmp / "origin-plan.jsonl.gz"
        copy.write_bytes(self.origin_bytes(ref, path))
        return plan_doc(copy)

    def comments(self) -> list[str]:
        return [p.read_text() for p in sorted(self.gh_dir.glob("comment-*.md"))]

    def gh_calls(self) -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in sorted((self.gh_dir / "calls").glob("*.json"))]

    # -- the runner's side --

    def run_job(
        self,
        job_name: str,
        github: dict[str, Any],
        secrets: dict[str, str],
        *,
        workflow: dict[str, Any] | None = None,
        before_step: Callable[[str | None, Path], None] | None = None,
        stop_after: str | None = None,
    ) -> Job | None:
        """Run one job of the workflow for an event; None when the job's `if:` leaves it out."""
        wf = workflow if workflow is not None else yaml.safe_load(WORKFLOW.read_text())
        job = wf["jobs"][job_name]
        unknown = set(job) - {"if", "runs-on", "steps", "env", "environment", "concurrency", "permissions", "name"}
        assert not unknown, f"job {job_name}: the test does not simulate {unknown}"
        assert job["runs-on"] == "ubuntu-latest"
        run_id = str(next(self.run_ids))
        github = {
            "server_url": SERVER,
            "repository": REPO,
            "run_id": run_id,
            "token": f"ghs_fake_token_{run_id}",
            "job": job_name,
            **github,
        }
        ctx: dict[str, Any] = {"github": github, "secrets": secrets, "steps": {}}
        if "if" in job and not _condition(job["if"], ctx, job_ok=True):
            return None
        workspace = self.tmp / f"work-{job_name}-{run_id}"
        temp = self.tmp / f"runner-temp-{run_id}"
        workspace.mkdir()
        temp.mkdir()
        result = Job(workspace)
        runner_env = {
            "CI": "true",
            "GITHUB_ACTIONS": "true",
            "RUNNER_OS": "Linux",
            "RUNNER_TEMP": str(temp),
            "GITHUB_WORKSPACE": str(workspace),
            "GITHUB_REPOSITORY": REPO,
            "GITHUB_SERVER_URL": SERVER,
            "GITHUB_RUN_ID": run_id,
            "GITHUB_JOB": job_name,
            "GITHUB_SHA": github["sha"],
            "GITHUB_REF": github["ref"],
            "GITHUB_EVENT_NAME": github["event_name"],
            "GITHUB_ACTOR": github["actor"],
            "GITHUB_HEAD_REF": github.get("head_ref", ""),
        }
        env_of = lambda block: {k: _substitute(str(v), ctx) for k, v in (block or {}).items()}  # noqa: E731
        job_env = {**env_of(wf.get("env")), **env_of(job.get("env"))}
        for n, step in enumerate(job["steps"]):
            unknown = set(step) - {"id", "name", "if", "uses", "with", "run", "env"}
            assert not unknown, f"step {n} of {job_name}: the test does not simulate {unknown}"
            sid = step.get("id")
            name = step.get("name") or step.get("uses") or step["run"].strip().splitlines()[0]
            if before_step is not None:
                before_step(sid, workspace)
            if not _condition(step.get("if", ""), ctx, job_ok=result.ok):
                result.steps.append(Step(sid, name, "skipped"))
                if sid:
                    ctx["steps"][sid] = {"outputs": {}, "outcome": "skipped", "conclusion": "skipped"}
                continue
            if "uses" in step:
                outputs, out, err, status = self._action(step, ctx, workspace), "", "", "success"
            elif step["run"].lstrip().startswith("pip install "):
                result.steps.append(Step(sid, name, "success", out="(installed in the test's virtualenv)\n"))
                continue
            else:
                script = temp / f"step-{n}.sh"
                script.write_text(_substitute(step["run"], ctx))
                output_file, env_file = temp / f"output-{n}", temp / f"env-{n}"
                output_file.touch()
                env_file.touch()
                env = {
                    **self.env,
                    **job_env,
                    **env_of(step.get("env")),
                    **runner_env,
                    "GITHUB_OUTPUT": str(output_file),
                    "GITHUB_ENV": str(env_file),
                }
                r = subprocess.run(
                    ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
                    cwd=workspace,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
                assert env_file.read_text() == "", "the test does not simulate GITHUB_ENV"
                outputs, out, err = _outputs(output_file.read_text()), r.stdout, r.stderr
                status = "success" if r.returncode == 0 else "failure"
            result.steps.append(Step(sid, name, status, out, err, outputs))
            if sid:
                ctx["steps"][sid] = {"outputs": outputs, "outcome": status, "conclusion": status}
            if stop_after is not None and sid == stop_after:
                break
        return result

    def _action(self, step: dict[str, Any], ctx: dict[str, Any], workspace: Path) -> dict[str, str]:
        uses = step["uses"]
        given = {k: _substitute(str(v), ctx) for k, v in (step.get("with") or {}).items()}
        if uses == "actions/checkout@v4":
            self._checkout(workspace, given, ctx["github"])
            return {}
        if uses.startswith("actions/setup-python@"):
            return {}  # the test's own interpreter stands in
        if uses == "actions/upload-artifact@v4":
            assert set(given) <= {"name", "path", "retention-days", "if-no-files-found"}, given
            source = workspace / given["path"]
            assert "\n" not in given["path"] and "*" not in given["path"] and source.is_dir(), given["path"]
            target = self.artifacts / given["name"]
            assert not target.exists(), f"artifact {given['name']} exists already: upload-artifact@v4 refuses"
            shutil.copytree(source, target)  # a folder's files land at the root of the artifact
            return {"artifact-id": "1", "artifact-url": f"{SERVER}/{REPO}/actions/runs/{ctx['github']['run_id']}"}
        raise AssertionError(f"the test does not simulate {uses}")

    def _checkout(self, workspace: Path, given: dict[str, str], github: dict[str, Any]) -> None:
        """What actions/checkout@v4 runs: init, fetch (depth 1 unless fetch-depth says), checkout -B."""
        assert set(given) <= {"ref", "fetch-depth"}, given
        depth = int(given.get("fetch-depth") or 1)
        git = lambda *a: self.git(*a, cwd=workspace)  # noqa: E731
        git("init", "-q", ".")
        git("remote", "add", "origin", self.url)
        if given.get("ref"):  # a ref named by the workflow: no commit pinned; a bare name is a branch or a tag
            ref = given["ref"]
            assert not ref.startswith("refs/") and not re.fullmatch(r"[0-9a-f]{40}", ref), ref
            branch = ref
            refspec = [f"+refs/heads/{ref}*:refs/remotes/origin/{ref}*", f"+refs/tags/{ref}*:refs/tags/{ref}*"]
        else:  # the event's ref and sha
            assert github["ref"].startswith("refs/heads/"), github["ref"]
            branch = github["ref"].removeprefix("refs/heads/")
            refspec = [f"+{github['sha']}:refs/remotes/origin/{branch}"]
        if depth <= 0:
            git("fetch", "-q", "--prune", "--no-recurse-submodules", "origin",
                "+refs/heads/*:refs/remotes/origin/*", "+refs/tags/*:refs/tags/*")  # fmt: skip
            if not given.get("ref") and git("rev-parse", f"refs/remotes/origin/{branch}") != github["sha"]:
                git("fetch", "-q", "--prune", "--no-recurse-submodules", "origin", *refspec)  # the branch moved on
        else:
            git("fetch", "-q", "--no-tags", "--prune", "--no-recurse-submodules", f"--depth={depth}", "origin",
                *refspec)  # fmt: skip
        git("checkout", "-q", "--force", "-B", branch, f"refs/remotes/origin/{branch}")
        if not given.get("ref"):
            assert git("rev-parse", "HEAD") == github["sha"]


def _lookup(expr: str, ctx: dict[str, Any]) -> Any:
    path = expr.strip()
    assert re.fullmatch(r"[A-Za-z_][\w-]*(\.[A-Za-z_][\w-]*)+", path), f"cannot evaluate ${{{{ {expr} }}}}"
    head, *rest = path.split(".")
    if head == "secrets":
        assert len(rest) == 1, path
        return ctx["secrets"].get(rest[0], "")  # an unset secret is the empty string
    if head == "steps":
        assert len(rest) == 3 and rest[1] in ("outputs", "outcome", "conclusion"), path
        step = ctx["steps"].get(rest[0], {"outputs": {}})
        return step["outputs"].get(rest[2], "") if rest[1] == "outputs" else step.get(rest[1], "")
    assert head == "github", f"the test does not simulate ${{{{ {path} }}}}"
    value: Any = ctx["github"]
    for part in rest:
        assert isinstance(value, dict) and part in value, f"the test's github context has no {path}"
        value = value[part]
    return value


def _text(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _substitute(text: str, ctx: dict[str, Any]) -> str:
    return re.sub(r"\$\{\{(.*?)\}\}", lambda m: _text(_lookup(m.group(1), ctx)), text)


def _condition(expr: Any, ctx: dict[str, Any], *, job_ok: bool) -> bool:
    """The forms of `if:` the workflow uses; anything else fails the test rather than being guessed."""
    text = str(expr).strip()
    if text.startswith("${{") and text.endswith("}}"):
        text = text[3:-2].strip()
    if not text:
        return job_ok  # no `if:` is `success()`
    status = {"always()": True, "success()": job_ok, "failure()": not job_ok, "!cancelled()": True}
    terms = [t.strip() for t in text.split("&&")]
    result = job_ok if not any(t in status for t in terms) else True  # without a status function, success() &&
    for t in terms:
        if t in status:
            result = result and status[t]
            continue
        m = re.fullmatch(r"([\w.-]+)\s*(==|!=)\s*'([^']*)'", t)
        assert m, f"the test cannot evaluate `if: {expr}`"
        equal = _text(_lookup(m[1], ctx)).lower() == m[3].lower()  # GitHub compares strings ignoring case
        result = result and (equal if m[2] == "==" else not equal)
    return result


def _outputs(text: str) -> dict[str, str]:
    """GITHUB_OUTPUT: `name=value` lines, and `name<<DELIMITER` blocks."""
    out: dict[str, str] = {}
    lines = iter(text.splitlines())
    for line in lines:
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, delim = line.split("<<", 1)
            out[name] = "\n".join(itertools.takewhile(lambda ln, d=delim: ln != d, lines))
        elif line:
            name, value = line.split("=", 1)
            out[name] = value
    return out


# --- the estate and the story -----------------------------------------------------------------------------------


@pytest.fixture
def estate(make_db: Any) -> tuple[Any, Any]:
    core, leave = make_db(), make_db()
    core.execute(
        "CREATE TABLE employees (id int PRIMARY KEY, email text UNIQUE NOT NULL, manager_email text, name text, "
        "phone text)"
    )
    for row in EMPLOYEES:
        core.execute("INSERT INTO employees VALUES (%s, %s, %s, %s, %s)", row)
    leave.execute("CREATE TABLE leave_requests (id int PRIMARY KEY, employee_email text, approver_emails text[])")
    for row in LEAVE:
        leave.execute("INSERT INTO leave_requests VALUES (%s, %s, %s)", row)
    return core, leave


@pytest.fixture
def gh(tmp_path: Path) -> GitHub:
    return GitHub(tmp_path)


def _secrets(core: Any, leave: Any, **more: str) -> dict[str, str]:
    return {"TYMEPLUSHR_CORE_DSN": core.dsn, "TYMEPLUSHR_LEAVE_DSN": leave.dsn, **more}


def _tables(core: Any, leave: Any) -> tuple[list[Any], list[Any]]:
    return (
        core.rows("SELECT id, email, manager_email, name, phone FROM employees ORDER BY id"),
        leave.rows("SELECT id, employee_email, approver_emails FROM leave_requests ORDER BY id"),
    )


def open_pull_request(gh: GitHub, mappings: dict[str, str] | str = MAPPINGS) -> None:
    """main holds targets.yaml and the mappings; the branch `rebrand` changes the mappings (pull request #7)."""
    gh.commit(
        {"targets.yaml": TARGETS, "email_mappings.json": json.dumps(OLD_MAPPINGS), "README.md": "HR emails\n"},
        "the estate",
    )
    gh.git("push", "-q", "origin", "main", cwd=gh.dev)
    gh.git("checkout", "-q", "-b", "rebrand", cwd=gh.dev)
    text = mappings if isinstance(mappings, str) else json.dumps(mappings, indent=2)
    gh.commit({"email_mappings.json": text}, "rebrand: oldco to newco")
    gh.git("push", "-q", "origin", "rebrand", cwd=gh.dev)


def pull_request_event(actor: str = "dev") -> dict[str, Any]:
    return {
        "event_name": "pull_request",
        "ref": "refs/pull/7/merge",
        "sha": "f" * 40,  # the merge commit GitHub makes; the plan job checks out the branch instead
        "head_ref": "rebrand",
        "base_ref": "main",
        "actor": actor,
        "event": {"pull_request": {"number": 7}, "number": 7},
    }


def merge_pull_request(gh: GitHub) -> dict[str, Any]:
    """Merge `rebrand` into main with a merge commit, then one more commit, pushed together: HEAD^ is not the old
    main. Returns the push event."""
    gh.git("fetch", "-q", "origin", cwd=gh.dev)
    gh.git("checkout", "-q", "main", cwd=gh.dev)
    before = gh.git("rev-parse", "HEAD", cwd=gh.dev)
    gh.git("-c", "user.name=Dev", "-c", "user.email=dev@example.invalid", "merge", "-q", "--no-ff",
           "-m", "Merge pull request #7 from acme/rebrand", "origin/rebrand", cwd=gh.dev)  # fmt: skip
    after = gh.commit({"README.md": "HR emails: oldco is newco now\n"}, "README: the rebrand")
    gh.git("push", "-q", "origin", "main", cwd=gh.dev)
    assert gh.origin_sha("main") == after and gh.git("rev-parse", "HEAD^", cwd=gh.dev) != before
    return push_event(before, after)


def push_event(before: str, after: str, actor: str = "merger") -> dict[str, Any]:
    return {
        "event_name": "push",
        "ref": "refs/heads/main",
        "sha": after,
        "actor": actor,
        "event": {"before": before, "after": after},
    }


def _addresses(*texts: Any) -> set[str]:
    return set(re.findall(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+", json.dumps(texts, default=str)))


def _mentions(text: str, address: str) -> bool:
    return re.search(rf"(?<![\w.+-]){re.escape(address)}(?![\w-])", text) is not None


def _plan_folder(gh: GitHub, ref: str) -> str:
    (plan,) = [p for p in gh.origin_files(ref) if re.fullmatch(r"plans/[^/]+/plan\.jsonl\.gz", p)]
    return plan.removesuffix("/plan.jsonl.gz")


def run_plan_job(gh: GitHub, secrets: dict[str, str], **kw: Any) -> tuple[Job, str]:
    assert gh.run_job("apply", pull_request_event(), secrets) is None  # a pull request runs only the plan job
    job = gh.run_job("plan", pull_request_event(), secrets, **kw)
    assert job is not None and job.ok, job.log() if job else None
    return job, _plan_folder(gh, "rebrand")


def run_apply_job(gh: GitHub, event: dict[str, Any], secrets: dict[str, str], **kw: Any) -> Job:
    assert gh.run_job("plan", event, secrets) is None  # a push runs only the apply job
    job = gh.run_job("apply", event, secrets, **kw)
    assert job is not None
    return job


# --- the tests --------------------------------------------------------------------------------------------------


def test_pull_request_gets_a_redacted_plan_and_merging_applies_it(gh: GitHub, estate: Any) -> None:
    core, leave = estate
    secrets = _secrets(core, leave)
    open_pull_request(gh)
    before_dbs = [snapshot(core), snapshot(leave)]
    (gh.gh_dir / "approvals.json").write_text(
        json.dumps(
            [
                {"state": "rejected", "user": {"login": "mallory"}, "environments": [{"name": "production"}]},
                {"state": "approved", "user": {"login": "dana-lee"}, "environments": [{"name": "production"}]},
            ]
        )
    )

    job, folder = run_plan_job(gh, secrets)

    # The plan folder was committed by the workflow's identity and pushed to the pull request branch.
    assert gh.git("log", "-1", "--format=%an <%ae>%n%s", "rebrand", cwd=gh.origin) == f"{BOT}\nemailsync plan {folder}"
    assert {f"{folder}/plan.jsonl.gz", f"{folder}/plan.md"} <= set(gh.origin_files("rebrand"))
    plan = gh.origin_plan("rebrand", f"{folder}/plan.jsonl.gz")
    assert plan["inputs"]["mappings_sha256"] == hashlib.sha256(json.dumps(MAPPINGS, indent=2).encode()).hexdigest()
    assert "signature" not in plan or plan["signature"] is None  # no EMAILSYNC_PLAN_KEY secret: not signed
    kinds = sorted(a["kind"] for a in plan["actions"])
    assert "delete-on-conflict" in kinds and "array-replace" in kinds

    # The comment: the redacted plan.md, every address a hash, no row's personal data, the digest named.
    (call,) = [c for c in gh.gh_calls() if c["args"][:2] == ["pr", "comment"]]
    assert call["args"][2] == "7" and call["token"].startswith("ghs_fake_token_")
    (comment,) = gh.comments()
    assert comment == gh.origin_text("rebrand", f"{folder}/plan.md")
    assert plan["digest"] in comment and "redacted" in comment and "h-" in comment
    real = _addresses(MAPPINGS, EMPLOYEES, LEAVE, EMPLOYEES_AFTER, LEAVE_AFTER)
    assert len(real) >= 5
    assert not [a for a in real if _mentions(comment, a)], comment
    assert not [p for p in PERSONAL if p in comment], comment
    assert "delete-on-conflict" in comment and "Ana Duplicate" not in comment
    assert [snapshot(core), snapshot(leave)] == before_dbs  # planning wrote nothing

    # Merge, with a further commit in the same push, and the apply job runs on a fresh full checkout.
    event = merge_pull_request(gh)
    job = run_apply_job(gh, event, secrets)
    assert job.ok, job.log()
    assert job.step("find").outputs == {"plan": f"{folder}/plan.jsonl.gz", "folder": folder}
    assert _tables(core, leave) == (EMPLOYEES_AFTER, LEAVE_AFTER)

    # verify ran after apply and found every action applied: its count is in the step's log.
    applied, n = job.step("apply").out, len(plan["actions"])
    assert plan["digest"] in applied and re.search(rf"\b{n} after \(applied\), 0 before", applied), applied

    # report.json and the journal were committed back to main, after the pushed commits.
    last = gh.git("log", "-1", "--format=%an <%ae>%n%s", "main", cwd=gh.origin)
    assert last == f"{BOT}\nemailsync apply report {folder}"
    assert gh.origin_sha("main^") == event["sha"]
    files = gh.origin_files("main")
    (journal,) = [f for f in files if re.fullmatch(rf"{re.escape(folder)}/apply-[^/]+\.jsonl", f)]
    report = json.loads(gh.origin_text("main", f"{folder}/report.json"))
    assert report["plan_digest"] == plan["digest"]
    assert {a["status"] for a in report["actions"]} == {"applied"} and len(report["actions"]) == n
    assert report["applied_by"]["approver"] == "dana-lee"  # the environment's approver, not the person who merged
    events = [json.loads(line) for line in gh.origin_text("main", journal).splitlines()]
    assert events[-1]["event"] == "run-end" and events[-1]["exit_code"] == 0


def test_comment_too_long_for_github_becomes_a_summary_with_the_artifact_link(gh: GitHub, estate: Any) -> None:
    core, leave = estate
    open_pull_request(gh)
    before_dbs = [snapshot(core), snapshot(leave)]
    padded: list[int] = []

    def pad(step_id: str | None, workspace: Path) -> None:
        # Between the plan step and the comment step: plan.md grows past what a comment can hold.
        if step_id == "comment":
            (md,) = workspace.glob("plans/*/plan.md")
            row = "| 9 | `id=9` | email | update | `h-0123456789ab@oldco.com` → `h-ba9876543210@newco.com` |\n"
            md.write_text(md.read_text() + row * (COMMENT_LIMIT // len(row) + 10))
            padded.append(len(md.read_text()))

    job, folder = run_plan_job(gh, _secrets(core, leave), before_step=pad)
    assert padded and padded[0] > COMMENT_LIMIT

    (comment,) = gh.comments()
    assert len(comment) < COMMENT_LIMIT and len(comment) < 5_000
    run_url = f"{SERVER}/{REPO}/actions/runs/"
    (run_id,) = re.findall(rf"\({re.escape(run_url)}(\d+)\)", comment)
    assert f"The plan folder is the `emailsync-plan-{folder.removeprefix('plans/')}` artifact" in comment
    plan = gh.origin_plan("rebrand", f"{folder}/plan.jsonl.gz")
    assert plan["digest"] in comment and f"{padded[0]:,} characters" in comment
    assert "| tymeplushr-core | public.employees | email | delete-on-conflict | 1 |" in comment
    assert f"- {len(plan['actions'])} action(s), {len(plan['skipped'])} skipped" in comment
    assert not [a for a in _addresses(MAPPINGS, EMPLOYEES, LEAVE) if _mentions(comment, a)], comment

    # The artifact holds the plan folder as the plan job made it (the same plan.jsonl.gz as committed).
    (artifact,) = gh.artifacts.iterdir()
    assert artifact.name == f"emailsync-plan-{folder.removeprefix('plans/')}"
    assert sorted(p.name for p in artifact.iterdir()) == ["plan.jsonl.gz", "plan.md"]
    assert (artifact / "plan.jsonl.gz").read_bytes() == gh.origin_bytes("rebrand", f"{folder}/plan.jsonl.gz")
    assert (artifact / "plan.md").read_text() == gh.origin_text("rebrand", f"{folder}/plan.md")
    assert run_id == str(int(run_id))  # the link is to this run
    assert [snapshot(core), snapshot(leave)] == before_dbs


@pytest.mark.parametrize("md_size", ["plan.md fits a comment", "plan.md too long for a comment"])
def test_a_plan_folder_too_large_to_commit_is_only_the_runs_artifact(gh: GitHub, estate: Any, md_size: str) -> None:
    """GitHub refuses files over 100 MiB: a plan folder holding a file larger than EMAILSYNC_MAX_COMMIT_MB is not
    committed, only uploaded as the run's artifact, and the comment and a warning say so. Merging the pull request
    then applies nothing; the artifact's plan applies by hand. The limit is lowered here from the shipped 95 MiB."""
    core, leave = estate
    secrets = _secrets(core, leave)
    wf = yaml.safe_load(WORKFLOW.read_text())
    assert wf["jobs"]["plan"]["env"] == {"EMAILSYNC_MAX_COMMIT_MB": "95"}  # as shipped
    limit = 0.0005  # MiB: 524 bytes, less than this plan's files
    wf["jobs"]["plan"]["env"]["EMAILSYNC_MAX_COMMIT_MB"] = str(limit)
    open_pull_request(gh)
    head = gh.origin_sha("rebrand")
    before_dbs = [snapshot(core), snapshot(leave)]
    padded: list[int] = []

    def pad(step_id: str | None, workspace: Path) -> None:
        if step_id == "comment" and md_size.endswith("too long for a comment"):
            (md,) = workspace.glob("plans/*/plan.md")
            row = "| 9 | `id=9` | email | update | `h-0123456789ab@oldco.com` → `h-ba9876543210@newco.com` |\n"
            md.write_text(md.read_text() + row * (COMMENT_LIMIT // len(row) + 10))
            padded.append(len(md.read_text()))

    assert gh.run_job("apply", pull_request_event(), secrets, workflow=wf) is None
    job = gh.run_job("plan", pull_request_event(), secrets, workflow=wf, before_step=pad)
    assert job is not None and job.ok, job.log() if job else None

    # Nothing was committed or pushed: the branch is as the developer pushed it.
    assert job.step("commit").outcome == "skipped"
    assert gh.origin_sha("rebrand") == head
    assert not [f for f in gh.origin_files("rebrand") if f.startswith("plans/")]

    # The artifact holds the whole plan folder, a valid plan.
    (artifact,) = gh.artifacts.iterdir()
    folder = "plans/" + artifact.name.removeprefix("emailsync-plan-")
    assert job.step("plan").outputs["folder"] == folder and job.step("plan").outputs["commit"] == "false"
    sizes = {f.name: f.stat().st_size for f in sorted(artifact.iterdir())}
    assert list(sizes) == ["plan.jsonl.gz", "plan.md"] and sizes["plan.jsonl.gz"] > limit * 2**20
    too_big = ", ".join(f"{name} ({n:,} bytes)" for name, n in sizes.items() if n > limit * 2**20)
    assert job.step("plan").outputs["too_big"] == too_big
    plan = plan_doc(artifact / "plan.jsonl.gz")
    assert "delete-on-conflict" in {a["kind"] for a in plan["actions"]}
    warnings = [line for line in job.step("plan").out.splitlines() if line.startswith("::warning::")]
    assert warnings == [
        f"::warning::{folder} is not committed: {too_big} is larger than EMAILSYNC_MAX_COMMIT_MB (0.0005 MiB; GitHub "
        f"refuses files over 100 MiB). The plan folder is this run's artifact {artifact.name}; merging the pull "
        "request does not apply it."
    ]

    # The comment says so first, links the run, and is redacted like any.
    (comment,) = gh.comments()
    (run_id,) = re.findall(rf"\({re.escape(SERVER)}/{re.escape(REPO)}/actions/runs/(\d+)\)", comment)
    note = (
        f"> **This plan is not committed to this branch**: {too_big} is larger than this workflow commits (0.0005 MiB; "
        f"GitHub refuses files over 100 MiB). The plan folder `{folder}/` is only the `{artifact.name}` artifact of "
        f"[this workflow run]({SERVER}/{REPO}/actions/runs/{run_id}), kept for 14 days. Merging this pull request "
        "does not apply it"
    )
    if md_size == "plan.md fits a comment":
        assert not padded and comment.startswith(note), comment[:1000]
        first, _, rest = comment.partition("\n\n")
        assert "\n" not in first and first.endswith("and commit the folder without the plan.")
        assert rest == (artifact / "plan.md").read_text()  # the note, then plan.md as the plan job made it
        assert plan["digest"] in comment and "redacted" in comment
    else:
        assert padded and padded[0] > COMMENT_LIMIT and len(comment) < 5_000
        assert comment.startswith("# emailsync plan\n\n" + note), comment[:1000]
        assert f"The redacted plan.md is {padded[0]:,} characters, more than a pull-request comment holds " in comment
        assert "so only its summary is here. The whole plan.md is in the artifact named above." in comment
        assert f"- digest: `{plan['digest']}`\n" in comment and "is committed to this branch" not in comment
        assert "| tymeplushr-core | public.employees | email | delete-on-conflict | 1 |" in comment
    real = _addresses(MAPPINGS, EMPLOYEES, LEAVE, EMPLOYEES_AFTER, LEAVE_AFTER)
    assert not [a for a in real if _mentions(comment, a)], comment
    assert not [p for p in PERSONAL if p in comment], comment
    assert [snapshot(core), snapshot(leave)] == before_dbs

    # Merging applies nothing: the push adds no plan.
    job = run_apply_job(gh, merge_pull_request(gh), secrets)
    assert job.ok, job.log()
    assert "This push adds no plan (plans/*/plan.jsonl.gz): nothing to apply." in job.step("find").out
    assert job.step("apply").outcome == "skipped"
    assert [snapshot(core), snapshot(leave)] == before_dbs

    # Applied by hand, as the comment says, the artifact's plan makes the reviewed changes.
    gh.git("pull", "-q", "origin", "main", cwd=gh.dev)
    shutil.copytree(artifact, gh.dev / folder)
    env = {**gh.env, "TYMEPLUSHR_CORE_DSN": core.dsn, "TYMEPLUSHR_LEAVE_DSN": leave.dsn}
    apply = ["apply", f"{folder}/plan.jsonl.gz", "--targets", "targets.yaml", "--auto-approve", "--replan-check"]
    r = subprocess.run([str(VENV_BIN / "emailsync"), *apply], cwd=gh.dev, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert _tables(core, leave) == (EMPLOYEES_AFTER, LEAVE_AFTER)


@pytest.mark.parametrize("planned_with", ["the same key", "no key", "another key"])
def test_signed_plans_with_the_plan_key_secret(gh: GitHub, estate: Any, planned_with: str) -> None:
    core, leave = estate
    open_pull_request(gh)
    plan_key = {"the same key": KEY, "no key": None, "another key": OTHER_KEY}[planned_with]
    plan_secrets = _secrets(core, leave, **({"EMAILSYNC_PLAN_KEY": plan_key} if plan_key else {}))
    _, folder = run_plan_job(gh, plan_secrets)
    plan = gh.origin_plan("rebrand", f"{folder}/plan.jsonl.gz")
    (comment,) = gh.comments()
    if plan_key:
        mac = hmac.new(plan_key.encode(), plan["digest"].encode(), hashlib.sha256).hexdigest()
        assert plan["signature"] == f"hmac-sha256:{mac}"
        assert f"`{plan['digest']}` (signed)" in comment
    else:
        assert plan.get("signature") is None and "(signed)" not in comment
    assert KEY not in comment and OTHER_KEY not in comment

    event = merge_pull_request(gh)
    before_dbs = [snapshot(core), snapshot(leave)]
    job = run_apply_job(gh, event, _secrets(core, leave, EMAILSYNC_PLAN_KEY=KEY))
    if planned_with == "the same key":
        assert job.ok, job.log()
        assert _tables(core, leave) == (EMPLOYEES_AFTER, LEAVE_AFTER)
        assert f"{folder}/report.json" in gh.origin_files("main")
        assert json.loads(gh.origin_text("main", f"{folder}/report.json"))["applied_by"]["approver"] == "merger"
        return
    # Refused before anything was written: the stores, and main in origin, are as they were.
    assert not job.ok and job.step("apply").outcome == "failure"
    words = "the plan is not signed" if planned_with == "no key" else "does not match EMAILSYNC_PLAN_KEY"
    assert words in job.step("apply").err and "nothing was written" in job.step("apply").err
    assert KEY not in job.log()
    assert [snapshot(core), snapshot(leave)] == before_dbs
    assert gh.origin_sha("main") == event["sha"]  # no report or journal: nothing to commit
    assert [f for f in gh.origin_files("main") if f.startswith(folder)] == [
        f"{folder}/plan.jsonl.gz",
        f"{folder}/plan.md",
    ]


def _merge(gh: GitHub, branch: str, number: int) -> dict[str, Any]:
    """Merge `branch` into main (the developer's clone, brought up to origin's main first) with a merge commit,
    push, and return the push event."""
    gh.git("checkout", "-q", "main", cwd=gh.dev)
    gh.git("fetch", "-q", "origin", cwd=gh.dev)
    gh.git("merge", "-q", "--ff-only", "origin/main", cwd=gh.dev)
    before = gh.git("rev-parse", "HEAD", cwd=gh.dev)
    gh.git("-c", "user.name=Dev", "-c", "user.email=dev@example.invalid", "merge", "-q", "--no-ff",
           "-m", f"Merge pull request #{number} from acme/{branch}", branch, cwd=gh.dev)  # fmt: skip
    gh.git("push", "-q", "origin", "main", cwd=gh.dev)
    return push_event(before, gh.git("rev-parse", "HEAD", cwd=gh.dev))


def _public_tables(db: Any) -> dict[str, Any]:
    """Every row of every table but emailsync's own (its ledger records each apply)."""
    return {k: v for k, v in snapshot(db).items() if k != "schemas" and not k.startswith("emailsync.")}


def _roll_back(gh: GitHub, folder: str, key: str | None) -> tuple[str, list[str], dict[str, Any]]:
    """A person's rollback of an applied plan: made locally with `emailsync rollback` in a checkout of main (it reads
    the archive: no DSN needed), on a branch of its own, merged (pull request #8). Returns the rollback plan's path,
    the files the branch adds or changes, and the push event."""
    gh.git("fetch", "-q", "origin", cwd=gh.dev)
    gh.git("checkout", "-q", "-b", "rollback", "origin/main", cwd=gh.dev)
    env = {**gh.env, **({"EMAILSYNC_PLAN_KEY": key} if key else {})}
    r = subprocess.run([str(VENV_BIN / "emailsync"), "rollback", folder], cwd=gh.dev, env=env,
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    gh.git("add", "plans", cwd=gh.dev)
    added = gh.git("diff", "--cached", "--name-only", cwd=gh.dev).splitlines()
    (rb_plan,) = [f for f in added if f.endswith("/plan.jsonl.gz")]
    gh.git("-c", "user.name=Dev", "-c", "user.email=dev@example.invalid", "commit", "-qm",
           f"roll back {folder}", cwd=gh.dev)  # fmt: skip
    gh.git("push", "-q", "origin", "rollback", cwd=gh.dev)
    return rb_plan, added, _merge(gh, "rollback", 8)


@pytest.mark.parametrize("plan_key", ["no plan key", "the plan key", "the plan key, rollback made without it"])
def test_a_merged_rollback_plan_is_applied_without_replan_check(gh: GitHub, estate: Any, plan_key: str) -> None:
    """`apply --replan-check` refuses a rollback plan (nothing to re-plan): the apply job leaves the flag out for one,
    and the rollback a person makes with `emailsync rollback` and merges puts every row back."""
    core, leave = estate
    keyed = plan_key != "no plan key"
    secrets = _secrets(core, leave, **({"EMAILSYNC_PLAN_KEY": KEY} if keyed else {}))
    originally = [_public_tables(core), _public_tables(leave)]
    open_pull_request(gh)
    _, folder = run_plan_job(gh, secrets)
    job = run_apply_job(gh, merge_pull_request(gh), secrets)
    assert job.ok, job.log()
    assert _tables(core, leave) == (EMPLOYEES_AFTER, LEAVE_AFTER)

    rb_plan, added, event = _roll_back(gh, folder, KEY if plan_key == "the plan key" else None)
    rb_folder = rb_plan.removesuffix("/plan.jsonl.gz")
    assert f"{folder}/rollbacks.json" in added and f"{rb_folder}/plan.md" in added
    rollback = plan_doc(gh.dev / rb_plan)
    assert rollback["rollback_of"]["plan_folder"].endswith(folder.removeprefix("plans/"))
    assert bool(rollback.get("signature")) is (plan_key == "the plan key")

    job = run_apply_job(gh, event, secrets)
    assert job.step("find").outputs == {"plan": rb_plan, "folder": rb_folder}
    assert "::warning::" not in job.step("find").out  # the original plan has its report: nothing left unapplied
    if plan_key == "the plan key, rollback made without it":
        # Unsigned, with the key in use: refused before anything was written, like any unsigned plan.
        assert not job.ok and "the plan is not signed" in job.step("apply").err
        assert _tables(core, leave) == (EMPLOYEES_AFTER, LEAVE_AFTER)
        assert gh.origin_sha("main") == event["sha"]
        return
    assert job.ok, job.log()
    assert "--replan-check" not in job.log()
    assert [_public_tables(core), _public_tables(leave)] == originally  # every row back, whole
    assert _tables(core, leave) == (EMPLOYEES, LEAVE)
    n = len(rollback["actions"])
    assert n > 0 and re.search(rf"\b{n} after \(applied\), 0 before", job.step("apply").out), job.step("apply").out

    # The rollback's journal and report were committed to main, like any plan's.
    assert gh.git("log", "-1", "--format=%an <%ae>%n%s", "main", cwd=gh.origin) == (
        f"{BOT}\nemailsync apply report {rb_folder}"
    )
    assert gh.origin_sha("main^") == event["sha"]
    files = gh.origin_files("main")
    assert [f for f in files if re.fullmatch(rf"{re.escape(rb_folder)}/apply-[^/]+\.jsonl", f)]
    report = json.loads(gh.origin_text("main", f"{rb_folder}/report.json"))
    assert report["plan_digest"] == rollback["digest"]
    assert {a["status"] for a in report["actions"]} == {"applied"} and len(report["actions"]) == n


def test_a_large_rollback_plan_is_recognised_from_its_first_line(gh: GitHub, estate: Any) -> None:
    """The apply job reads only line 1, the header, of the gzip'd plan to tell a rollback plan (head closes the pipe
    while gzip still writes): a rollback of thousands of actions is recognised all the same, applied without
    --replan-check, and puts every row back."""
    core, leave = estate
    leave.execute(
        "INSERT INTO leave_requests SELECT g, 'raj@oldco.com', ARRAY['ana@oldco.com', 'li@partner.org'] "
        "FROM generate_series(100, 2099) g"
    )
    secrets = _secrets(core, leave)
    originally = [_public_tables(core), _public_tables(leave)]
    open_pull_request(gh)
    _, folder = run_plan_job(gh, secrets)
    job = run_apply_job(gh, merge_pull_request(gh), secrets)
    assert job.ok, job.log()
    assert leave.rows("SELECT count(*) FROM leave_requests WHERE employee_email = 'raj@newco.com'") == [(2001,)]

    rb_plan, _, event = _roll_back(gh, folder, None)
    rollback = plan_doc(gh.dev / rb_plan)
    assert rollback["rollback_of"] and len(rollback["actions"]) > 4000
    assert len(gzip.decompress((gh.dev / rb_plan).read_bytes())) > 1 << 20  # far more than a pipe holds
    job = run_apply_job(gh, event, secrets)
    assert job.ok, job.log()
    assert "--replan-check" not in job.log()
    assert [_public_tables(core), _public_tables(leave)] == originally
    n = len(rollback["actions"])
    assert re.search(rf"\b{n} after \(applied\), 0 before", job.step("apply").out), job.step("apply").out


def test_an_ordinary_plan_is_still_replan_checked(gh: GitHub, estate: Any) -> None:
    """Leaving --replan-check out for rollbacks leaves it in for every other plan: a row changed after the review
    makes the apply refuse, before writing anything."""
    core, leave = estate
    secrets = _secrets(core, leave)
    open_pull_request(gh)
    _, folder = run_plan_job(gh, secrets)
    event = merge_pull_request(gh)
    core.execute("INSERT INTO employees VALUES (5, 'bo@partner.org', 'raj@oldco.com', 'Bo Lind', '+1 555 0105')")
    before_dbs = [snapshot(core), snapshot(leave)]

    job = run_apply_job(gh, event, secrets)
    assert not job.ok and job.step("apply").outcome == "failure"
    err = job.step("apply").err
    assert "--replan-check: the stores no longer match the reviewed plan" in err and "is new since the review" in err
    assert [snapshot(core), snapshot(leave)] == before_dbs
    assert gh.origin_sha("main") == event["sha"]  # refused: no journal or report to commit
    assert [f for f in gh.origin_files("main") if f.startswith(folder)] == [
        f"{folder}/plan.jsonl.gz",
        f"{folder}/plan.md",
    ]


# --- finding the plan of a push: no database needed -----------------------------------------------------------


def _fake_plan(header: dict[str, Any], body_lines: int = 0) -> bytes:
    """A stand-in for a plan file where only the find step reads it (apply never does): gzip'd JSON Lines, the header
    on line 1, and `body_lines` lines after it."""
    body = "".join(f'{{"id":"a{i:07}","kind":"update"}}\n' for i in range(body_lines))
    return gzip.compress((json.dumps(header) + "\n" + body).encode(), mtime=0)


FAKE_PLAN = _fake_plan({})


def _push_with_plans(gh: GitHub, plans: list[str]) -> dict[str, Any]:
    gh.commit({"targets.yaml": TARGETS, "email_mappings.json": json.dumps(OLD_MAPPINGS)}, "the estate")
    gh.git("push", "-q", "origin", "main", cwd=gh.dev)
    before = gh.origin_sha("main")
    for p in plans:
        gh.commit({f"plans/{p}/plan.jsonl.gz": FAKE_PLAN}, f"plan {p}")
    after = gh.commit({"README.md": "later\n"}, "an unrelated commit in the same push")
    gh.git("push", "-q", "origin", "main", cwd=gh.dev)
    return push_event(before, after)


def _without_fetch_depth(depth: str | None) -> dict[str, Any]:
    """The workflow with the apply job's checkout given `fetch-depth: depth`, or none (the old text: depth 1)."""
    wf = yaml.safe_load(WORKFLOW.read_text())
    (checkout,) = [s for s in wf["jobs"]["apply"]["steps"] if s.get("uses", "").startswith("actions/checkout@")]
    assert str(checkout["with"]["fetch-depth"]) == "0"  # as shipped: the whole history
    if depth is None:
        del checkout["with"]["fetch-depth"]
    else:
        checkout["with"]["fetch-depth"] = depth
    return wf


@pytest.mark.parametrize("fetch_depth", [None, "1", "2"], ids=["fetch-depth absent (the old text)", "1", "2"])
def test_a_shallow_checkout_cannot_find_the_plan(gh: GitHub, fetch_depth: str | None) -> None:
    """The old workflow's bug: a depth-1 (or any shallow) checkout does not hold github.event.before."""
    event = _push_with_plans(gh, ["20260101T000000Z-aaaaaaaaaaaa", "20260102T000000Z-bbbbbbbbbbbb"])
    wf = _without_fetch_depth(fetch_depth)
    job = run_apply_job(gh, event, {}, workflow=wf)
    assert not job.ok and job.step("find").outcome == "failure"
    assert "is not in the history" in job.step("find").out
    assert [s.outcome for s in job.steps[-2:]] == ["skipped", "skipped"]  # no apply, nothing committed
    # The old text's own command fails the same way in that checkout.
    old = subprocess.run(
        ["git", "diff", "--name-only", event["event"]["before"], event["sha"], "--", "plans/*/plan.jsonl.gz"],
        cwd=job.workspace, env=gh.env, capture_output=True, text=True,
    )  # fmt: skip
    assert old.returncode != 0 and re.search(r"bad object|bad revision|[Ii]nvalid", old.stderr), old.stderr
    assert gh.origin_sha("main") == event["sha"]


def test_the_shipped_checkout_finds_the_newest_plan_of_a_push_of_several_commits(gh: GitHub) -> None:
    event = _push_with_plans(gh, ["20260101T000000Z-aaaaaaaaaaaa", "20260102T000000Z-bbbbbbbbbbbb"])
    job = run_apply_job(gh, event, {}, stop_after="find")
    assert job.ok, job.log()
    find = job.step("find")
    assert "only the newest, plans/20260102T000000Z-bbbbbbbbbbbb/plan.jsonl.gz, is applied" in find.out
    assert find.outputs == {
        "plan": "plans/20260102T000000Z-bbbbbbbbbbbb/plan.jsonl.gz",
        "folder": "plans/20260102T000000Z-bbbbbbbbbbbb",
    }


def test_a_push_that_adds_no_plan_applies_nothing(gh: GitHub) -> None:
    event = _push_with_plans(gh, ["20260101T000000Z-aaaaaaaaaaaa"])
    gh.commit({"plans/20260101T000000Z-aaaaaaaaaaaa/plan.jsonl.gz": _fake_plan({"edited": True})}, "an edit to a plan")
    after = gh.commit({"README.md": "even later\n"}, "docs")
    gh.git("push", "-q", "origin", "main", cwd=gh.dev)
    job = run_apply_job(gh, push_event(event["sha"], after), {})  # no DSNs: nothing may reach a database
    assert job.ok, job.log()
    assert "This push adds no plan (plans/*/plan.jsonl.gz): nothing to apply." in job.step("find").out
    assert [s.outcome for s in job.steps[-2:]] == ["skipped", "skipped"]
    assert gh.origin_sha("main") == after and not [c for c in gh.gh_calls() if c["args"][:1] == ["api"]]


def test_a_merged_plan_left_unapplied_is_named_in_a_warning(gh: GitHub) -> None:
    """GitHub keeps one pending run per concurrency group by default: a third run cancels the pending one, so a
    merged plan can go unapplied with nothing failing. Every run of the apply job names such plans, applies only its
    own push's plan, and stays quiet about plans applied (journal or report.json) or replaced by a later plan."""
    wf = yaml.safe_load(WORKFLOW.read_text())
    assert wf["jobs"]["apply"]["concurrency"]["cancel-in-progress"] is False  # never stop an apply part way
    applied, late, a1, a2, b = (
        "plans/20260101T000000Z-111111111111",  # applied: its report is on main
        "plans/20260102T000000Z-222222222222",  # applied: its run committed the report after B's push
        "plans/20260103T000000Z-a1a1a1a1a1a1",  # pull request A's first plan, replaced by its second
        "plans/20260104T000000Z-a2a2a2a2a2a2",  # pull request A's plan as merged: its run was cancelled
        "plans/20260106T000000Z-bbbbbbbbbbbb",  # pull request B's plan: this push
    )
    estate = {"targets.yaml": TARGETS, "email_mappings.json": json.dumps(OLD_MAPPINGS)}
    gh.commit(
        {**estate, f"{applied}/plan.jsonl.gz": FAKE_PLAN, f"{applied}/report.json": "{}\n"},
        "the estate, a plan applied",
    )
    gh.git("push", "-q", "origin", "main", cwd=gh.dev)
    gh.git("branch", "a", cwd=gh.dev)  # A and B branch off here: no later plan is made on top of `late`
    gh.git("branch", "b", cwd=gh.dev)
    gh.git("checkout", "-q", "-b", "l", cwd=gh.dev)
    gh.commit({f"{late}/plan.jsonl.gz": FAKE_PLAN}, "emailsync plan (L)")
    _merge(gh, "l", 10)  # its run applies `late` while A and B are merged
    gh.git("checkout", "-q", "a", cwd=gh.dev)
    gh.commit({f"{a1}/plan.jsonl.gz": FAKE_PLAN}, "emailsync plan (first push of A)")
    gh.commit({"email_mappings.json": "{}"}, "A: the mappings once more")
    gh.commit({f"{a2}/plan.jsonl.gz": FAKE_PLAN}, "emailsync plan (second push of A)")
    _merge(gh, "a", 11)  # its run waits behind the one applying `late`, then B's push cancels it
    gh.git("checkout", "-q", "b", cwd=gh.dev)
    gh.commit({f"{b}/plan.jsonl.gz": FAKE_PLAN}, "emailsync plan (B)")
    event = _merge(gh, "b", 12)
    gh.commit({f"{late}/apply-20260106T000100Z.jsonl": "{}\n", f"{late}/report.json": "{}\n"}, "emailsync apply report")
    gh.git("push", "-q", "origin", "main", cwd=gh.dev)
    assert gh.origin_sha("main") != event["sha"]

    job = run_apply_job(gh, event, {}, stop_after="find")
    assert job.ok, job.log()
    find = job.step("find")
    assert find.outputs == {"plan": f"{b}/plan.jsonl.gz", "folder": b}  # B's plan only
    warnings = [line for line in find.out.splitlines() if line.startswith("::warning::")]
    assert warnings == [
        f"::warning::{a2}/plan.jsonl.gz is on main but was never applied "
        "(no apply-*.jsonl or report.json in its folder) "
        "and no later plan replaces it; its run was perhaps cancelled, rejected or failed. Apply it by hand and commit "
        "its journal and report.json, or delete its folder in a pull request if it must not be applied. This workflow "
        "does not apply it."
    ], find.out


@pytest.mark.parametrize("b_branches", ["before A and R are merged", "after A and R are merged"])
def test_only_a_later_ordinary_plan_made_on_top_replaces_an_unapplied_plan(gh: GitHub, b_branches: str) -> None:
    """A plan made on top of an unapplied one plans its changes too (the mappings carry them and the stores still
    lack them), so it replaces it; a rollback plan R is replaced only by a later rollback of the same plan."""
    x, a, r, b = (
        "plans/20260101T000000Z-111111111111",
        "plans/20260103T000000Z-aaaaaaaaaaaa",
        "plans/20260104T000000Z-rrrrrrrrrrrr",
        "plans/20260106T000000Z-bbbbbbbbbbbb",
    )
    # The find step tells a rollback plan by its header, line 1 of the gzip'd file in git; the rest (here some MiB,
    # more than a pipe holds) is cut short.
    rollback = _fake_plan({"rollback_of": {"plan_digest": "sha256:" + "1" * 64, "plan_folder": x}}, 100_000)
    assert len(gzip.decompress(rollback)) > 1 << 20
    gh.commit({"targets.yaml": TARGETS, f"{x}/plan.jsonl.gz": FAKE_PLAN, f"{x}/report.json": "{}\n"}, "the estate")
    gh.git("push", "-q", "origin", "main", cwd=gh.dev)
    gh.git("branch", "b", cwd=gh.dev)
    for branch, folder, text, number in [("a", a, FAKE_PLAN, 11), ("r", r, rollback, 12)]:
        gh.git("checkout", "-q", "-b", branch, "main", cwd=gh.dev)
        gh.commit({f"{folder}/plan.jsonl.gz": text}, f"plan {folder}")
        _merge(gh, branch, number)
    if b_branches.startswith("after"):
        gh.git("branch", "-f", "b", "main", cwd=gh.dev)
    gh.git("checkout", "-q", "b", cwd=gh.dev)
    gh.commit({f"{b}/plan.jsonl.gz": FAKE_PLAN}, "emailsync plan (B)")
    event = _merge(gh, "b", 13)

    job = run_apply_job(gh, event, {}, stop_after="find")
    assert job.ok, job.log()
    assert job.step("find").outputs["plan"] == f"{b}/plan.jsonl.gz"
    named = re.findall(r"^::warning::(\S+) is on main but was never applied", job.step("find").out, re.M)
    assert named == (
        [f"{a}/plan.jsonl.gz", f"{r}/plan.jsonl.gz"] if b_branches.startswith("before") else [f"{r}/plan.jsonl.gz"]
    )
