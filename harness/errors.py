"""Errors a user can cause and fix. The CLI prints them without a traceback and exits 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class HarnessError(Exception):
    """A problem the user can fix; the message says what was wrong and what would be right."""


class UnknownNameError(HarnessError, KeyError):
    """A name that is not registered; the message lists the closest registered names."""

    def __init__(self, what: str, name: str, known: Iterable[str]):
        known = sorted(known)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        message = f"unknown {what} {name!r}"
        if close:
            message += f"; did you mean {' or '.join(repr(c) for c in close)}?"
        else:
            message += "."
        if known:
            message += f" Installed {what}s: {', '.join(known)}."
        else:
            message += f" No {what}s are installed."
        super().__init__(message)
        self.what, self.name, self.suggestions = what, name, close

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0])


class RunDiverged(Exception):
    """Raised inside a run when the training loss stops being finite; stored as status 'diverged'."""


class HubUnreachable(HarnessError):
    """The Hugging Face hub could not be reached and the data is not cached locally."""
