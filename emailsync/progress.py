"""Progress on long phases (scanning, planning per table, applying per batch) as rich bars on stderr.

Library code reports through `task()` whether or not anything is shown; only the command line turns the display
on (`shown`), and only when stderr is a terminal and --quiet or --json was not given. The display runs only while
a task is open, so a prompt between phases (apply's confirmation) never has a bar drawn over it.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class Task:
    """One phase. advance() and describe() may be called from several threads (parallel Scan segments)."""

    def __init__(self, progress: Any = None, task_id: Any = None) -> None:
        self._progress = progress
        self._id = task_id

    def advance(self, n: float = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._id, n)

    def describe(self, description: str) -> None:
        if self._progress is not None:
            self._progress.update(self._id, description=description)

    def total(self, total: float | None) -> None:
        if self._progress is not None:
            self._progress.update(self._id, total=total)


def _rate_column() -> Any:
    from rich.progress import ProgressColumn
    from rich.text import Text

    class Rate(ProgressColumn):
        """Units per second (rows, items, actions), once rich has measured a speed."""

        def render(self, task: Any) -> Text:
            return Text(f"{task.speed:,.0f}/s" if task.speed else "", style="progress.data.speed")

    return Rate()


class _Display:
    def __init__(self, console: Any) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            _rate_column(),
            TimeElapsedColumn(),
            TimeRemainingColumn(compact=True),  # the estimate of the time left, for a phase of known size
            console=console,
            transient=True,  # the bars go when the phase ends: what stays on screen is the result
            # Our own output goes where it is written: stdout stays stdout, even while a bar is drawn.
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self.open = 0
        self.lock = threading.Lock()

    @contextmanager
    def task(self, description: str, total: float | None) -> Iterator[Task]:
        with self.lock:
            if self.open == 0:
                self.progress.start()
            self.open += 1
            task_id = self.progress.add_task(description, total=total)
        t = Task(self.progress, task_id)
        try:
            yield t
        finally:
            t._progress = None  # a Task kept past its phase does nothing, rather than touch a removed bar
            with self.lock:
                self.progress.refresh()  # the phase's last state is drawn once (done of total), then it goes
                self.progress.remove_task(task_id)
                self.open -= 1
                if self.open == 0:
                    self.progress.stop()


_display: _Display | None = None


@contextmanager
def task(description: str, total: float | None = None) -> Iterator[Task]:
    """A phase of `total` units (None: unknown). Shows nothing unless the command line turned the display on."""
    if _display is None:
        yield Task()
        return
    with _display.task(description, total) as t:
        yield t


def showing() -> bool:
    """Whether bars are drawn now (they show the rate and the time left themselves)."""
    return _display is not None and _display.open > 0


def say(text: str) -> None:
    """A line for the person on stderr, above the bars when they are drawn (never through them)."""
    display = _display
    if display is not None and display.open > 0:
        display.progress.console.print(text, markup=False, highlight=False)
        return
    print(text, file=sys.stderr, flush=True)


def wanted(quiet: bool, stream: Any = None) -> bool:
    """Bars only for a person watching: a terminal, and neither --quiet nor --json."""
    stream = stream if stream is not None else sys.stderr
    return not quiet and hasattr(stream, "isatty") and stream.isatty()


@contextmanager
def shown(enabled: bool, console: Any = None) -> Iterator[None]:
    """Turn the display on for the duration of one command."""
    global _display
    if not enabled:
        yield
        return
    from rich.console import Console

    previous = _display
    _display = _Display(console or Console(stderr=True))
    try:
        yield
    finally:
        _display = previous
