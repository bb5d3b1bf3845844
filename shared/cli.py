"""Options and helpers every DTLR command shares."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from dtlr.shared.config import Settings, SettingsError, load_settings
from dtlr.shared.store import Store

console = Console(stderr=True, highlight=False, soft_wrap=True)

# Exit codes of every command (README, "Exit codes").
EXIT_OK = 0
EXIT_FAILED = 1  # the command ran; some patients (or a stage) failed, each with its reason
EXIT_REFUSED = 2  # nothing ran: bad arguments, settings, manifest or store (the message says)
EXIT_BROKER = 3  # the broker or its workers went away; finished work is kept
EXIT_STORE = 4  # the store could not be written (full disk, permissions)
EXIT_INTERRUPTED = 130  # Ctrl-C


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
