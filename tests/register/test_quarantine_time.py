"""A quarantined file's reason says when, in the rules' timezone (Europe/Rome), even on a
machine whose clock zone is UTC."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from conftest import today_rome


def test_reason_file_is_in_rome_time(env):
    env.init()
    bad = env.csv("bad.csv", "number,status\n0612345678,forse\n")
    r = subprocess.run([str(Path(sys.executable).parent / "rpo-guard"), "--config", str(env.conf),
                        "import-consultation", str(bad), "--date", today_rome().isoformat(), "--quarantine"],
                       capture_output=True, text=True, timeout=60, env={**os.environ, "TZ": "UTC"})
    assert r.returncode == 1 and "moved to" in r.stderr, r.stderr
    reasons = list((env.cfg.inbox / "quarantine").glob("*.reason.txt"))
    assert len(reasons) == 1
    m = re.search(r"^quarantined: (\S+)$", reasons[0].read_text(), re.M)
    stamp = datetime.fromisoformat(m.group(1))
    assert stamp.utcoffset() == datetime.now(ZoneInfo("Europe/Rome")).utcoffset()
