"""The `mt` command line: a thin layer that parses, loads the config, and calls one function per command.

Each command imports what it needs inside its function: `mt --help` and a config error answer at once,
without importing torch (seconds). A command's signature declares its options (Typer); its body is checks and one call.
Modules: shared.py (the app, common options, failure helpers), cmd_train.py (prepare, train, average, plot,
runs), cmd_evaluate.py (evaluate, bench, score), cmd_translate.py (translate, export, serve)."""

from __future__ import annotations

# isort: off
# each module registers its commands; `mt --help` lists them in this order
from mt_cli.cli import cmd_train, cmd_evaluate, cmd_translate  # noqa: F401
from mt_cli.cli.shared import app

# isort: on


def main() -> None:
    """Entry point: known failures become one line on stderr and a non-zero exit, never a traceback."""
    from mt_cli.errors import run_reporting_errors

    run_reporting_errors(app)


if __name__ == "__main__":
    main()
