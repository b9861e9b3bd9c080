"""`python -m smx ...` is the `smx` command (used to run sweep cells in child processes)."""

from smx.cli import main

main()
