"""The one exception type for bad user input.

A UserError (a ValueError, per DESIGN.md section 7) carries a one-line message naming the key, file or value at
fault. The CLI prints it without a traceback and exits with code 2.
"""


class UserError(ValueError):
    """Bad input from the user: a recipe key, a file, a command-line value."""
