"""The program's entry point. The CLI is imported inside the guard: loading psycopg, botocore and typer takes a
moment, and a Ctrl-C landing there (or anywhere later) ends with one line and exit code 130, not a traceback."""

from __future__ import annotations

import os
import signal
import sys

INTERRUPTED = "error: interrupted (Ctrl-C); an interrupted apply resumes when run again\n"


def _interrupted_now(signum: int, frame: object) -> None:
    # While exiting: no more Python to unwind into, just the line and the code.
    os.write(2, INTERRUPTED.encode())
    os._exit(130)


def main() -> None:
    try:
        from emailsync.cli import main as cli_main

        cli_main()
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not interrupt the message
        sys.stderr.write(INTERRUPTED)
        sys.stderr.flush()
        code = 130
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, int | None):
            sys.stderr.write(f"{e.code}\n")
    else:
        code = 0
    # Interpreter shutdown (thread joins, atexit) can take a moment too: a Ctrl-C there exits at once.
    signal.signal(signal.SIGINT, _interrupted_now)
    sys.exit(code)
