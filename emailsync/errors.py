"""The one exception type for user mistakes: the CLI prints it and exits 1, never a traceback."""

from __future__ import annotations

# A message is read by a person: a hostile input (a 4 MB line, a million bad entries) must not become megabytes on
# stderr. What is cut is said, never silently dropped.
MAX_PROBLEMS = 50
MAX_CHARS = 2_000

# Ctrl-C, wherever it lands (console.py while starting and exiting, cli.py inside a command): exit code 130.
INTERRUPTED = "error: interrupted (Ctrl-C); an interrupted apply resumes when run again\n"


# Characters a terminal or `str.splitlines` takes as a line break, besides "\n": quoted input holding one would
# forge a line of its own in the message. Shown escaped instead.
_BREAKS = {c: f"\\u{ord(c):04x}" for c in "\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"}
_BREAKS_TABLE = str.maketrans(_BREAKS)


def _clip(text: str, limit: int = MAX_CHARS) -> str:
    # A lone surrogate quoted from the input would make printing the message fail: shown as its escape instead.
    text = text.translate(_BREAKS_TABLE).encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text) - limit:,} more characters)"


class UserError(Exception):
    """A mistake the user can fix. The message names the file, the place and the fix.

    `problems` holds every problem found when validation reports many at once; the first MAX_PROBLEMS are shown.
    """

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.problems = list(problems or [])
        message = _clip(message)
        if self.problems:
            shown = [f"  - {_clip(p, 500)}" for p in self.problems[:MAX_PROBLEMS]]
            if len(self.problems) > MAX_PROBLEMS:
                shown.append(f"  - … and {len(self.problems) - MAX_PROBLEMS:,} more problem(s) of the same kinds")
            message = message + "\n" + "\n".join(shown)
        super().__init__(message)

    @classmethod
    def as_reported(cls, text: str, problems: list[str]) -> UserError:
        """The same error again from its text, as another process reported it (its problems already in the text)."""
        err = cls.__new__(cls)
        Exception.__init__(err, text)
        err.problems = list(problems)
        return err


class Refusal(UserError):
    """The data refuses the plan (conflicts under on_conflict: fail or a unique group, CHECK constraints): every
    target is still planned, so one run lists the rows of all of them (combine)."""

    @classmethod
    def combine(cls, found: list[UserError]) -> UserError:
        if len(found) == 1:
            return found[0]
        problems: list[str] = []
        for e in found:
            head, *rest = str(e).split("\n")
            problems += [head] + [f"  {line.strip()[2:]}" for line in rest if line.strip().startswith("- ")]
        return UserError(f"the plan is refused in {len(found)} targets; every one listed, with its rows", problems)
