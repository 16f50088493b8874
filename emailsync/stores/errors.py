"""An error a store reported while a command ran, as the one UserError the CLI prints (exit 1, no traceback)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from emailsync.errors import UserError


@contextmanager
def store_errors(doing: str, after: str = "") -> Iterator[None]:
    """An error a store reported, as one UserError naming what was being done: not a mistake in the inputs that
    could be named, but no traceback either."""
    try:
        yield
    except Exception as e:
        # A store's errors can only come from a store whose library was imported: neither psycopg nor botocore is
        # imported here for a run that does not use it (a fifth of a second each at every start).
        psycopg, botocore = sys.modules.get("psycopg"), sys.modules.get("botocore.exceptions")
        if psycopg is not None and isinstance(e, psycopg.Error):
            msg = (e.diag.message_primary or str(e)).strip()
            raise UserError(
                f"the database reported an error while {doing} ({type(e).__name__}: {msg}){after}"
            ) from None
        if botocore is not None and isinstance(e, botocore.ClientError | botocore.BotoCoreError):
            raise UserError(f"DynamoDB reported an error while {doing} ({e}){after}") from None
        raise
