"""How failures reach the user: one line on stderr and an exit status (2: bad config, input, option or
checkpoint; 1: a runtime failure; 130: interrupted), never a traceback."""

from __future__ import annotations

import os
import sys
import warnings

import typer

MAX_LINE = 1000  # characters of an error line: messages echo user values (a path, a name), which may be huge


def one_line(text: str, limit: int = MAX_LINE) -> str:
    """`text` as one line of at most `limit` characters (cut ones end with '…')."""
    text = " ".join(part.strip() for part in str(text)[: limit * 4].splitlines() if part.strip())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def say_error(msg: str, prefix: str = "error: ") -> None:
    typer.echo(one_line(prefix + str(msg)), err=True)


class _CappedStream:
    """stderr for click's usage errors, whose messages repeat the bad value: each line is capped."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        lines = text.split("\n")
        return self.stream.write("\n".join(one_line(x) if len(x) > MAX_LINE else x for x in lines))

    def flush(self) -> None:
        self.stream.flush()


def run_reporting_errors(app) -> None:
    """Run the Typer `app`; known failures become one line on stderr and a non-zero exit, never a traceback."""
    # ConfigError, DataError and CheckpointError are ValueErrors; not importing their modules here keeps
    # `mt --help` and config errors free of the torch import (seconds).
    from mt_cli.atomic import OutputError

    warnings.filterwarnings("ignore", message=".*capturable.*")
    try:
        rc = app(standalone_mode=False)
        if isinstance(rc, int) and rc:
            if rc == 130:  # Typer returns Ctrl-C as exit code 130 when not in standalone mode
                typer.echo("interrupted", err=True)
            sys.exit(rc)
    except ValueError as e:
        say_error(e)
        sys.exit(2)
    except OutputError as e:
        say_error(e.strerror or e)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - the last line of defence for a one-line error
        from mt_cli.training.state import TrainingStopped

        if isinstance(e, TrainingStopped):
            if os.environ.get("RANK", "0") == "0":  # under torchrun every rank stops; rank 0 tells
                say_error(e, "stopped: ")
            sys.exit(1)
        _click_exit(e)
        say_error(f"{type(e).__name__}: {e}")
        sys.exit(1)


def _click_exit(e: Exception) -> None:
    """Usage errors and exits of click, or of the copy of click that newer Typer versions bundle: matched
    by name, as the classes differ between the two."""
    names = {c.__name__ for c in type(e).__mro__}
    if "NoArgsIsHelpError" in names:  # `mt` alone: the help, as for --help
        e.show()
        sys.exit(0)
    if "ClickException" in names:
        e.show(file=_CappedStream(sys.stderr))
        sys.exit(e.exit_code)
    if "Exit" in names:
        if e.exit_code == 130:  # Ctrl-C, turned into an exit by Typer
            typer.echo("interrupted", err=True)
        sys.exit(e.exit_code)
    if "Abort" in names:
        typer.echo("interrupted", err=True)
        sys.exit(130)
