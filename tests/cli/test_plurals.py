"""One of a thing is said in the singular: "1 number consulted", "(1 row)", "1 row intact"."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import today_rome

EXE = str(Path(sys.executable).parent / "rpo-guard")


def rpo(env, *args):
    return subprocess.run([EXE, "--config", str(env.conf), *args], capture_output=True, text=True, timeout=120)


def test_one_number_one_row(env):
    env.init()
    one = env.csv("one.csv", "number,status\n0612345678,non iscritto\n")
    r = rpo(env, "import-consultation", str(one), "--date", today_rome().isoformat(), "--quiet")
    assert ": 1 number consulted on " in r.stdout, r.stdout + r.stderr
    status = rpo(env, "status").stdout
    assert "1 number consulted," in status and "(1 row)" in status, status
    two = env.csv("two.csv", "number,status\n0612345678,non iscritto\n0612345679,iscritto\n")
    r = rpo(env, "import-consultation", str(two), "--date", today_rome().isoformat(), "--quiet")
    assert ": 2 numbers consulted on " in r.stdout
    assert "(2 rows)" in rpo(env, "status").stdout
    rpo(env, "simulate-call", "0612345678", "--quiet")
    assert rpo(env, "audit", "verify").stdout.startswith("OK: 1 row intact")
