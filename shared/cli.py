"""Options and helpers every DTLR command shares, and the one top-level error handler.

Every console script runs its command through :func:`run_command`: whatever goes wrong, the
user sees one message with the fix and a documented exit code, never a traceback
(``dtlr --debug ...`` or ``DTLR_DEBUG=1`` shows it).
"""

from __future__ import annotations

import codecs
import io
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.markup import escape

from dtlr.shared.config import Settings, SettingsError, load_settings
from dtlr.shared.store import Store, StoreError, StoreWriteError

console = Console(stderr=True, highlight=False, soft_wrap=True)

# Exit codes of every command (README, "Exit codes").
EXIT_OK = 0
EXIT_FAILED = 1  # the command ran; some patients (or a stage) failed, each with its reason
EXIT_REFUSED = 2  # nothing ran: bad arguments, settings, manifest or store (the message says)
EXIT_BROKER = 3  # the broker or its workers went away; finished work is kept
EXIT_STORE = 4  # the store could not be written (full disk, permissions)
EXIT_INTERRUPTED = 130  # Ctrl-C
EXIT_BUG = 70  # an unexpected error in DTLR itself (EX_SOFTWARE): please report it
DEBUG_ENV = "DTLR_DEBUG"


class Refused(click.ClickException):
    """Nothing ran: the message says why and what to do (exit code 2)."""

    exit_code = EXIT_REFUSED


def store_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--store PATH`` (default ``$DTLR_HOME`` or ``./dtlr-data``), passed on as a Store."""
    return click.option(
        "--store", "store", type=click.Path(file_okay=False, path_type=Path),
        envvar="DTLR_HOME", default="dtlr-data", show_default=True,
        callback=lambda _ctx, _param, value: Store(value),
        help="Feature store folder (or set DTLR_HOME).",
    )(func)


def settings_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--config FILE``: the settings YAML (paper defaults when absent)."""

    def load(_ctx: click.Context, _param: click.Parameter, value: Path | None) -> Settings:
        try:
            return load_settings(value)
        except SettingsError as exc:
            raise click.BadParameter(str(exc)) from exc

    return click.option(
        "--config", "settings", type=click.Path(dir_okay=False, exists=True, path_type=Path),
        envvar="DTLR_CONFIG", callback=load,
        help="Settings YAML; keys you leave out keep the paper's defaults.",
    )(func)


def say(label: str, style: str, text: object) -> None:
    """Print 'label: text' on stderr; ``text`` is never read as rich markup."""
    console.print(f"[{style}]{label}[/{style}]: {escape(str(text))}")


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    return f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"


def describe(exc: BaseException) -> tuple[int, str]:
    """The exit code and the one-line message for an exception that reached the top."""
    code = getattr(exc, "exit_code", None)
    if isinstance(code, int) and not isinstance(exc, click.ClickException):
        return code, str(exc)
    if isinstance(exc, StoreWriteError):
        return EXIT_STORE, (f"{exc}; free space on that disk (or fix the share or its "
                            "permissions), then run the same command again: finished work is "
                            "kept")
    if type(exc).__module__.split(".")[0] in ("redis", "kombu", "amqp"):
        return EXIT_BROKER, (f"lost the broker ({type(exc).__name__}: {exc}); check that Redis "
                             "runs and --broker / DTLR_BROKER_URL, then run the same command "
                             "again")
    if isinstance(exc, KeyError):
        return EXIT_REFUSED, str(exc.args[0] if exc.args else exc)
    if isinstance(exc, (StoreError, SettingsError, ValueError, LookupError, OSError)):
        return EXIT_REFUSED, str(exc)
    if type(exc).__module__.split(".")[0] == "duckdb":
        return EXIT_REFUSED, str(exc).splitlines()[0]
    return EXIT_BUG, (f"unexpected {type(exc).__name__}: {exc} (at {_where(exc)}); this is a "
                      "bug in DTLR or a library it uses, not in your data: please report it "
                      "with this message (run again with --debug for the traceback)")


def printable_streams() -> None:
    """Let stdout and stderr replace what their encoding cannot show (a C or ASCII locale)
    instead of failing on the first '…' of a message."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper) and codecs.lookup(stream.encoding).name != "utf-8":
            stream.reconfigure(errors="replace")


def run_command(command: click.Command, prog_name: str,
                args: list[str] | None = None) -> NoReturn:
    """Run ``command`` as a program (``args``: the command line, default ``sys.argv[1:]``)
    with the one top-level error handler."""
    printable_streams()
    try:
        code = command.main(args=args, prog_name=prog_name, standalone_mode=False)
        sys.exit(code if isinstance(code, int) else EXIT_OK)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        # click's own default (1) would read as "some patients failed": nothing ran here.
        sys.exit(EXIT_REFUSED if exc.exit_code == 1 else exc.exit_code)
    except (click.Abort, KeyboardInterrupt):
        say("interrupted", "yellow", "stopped; finished work is kept, run the same command "
                                     "again to resume")
        sys.exit(EXIT_INTERRUPTED)
    except SystemExit:
        raise
    except BaseException as exc:  # the one place that turns any error into a message
        if os.environ.get(DEBUG_ENV) == "1":
            traceback.print_exc()
        code, message = describe(exc)
        say("error", "red", message)
        sys.exit(code)
