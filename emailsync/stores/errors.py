"""An error a store reported while a command ran, as the one UserError the CLI prints (exit 1, no traceback)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import botocore.exceptions
import psycopg

from emailsync.errors import UserError


@contextmanager
def store_errors(doing: str, after: str = "") -> Iterator[None]:
    """An error a store reported, as one UserError naming what was being done: not a mistake in the inputs that
    could be named, but no traceback either."""
    try:
        yield
    except psycopg.Error as e:
        msg = (e.diag.message_primary or str(e)).strip()
        raise UserError(f"the database reported an error while {doing} ({type(e).__name__}: {msg}){after}") from None
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as e:
        raise UserError(f"DynamoDB reported an error while {doing} ({e}){after}") from None
