"""The what-ifs the demo suggests at its end answer what their comments say, whether the
campaign ran with the calling hours on or (outside them) off."""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from conftest import today_rome

EXE = str(Path(sys.executable).parent / "rpo-guard")


@pytest.mark.parametrize("closed_now", [False, True], ids=["real clock", "today a local holiday"])
def test_suggested_what_ifs_are_true(tmp_path, capsys, closed_now):
    from rpo_guard.cli.demo import run_demo
    conduct = {}
    if closed_now:
        today = today_rome()
        conduct = {"local_holidays": f"{today.isoformat()}, {(today + timedelta(days=1)).isoformat()}"}
    run_demo(tmp_path / "demo", conduct=conduct)
    tries = [line for line in capsys.readouterr().out.splitlines() if line.startswith("try: rpo-guard ")]
    assert len(tries) == 2
    expect = {"the consultation expired": "BLOCK consultation_expired",
              "a Sunday, no calls": "BLOCK outside_calling_hours"}
    for line in tries:
        command, _, comment = line[len("try: "):].partition("#")
        words = shlex.split(command)
        assert words[0] == "rpo-guard"
        r = subprocess.run([EXE, *words[1:]], capture_output=True, text=True, timeout=60)
        wanted = next(v for k, v in expect.items() if k in comment)
        assert r.stdout.startswith(wanted), f"{line}\n-> {r.stdout}{r.stderr}"
        assert re.search(r"--at \d{4}-\d\d-\d\dT", command)
