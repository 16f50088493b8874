"""The command line: a thin layer that parses options, calls the library and maps outcomes to exit codes.

Exit codes: 0 success (plan --detailed-exitcode: no changes); 1 a user mistake or refusal, nothing written;
2 plan --detailed-exitcode: the plan has changes; 3 apply finished but some actions are stale, failed or
unverified.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import botocore.exceptions
import psycopg
import typer

from emailsync import __version__
from emailsync.errors import UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Plan, review and apply bulk email changes across PostgreSQL databases.",
    pretty_exceptions_enable=False,
)


class OnStale(StrEnum):
    abort = "abort"
    skip = "skip"


def _interactive() -> bool:
    """Whether a person can answer the approval prompt (a separate function so tests can stand in for one)."""
    return sys.stdin.isatty()


def _fail(e: UserError) -> None:
    typer.echo(f"error: {e}", err=True)
    raise typer.Exit(1)


TargetsOpt = Annotated[Path, typer.Option("--targets", "-t", help="The targets file.")]


@app.command()
def plan(
    targets: TargetsOpt = Path("targets.yaml"),
    mappings: Annotated[
        Path | None,
        typer.Option(help="Mappings file (JSON or CSV); default: `mappings:` in the targets file."),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Where to write plan.json (plan.md goes beside it).")] = None,
    plans_dir: Annotated[Path, typer.Option(help="Archive folder for plans when --out is not given.")] = Path("plans"),
    detailed_exitcode: Annotated[
        bool, typer.Option(help="Exit 0 when there are no changes, 2 when there are.")
    ] = False,
) -> None:
    """Read the targets and mappings and write a reviewable plan. Writes nothing to any database."""
    from emailsync.archive import save_plan
    from emailsync.config import load_targets
    from emailsync.mappings import load_mappings
    from emailsync.planner import build_plan, default_plan_path
    from emailsync.render import summary_lines

    try:
        loaded = load_targets(targets)
        mset = load_mappings(loaded.mappings_path(mappings), loaded.config.match)
        for w in mset.warnings:
            typer.echo(f"warning: {w}", err=True)
        try:
            p = build_plan(loaded, mset)
        except psycopg.Error as e:
            # Not a mistake in the inputs we could name: report it plainly, without a traceback.
            msg = (e.diag.message_primary or str(e)).strip()
            raise UserError(
                f"the database reported an error while planning ({type(e).__name__}: {msg}); nothing was written"
            ) from None
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as e:
            raise UserError(f"DynamoDB reported an error while planning ({e}); nothing was written") from None
        path = out or default_plan_path(plans_dir, p)
        md = save_plan(p, path)
    except UserError as e:
        _fail(e)
    for w in p.warnings[len(mset.warnings) :]:
        typer.echo(f"warning: {w}", err=True)
    for rd in p.reads:
        typer.echo(
            f"read {rd.target}/{rd.table}: {rd.method}, {rd.segments} segment(s), {rd.requests} request(s), "
            f"{rd.items_read} item(s)",
            err=True,
        )
    typer.echo("\n".join(summary_lines(p)) if p.summary else "No changes: no configured column holds an old email.")
    typer.echo(f"\n{len(p.actions)} action(s), {len(p.skipped)} skipped. Plan: {path}\nReview: {md}")
    if p.actions:
        typer.echo(f"Apply after review with: emailsync apply {path} --targets {targets}")
    raise typer.Exit(2 if detailed_exitcode and p.has_changes else 0)


@app.command()
def apply(
    plan_file: Annotated[Path, typer.Argument(metavar="PLAN", help="The reviewed plan.json.")],
    targets: TargetsOpt = Path("targets.yaml"),
    auto_approve: Annotated[bool, typer.Option(help="Do not ask for confirmation.")] = False,
    on_stale: Annotated[
        OnStale,
        typer.Option(help="abort: roll back a database with stale rows; skip: apply the rest and report them."),
    ] = OnStale.abort,
    only_target: Annotated[list[str] | None, typer.Option(help="Apply only these targets (repeatable).")] = None,
    confirm_live: Annotated[bool, typer.Option(help="Approve the live-table actions without a prompt.")] = False,
    skip_live: Annotated[bool, typer.Option(help="Apply everything except the live-table actions.")] = False,
) -> None:
    """Apply exactly the reviewed plan, verifying every row, never overwriting a change made since the plan."""
    from emailsync.applier import apply_plan
    from emailsync.archive import journal_writer, write_report
    from emailsync.config import load_targets
    from emailsync.plan import read_plan
    from emailsync.render import ddb_key as render_key
    from emailsync.render import report_lines, summary_lines

    def confirm_live_actions(live: list[Any]) -> bool:
        # --auto-approve never approves the login table: only --confirm-live or typing YES does.
        if confirm_live:
            return True
        tables = sorted({f"{a.target}/{a.table}" for a in live})
        if not _interactive():
            raise UserError(
                f"the plan has {len(live)} live action(s) on {', '.join(tables)}: pass --confirm-live to apply "
                "them, or --skip-live to apply the rest; nothing was written"
            )
        typer.echo(f"\nLIVE: {len(live)} change(s) to the table(s) people log in with ({', '.join(tables)}):")
        for a in live[:50]:
            typer.echo(f"  {a.kind} {render_key(a.key)} -> {render_key(a.new_key) if a.new_key else ''}")
        if len(live) > 50:
            typer.echo(f"  ... and {len(live) - 50} more (see plan.md)")
        answer = typer.prompt("Type YES to apply the live changes", default="", show_default=False)
        return answer.strip() == "YES"

    def confirm(p: object) -> bool:
        if auto_approve:
            return True
        typer.echo("\n".join(summary_lines(plan_obj)))
        answer = typer.prompt("\nApply these changes? Only 'yes' is accepted", default="", show_default=False)
        return answer.strip() == "yes"

    try:
        if not auto_approve and not _interactive():
            raise UserError("no terminal to confirm on: review the plan, then pass --auto-approve to apply it")
        plan_obj = read_plan(plan_file)
        loaded = load_targets(targets)
        if loaded.sha256 != plan_obj.inputs.targets_sha256:
            typer.echo(
                f"warning: {targets} changed since the plan was made; the plan's targets are checked "
                "against it before anything is written",
                err=True,
            )
        if only_target:
            unknown = set(only_target) - set(plan_obj.targets)
            if unknown:
                raise UserError(f"--only-target {sorted(unknown)}: not in the plan (targets: {list(plan_obj.targets)})")
        if not plan_obj.actions:
            typer.echo("The plan has no changes: nothing to apply.")
            raise typer.Exit(0)
        journal_path = plan_file.with_name(f"apply-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.jsonl")
        code, report = apply_plan(
            plan_obj,
            loaded,
            on_stale=on_stale.value,
            confirm=confirm,
            confirm_live=confirm_live_actions,
            only_targets=only_target,
            skip_live=skip_live,
            journal=journal_writer(journal_path),
        )
        path = write_report(plan_file, report)
    except UserError as e:
        _fail(e)
    typer.echo("\n".join(report_lines(report)))
    typer.echo(f"\nReport: {path}")
    raise typer.Exit(code)


@app.command()
def show(plan_file: Annotated[Path, typer.Argument(metavar="PLAN")]) -> None:
    """Render a plan in the terminal (its digest is checked first)."""
    from emailsync.plan import read_plan
    from emailsync.render import plan_markdown

    try:
        p = read_plan(plan_file)
    except UserError as e:
        _fail(e)
    typer.echo(plan_markdown(p))


@app.command()
def demo(
    keep: Annotated[Path | None, typer.Option(help="Keep targets.yaml, mappings and plans in this folder.")] = None,
) -> None:
    """Run plan, review and apply on a throwaway embedded PostgreSQL HR estate (needs the sandbox extra)."""
    from emailsync.sandbox import run_demo

    try:
        code = run_demo(typer.echo, keep.resolve() if keep else None)
    except UserError as e:
        _fail(e)
    raise typer.Exit(code)


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


def main() -> None:
    app()
