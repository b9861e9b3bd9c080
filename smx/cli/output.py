"""Consoles of the command line."""

from __future__ import annotations

import os
import sys

from rich.console import Console

PIPE_WIDTH = 200  # columns of a table written to a file or pipe (rich's default of 80 would fold its cells)


def table_console() -> Console:
    """Standard output for tables: the terminal's width, $COLUMNS when set, else PIPE_WIDTH (file or pipe)."""
    wide = not sys.stdout.isatty() and "COLUMNS" not in os.environ
    return Console(highlight=False, width=PIPE_WIDTH if wide else None)
