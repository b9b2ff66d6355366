"""What every ``rpo-guard`` command shares: the lazily loaded configuration and small parsers.

Subcommand modules import from here, never from :mod:`rpo_guard.cli.main`,
which imports them all to build the command tree.
"""
from __future__ import annotations

import shutil
import sys
from datetime import datetime
from pathlib import Path

import click

from rpo_guard import config as config_mod


class Ctx:
    """The ``rpo-guard`` group's object: the ``--config`` path and the configuration, loaded on first use."""

    def __init__(self, config_path: str | None):
        self.config_path = config_path
        self._cfg = None

    @property
    def cfg(self):
        if self._cfg is None:
            try:
                self._cfg = config_mod.load(self.config_path)
            except config_mod.ConfigError as exc:
                raise click.UsageError(str(exc)) from None
        return self._cfg


pass_ctx = click.make_pass_decorator(Ctx)


def parse_at(text: str | None, tz: str) -> datetime | None:
    """``--at`` as an aware datetime (naive values are in ``tz``); None when not given."""
    if not text:
        return None
    from zoneinfo import ZoneInfo
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not an ISO 8601 date-time", param_hint="--at") from None
    return at if at.tzinfo else at.replace(tzinfo=ZoneInfo(tz))


def default_agi_path() -> str:
    """The ``rpo-guard-agi`` beside the running interpreter, else the one on PATH."""
    here = Path(sys.executable).parent / "rpo-guard-agi"
    if here.exists():
        return str(here)
    return shutil.which("rpo-guard-agi") or str(here)
