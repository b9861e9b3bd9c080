"""The `smx` command: a thin Typer layer. Each sub-module parses one area's options and calls one function.

Bad input (smx.errors.UserError, the one exception for it) is printed as one line, without a traceback, with exit
code 2. Any other exception is an internal bug and keeps its traceback.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from smx.cli import compare, data, diagnose, evaluate, export, recipe, report, sweep, train
from smx.errors import NO_SPACE_ERRNOS, UserError

err_console = Console(stderr=True, highlight=False, soft_wrap=True)

app = typer.Typer(
    name="smx",
    help="Train Switch Transformer MoE models and compare router gradient estimators head to head.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for command in (data, recipe, diagnose, evaluate, train, compare, sweep, report, export):
    command.register(app)  # each cli module adds its command (or command group) and nothing else


def run(argv: list[str] | None = None) -> int:
    """Run the CLI on argv and return its exit code; bad input gives one line on stderr and code 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:  # the command line as typed travels to the commands that record it (meta.json argv)
        result = app(args=argv, prog_name="smx", standalone_mode=False, obj={"argv": ["smx", *argv]})
        return int(result) if isinstance(result, int) else 0
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        err_console.print("aborted")
        return 130
    except typer.TyperException as e:  # usage errors: unknown option, missing argument, bad value
        err_console.print(f"error: {e.format_message()}", markup=False)
        return 2
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130
    except OSError as e:  # a full disk is the machine's state, not a bug; every other OSError keeps its traceback
        if e.errno not in NO_SPACE_ERRNOS:
            raise
        err_console.print(f"error: {e.filename or 'an output file'}: no space left on device; files already "
                          "finished were not overwritten; free space and run the command again", markup=False)
        return 2
    except UserError as e:  # bad input only: everything else is a bug and keeps its traceback
        msg = " ".join(str(e).split()) if "\n" not in str(e) else str(e)
        err_console.print(f"error: {msg}", markup=False)
        return 2


def main() -> None:
    sys.exit(run(sys.argv[1:]))
