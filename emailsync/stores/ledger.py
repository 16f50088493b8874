"""What each target remembers about applies, whatever its store: the run, past runs, the Ledger protocol both
stores' ledgers implement (stores/postgres/ledger.py, stores/dynamodb/ledger.py) and the no-op ledger of a target
that keeps none (Atlas keeps a no-op revision store the same way, rather than `if ledger is None` branches).
"""

from __future__ import annotations

import getpass
import os
import socket
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from emailsync import __version__

if TYPE_CHECKING:
    pass


LOCK_WAIT_SECONDS = 5.0


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Run:
    """One `emailsync apply` invocation: who, where, what."""

    plan_digest: str
    approver: str | None
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    user: str = field(default_factory=getpass.getuser)
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    started_at: str = field(default_factory=now)
    force: bool = False  # apply --force: the plan runs again whole, whatever the ledgers record as done

    @property
    def who(self) -> str:
        by = f"{self.user}@{self.host}"
        return f"{by} (approver {self.approver})" if self.approver else by

    def header(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "plan_digest": self.plan_digest,
            "user": self.user,
            "host": self.host,
            "pid": self.pid,
            "approver": self.approver,
            "started_at": self.started_at,
            "tool_version": __version__,
        }


@dataclass(frozen=True)
class PastRun:
    target: str
    status: str
    started_at: str
    finished_at: str | None
    who: str
    run_id: str | None = None

    def describe(self) -> str:
        return f"{self.target}: {self.status} on {self.finished_at or self.started_at} by {self.who}"


def who_text(user: str | None, host: str | None, approver: str | None) -> str:
    by = f"{user}@{host}"
    return f"{by} (approver {approver})" if approver else by


def only_rechecked(counts: dict[str, int]) -> bool:
    """The run found every action already applied: nothing written, nothing to report."""
    return all(status == "already-applied" for status, n in counts.items() if n)


class NoLedger:
    """The ledger of a target that keeps none (a DynamoDB target without `ledger_table`; apply warns), and of a
    target only verified: records nothing and locks nothing, so every target runs one path instead of asking each
    time whether there is a ledger."""

    def ensure(self) -> None:
        pass

    def lock(self) -> None:
        pass

    def release(self) -> None:
        pass

    def completed(self) -> list[PastRun]:
        return []

    def start(self) -> None:
        pass

    def finish(self, status: str, counts: dict[str, int]) -> None:
        pass


def process_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True
