"""The failure log: created 0640 (phone numbers), 0660 in a setgid (group-shared) folder,
stamped in the rules' timezone whatever the machine's zone."""
from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from datetime import datetime
from zoneinfo import ZoneInfo

from rpo_guard.failure_log import log_failure


def test_created_0640_whatever_the_umask(tmp_path):
    log = tmp_path / "failures.log"
    old = os.umask(0)
    try:
        log_failure("call 1 blocked on error: x", str(log))
    finally:
        os.umask(old)
    assert stat.S_IMODE(log.stat().st_mode) == 0o640
    log_failure("second", str(log))
    assert len(log.read_text().splitlines()) == 2


def test_created_0660_in_a_setgid_folder(tmp_path):
    shared = tmp_path / "log"
    shared.mkdir()
    shared.chmod(0o2770)
    log_failure("x", str(shared / "failures.log"))
    assert stat.S_IMODE((shared / "failures.log").stat().st_mode) == 0o660


def test_an_existing_file_keeps_its_mode(tmp_path):
    log = tmp_path / "failures.log"
    log.write_text("")
    log.chmod(0o600)
    log_failure("x", str(log))
    assert stat.S_IMODE(log.stat().st_mode) == 0o600 and log.read_text().endswith(": x\n")


def test_stamped_in_the_rules_timezone_on_a_utc_machine(tmp_path):
    log = tmp_path / "failures.log"
    code = "import sys; from rpo_guard.failure_log import log_failure; log_failure('x', sys.argv[1])"
    subprocess.run([sys.executable, "-c", code, str(log)], env={**os.environ, "TZ": "UTC"}, check=True)
    m = re.match(r"(\S+) rpo-guard\[\d+\]: x$", log.read_text().strip())
    assert m, log.read_text()
    stamp = datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S%z")
    rome = datetime.now(ZoneInfo("Europe/Rome")).utcoffset()
    assert stamp.utcoffset() == rome and rome.total_seconds() in (3600, 7200)


def test_stamped_in_the_configured_timezone(tmp_path):
    """[rules] timezone set to another zone: the lines follow it once the configuration is loaded."""
    log, conf = tmp_path / "failures.log", tmp_path / "rpo-guard.conf"
    conf.write_text(f"[paths]\ndata_dir = {tmp_path}\nlog_file = {log}\n[rules]\ntimezone = Asia/Tokyo\n")
    code = ("import sys; from rpo_guard import config; from rpo_guard.failure_log import log_failure; "
            "log_failure('before', sys.argv[1]); cfg = config.load(sys.argv[2]); log_failure('after', cfg.log_file)")
    subprocess.run([sys.executable, "-c", code, str(log), str(conf)], env={**os.environ, "TZ": "UTC"}, check=True)
    stamps = [datetime.strptime(line.split()[0], "%Y-%m-%dT%H:%M:%S%z") for line in log.read_text().splitlines()]
    assert [s.utcoffset().total_seconds() for s in stamps] == [
        datetime.now(ZoneInfo("Europe/Rome")).utcoffset().total_seconds(), 9 * 3600]
