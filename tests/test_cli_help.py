"""Every command of `rpo-guard` explains itself in --help: a summary that is not cut short
for each command and group, and a help text for each option."""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest


def _cli() -> click.Group:
    for module in ("rpo_guard.cli.main", "rpo_guard.cli"):
        try:
            group = getattr(importlib.import_module(module), "cli", None)
        except ImportError:
            continue
        if isinstance(group, click.Group):
            return group
    raise AssertionError("the rpo-guard click group was not found")


def _commands(group, path=()):
    for name, cmd in sorted(group.commands.items()):
        yield (*path, name), cmd
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*path, name))


COMMANDS = list(_commands(_cli()))
IDS = [" ".join(p) for p, _ in COMMANDS]


@pytest.mark.parametrize("path,cmd", COMMANDS, ids=IDS)
def test_command_has_a_description(path, cmd):
    assert cmd.get_short_help_str(limit=1000), f"`rpo-guard {' '.join(path)}` has no description"


@pytest.mark.parametrize("path,cmd", COMMANDS, ids=IDS)
def test_every_option_has_help(path, cmd):
    bare = [p.opts[0] for p in cmd.params if isinstance(p, click.Option) and not p.hidden and not p.help]
    assert not bare, f"`rpo-guard {' '.join(path)}`: options without help text: {', '.join(bare)}"


def test_group_listings_show_the_summaries():
    exe = str(Path(sys.executable).parent / "rpo-guard")
    groups = [[]] + [list(p) for p, c in COMMANDS if isinstance(c, click.Group)]
    for group in groups:  # as a person sees them on an 80-column terminal
        r = subprocess.run([exe, *group, "--help"], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "COLUMNS": "80"})
        assert r.returncode == 0, r.stderr
        listing = r.stdout.split("Commands:", 1)[1].strip().splitlines()
        for line in listing:
            if line.startswith("  ") and not line.startswith("    "):  # "  name  summary"
                assert len(line.split(None, 1)) == 2, f"{' '.join(group) or 'rpo-guard'}: no summary: {line!r}"
                assert not line.rstrip().endswith("..."), f"summary cut short: {line!r}"
