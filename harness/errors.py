"""Errors a user can cause, told in one line: the commands print them without a traceback, exit code 2.

By the project's conventions bad input -- a data file, a checkpoint, a config key, the tracking store,
an output path -- raises ``ValueError``/``KeyError``/``OSError`` (or a subclass naming the problem),
with a message naming the file, record or key and what to do. ``--debug`` shows the traceback.
"""
from __future__ import annotations

from .locks import LockedError
from .tracking import TrackingUnavailableError

EXIT_USAGE = 2
# NotImplementedError: a table the harness cannot regenerate yet (TableNotImplementedError).
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError, KeyError, OSError, NotImplementedError, TrackingUnavailableError, LockedError,
)


def one_line(err: BaseException) -> str:
    """The error's message on one line (a KeyError's own message, not its repr)."""
    if isinstance(err, KeyError) and len(err.args) == 1 and isinstance(err.args[0], str) and type(err) is KeyError:
        text = err.args[0]
    elif isinstance(err, OSError) and err.filename is not None and err.strerror:
        text = f"{err.strerror}: {err.filename} (check the path and its permissions)"
    else:
        text = str(err) or type(err).__name__
    return " ".join(text.split())
