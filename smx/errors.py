"""The one exception type for bad user input (and the recipe checks' list of problems that becomes one).

A UserError (a ValueError, per DESIGN.md section 7) carries a one-line message naming the key, file or value at
fault. The CLI prints it without a traceback and exits with code 2.
"""


from __future__ import annotations

import errno
from typing import Sequence

# A full disk or quota: the machine's state, not a bug (one line, exit 2, like bad input).
NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class UserError(ValueError):
    """Bad input from the user: a recipe key, a file, a command-line value.

    `problems` is one message or a list of them (a recipe's every problem, one line each); str() joins them.
    """

    def __init__(self, problems: str | Sequence[str]) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class Problems(ValueError):
    """A section's or a rule's problems as (key, message) pairs, keys relative to where they were found; raised by
    the recipe schema's checks and turned into one UserError by smx.recipe.recipes."""

    def __init__(self, problems: Sequence[tuple[str, str]]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(f"{k}: {m}" for k, m in self.problems))
