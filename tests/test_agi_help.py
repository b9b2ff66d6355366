"""`rpo-guard-agi --help` prints its usage and exits 0; run from a terminal it says what it is
instead of speaking AGI to the person."""
from __future__ import annotations

import os
import pty
import subprocess

from conftest import agi_path

AGI_WORDS = ("SET VARIABLE", "ANSWER", "GET VARIABLE", "VERBOSE")


def test_help_prints_usage_and_exits_0():
    for flag in ("--help", "-h"):
        r = subprocess.run([agi_path(), flag], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, r
        assert r.stdout.startswith("usage: rpo-guard-agi [--config=PATH] NUMBER [BRAND [CALLERID]]")
        assert "rpo-guard simulate-call" in r.stdout
        assert not any(w in r.stdout for w in AGI_WORDS)


def test_a_terminal_gets_the_usage_not_agi():
    controller, terminal = pty.openpty()
    try:
        r = subprocess.run([agi_path(), "0612345678", "acme"], stdin=terminal, capture_output=True, text=True,
                           timeout=60)
    finally:
        os.close(controller)
        os.close(terminal)
    assert r.returncode == 2
    assert r.stderr.startswith("usage: rpo-guard-agi") and r.stdout == ""
