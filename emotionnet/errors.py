"""The user's mistakes: `UserError`, the base of every error a user can cause and fix, with its exit code.

Bad arguments, configuration, data, model files, run directories, a busy run, an unusable tracking store:
each module raises its own subclass with one sentence that says what is wrong and how to fix it. Every
`emotionnet-*` command catches `UserError` only and prints that sentence (`prog: error: ...`), exiting with
the error's `exit_code`. Anything else is a bug or an environment fault: it keeps its traceback and exits 1
(a tracked training run ends FAILED, its last line as the run's `error` tag). A caller's programming
mistake (a wrong argument to a function) stays a ValueError or TypeError.

The lowest layer (below `data_prep`), so that every part of the system may raise one.
"""

from __future__ import annotations

from typing import ClassVar

from emotionnet.exit_codes import ExitCode


class UserError(Exception):
    """Something the user can fix; the message is one sentence for them, shown without a traceback."""

    exit_code: ClassVar[ExitCode] = ExitCode.BAD_INPUT
