"""The program's entry point. The CLI is imported inside the guard: loading psycopg, botocore and typer takes a
moment, and a Ctrl-C landing there (or anywhere later) ends with one line and exit code 130, not a traceback."""

from __future__ import annotations

import signal
import sys

from emailsync.errors import INTERRUPTED


def main() -> None:
    try:
        code = _run()
        # The outcome is decided: a Ctrl-C during interpreter shutdown (thread joins, atexit) is ignored rather than
        # left to kill the process by signal, which would hide the exit code. Python leaves an ignored signal
        # ignored to the very end of its finalization.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except KeyboardInterrupt:  # landed between the command's end and the line above
        code = _interrupted()
    sys.exit(code)


def _run() -> int:
    try:
        try:
            from emailsync.cli import main as cli_main

            cli_main()
            return 0
        except SystemExit as e:
            if isinstance(e.code, int | None):
                return e.code or 0
            sys.stderr.write(f"{e.code}\n")
            return 1
    except KeyboardInterrupt:  # while loading, or in the SystemExit handler above
        return _interrupted()


def _interrupted() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not interrupt the message
    sys.stderr.write(INTERRUPTED)
    sys.stderr.flush()
    return 130
