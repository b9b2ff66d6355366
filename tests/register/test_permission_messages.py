"""Permission problems are reported as permission problems: `check` and the AGI's failure log
say "permission denied" and name the folder or file in the way, not "not found" nor a bare
"unwritable". The commands run as root without CAP_DAC_OVERRIDE/READ_SEARCH (setpriv), so
file permissions apply to them as to Asterisk's user."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import agi_path
from rpo_guard.harness import Channel, run_process_agi

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/usr/bin/setpriv"),
                                reason="dropping file-permission overrides needs root and setpriv")
NO_DAC = ["/usr/bin/setpriv", "--bounding-set", "-dac_override,-dac_read_search",
          "--inh-caps", "-dac_override,-dac_read_search", "--"]


@pytest.fixture
def locked(env):
    env.init()
    env.consult([("3331234567", "no")])
    os.chown(env.data, 1, 1)  # daemon's, 0750: root without the overrides cannot enter
    env.data.chmod(0o750)
    yield env
    env.data.chmod(0o750)
    os.chown(env.data, 0, 0)


def test_check_says_permission_denied(locked):
    r = subprocess.run([*NO_DAC, str(Path(sys.executable).parent / "rpo-guard"), "--config", str(locked.conf),
                        "check", "3331234567"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "permission denied" in r.stdout and str(locked.data) in r.stdout and "0750" in r.stdout, r.stdout
    assert "not found" not in r.stdout


def test_a_missing_register_is_still_not_found(env):
    env.data.mkdir()
    r = subprocess.run([str(Path(sys.executable).parent / "rpo-guard"), "--config", str(env.conf),
                        "check", "3331234567"], capture_output=True, text=True, timeout=60)
    assert "register database not found" in r.stdout and "permission" not in r.stdout


def test_failure_log_names_the_permission_problem(locked, tmp_path):
    wrapper = tmp_path / "agi-no-dac.sh"
    wrapper.write_text("#!/bin/sh\nexec " + " ".join(NO_DAC) + f" {agi_path()} \"$@\"\n")
    wrapper.chmod(0o755)
    s = run_process_agi(str(wrapper), ["3331234567", "B"], Channel(extension="3331234567"), env=locked.agi_env)
    assert (s.result, s.reason) == ("BLOCK", "error")
    log = locked.failures.read_text()
    assert f"permission denied: {locked.data} is daemon:daemon 0750" in log, log
    assert "audit log" in log and "unwritable (permission denied" in log, log


def test_status_says_permission_denied(locked):
    r = subprocess.run([*NO_DAC, str(Path(sys.executable).parent / "rpo-guard"), "--config", str(locked.conf),
                        "status"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 3  # UNKNOWN for monitoring
    assert "UNKNOWN:" in r.stderr and "permission denied" in r.stderr and "not found" not in r.stderr, r.stderr
