"""deploy/logrotate (the failure log's rotation) as logrotate reads it: forced once on a throwaway
copy of the log folder, the log moves aside and a new one is created 0660. The owner and group
are root here (the shipped rpo-guard account need not exist); skipped without logrotate or root."""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

SHIPPED = Path(__file__).resolve().parents[1] / "deploy" / "logrotate"


@pytest.mark.skipif(not shutil.which("logrotate") or os.geteuid() != 0,
                    reason="needs logrotate (Debian package logrotate) and root")
def test_failure_log_rotates(tmp_path):
    logs = tmp_path / "log"
    logs.mkdir(mode=0o750)
    (logs / "failures.log").write_text("2026-12-01T10:00:00+0100 rpo-guard[1]: a failure\n")
    text = SHIPPED.read_text()
    assert "/var/log/rpo-guard/*.log" in text and "create 0660 rpo-guard rpo-guard" in text
    conf = tmp_path / "logrotate.conf"
    conf.write_text(text.replace("/var/log/rpo-guard", str(logs)).replace("rpo-guard rpo-guard", "root root"))
    conf.chmod(0o644)
    r = subprocess.run(["logrotate", "--force", "--state", str(tmp_path / "state"), str(conf)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert (logs / "failures.log.1").read_text().startswith("2026-12-01")  # delaycompress: plain
    fresh = logs / "failures.log"
    assert fresh.read_text() == "" and stat.S_IMODE(fresh.stat().st_mode) == 0o660
