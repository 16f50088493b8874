"""The one exception type for user mistakes: the CLI prints it and exits 1, never a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix. The message names the file, the place and the fix.

    `problems` holds every problem found when validation reports many at once.
    """

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.problems = list(problems or [])
        if self.problems:
            message = message + "\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(message)
