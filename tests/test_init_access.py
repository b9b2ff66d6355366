"""`rpo-guard init` run as root: the databases go to the data folder's owner, and init says
whether Asterisk's user can read the register and append to the audit log, which is then
checked against what that account can really do (stdlib sqlite3 run as it with setpriv).

`nobody` plays Asterisk's user (its group is nogroup), `daemon` the data's owner.
"""
from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

SYSTEM_PY = "/usr/bin/python3"
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv") or not os.access(SYSTEM_PY, os.X_OK),
    reason="needs root (chown, another account), setpriv and /usr/bin/python3")

READ_REGISTER = ("import sqlite3, sys; c = sqlite3.connect('file:' + sys.argv[1] + '/rpo.db?mode=ro', uri=True); "
                 "print(c.execute('SELECT COUNT(*) FROM batches').fetchone()[0])")
APPEND_AUDIT = ("import sqlite3, sys; c = sqlite3.connect(sys.argv[1] + '/audit.db', isolation_level=None); "
                "v = c.execute('PRAGMA user_version').fetchone()[0]; c.execute('BEGIN IMMEDIATE'); "
                "c.execute(f'PRAGMA user_version = {v}'); c.execute('ROLLBACK'); print('ok')")  # a write, undone


@pytest.fixture
def top():
    d = Path(tempfile.mkdtemp(prefix="rpo-init-", dir="/tmp"))  # pytest's tmp_path sits in a 0700 folder
    d.chmod(0o755)
    yield d
    shutil.rmtree(d)


def init(conf: Path, *args):
    return subprocess.run([str(Path(sys.executable).parent / "rpo-guard"), "--config", str(conf), "init", *args],
                          capture_output=True, text=True, timeout=60)


def as_nobody(code: str, data: Path):
    nobody = pwd.getpwnam("nobody")
    return subprocess.run(["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}",
                           f"--groups={nobody.pw_gid}", "--", SYSTEM_PY, "-c", code, str(data)],
                          capture_output=True, text=True, timeout=60)


def test_without_a_group_init_says_asterisks_user_cannot_and_it_cannot(top):
    data = top / "data"
    conf = top / "rpo-guard.conf"
    conf.write_text(f"[paths]\ndata_dir = {data}\n")
    r = init(conf, "--asterisk-user", "nobody")
    assert r.returncode == 0, r.stderr
    assert f"nobody cannot enter {data}" in r.stderr and "root:root 0750" in r.stderr
    assert "every call the AGI makes as nobody would be refused" in r.stderr
    assert "can read the register" not in r.stdout
    assert as_nobody(READ_REGISTER, data).returncode != 0
    assert as_nobody(APPEND_AUDIT, data).returncode != 0


def test_with_a_group_root_init_gives_the_databases_to_the_folder_owner(top):
    data = top / "data"
    data.mkdir()
    daemon = pwd.getpwnam("daemon").pw_uid
    nogroup = grp.getgrnam("nogroup").gr_gid
    os.chown(data, daemon, nogroup)
    data.chmod(0o2770)
    conf = top / "rpo-guard.conf"
    conf.write_text(f"[paths]\ndata_dir = {data}\n[store]\ngroup = nogroup\n")
    r = init(conf, "--asterisk-user", "nobody")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert "nobody can read the register and append to the audit log" in r.stdout
    for name in ("rpo.db", "audit.db"):
        st = os.stat(data / name)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (daemon, nogroup, 0o660), name
    read = as_nobody(READ_REGISTER, data)
    assert read.returncode == 0 and read.stdout.strip() == "0", read.stderr
    append = as_nobody(APPEND_AUDIT, data)
    assert append.returncode == 0 and append.stdout.strip() == "ok", append.stderr


def test_a_file_asterisks_user_cannot_write_is_named(top):
    data = top / "data"
    conf = top / "rpo-guard.conf"
    conf.write_text(f"[paths]\ndata_dir = {data}\n[store]\ngroup = nogroup\n")
    assert init(conf).returncode == 0
    (data / "audit.db").chmod(0o640)  # someone "tightened" it
    r = init(conf, "--asterisk-user", "nobody")
    assert f"nobody cannot append to the audit log: {data / 'audit.db'} is root:nogroup 0640" in r.stderr
    assert as_nobody(APPEND_AUDIT, data).returncode != 0
    assert as_nobody(READ_REGISTER, data).returncode == 0


def test_unknown_asterisk_user_is_a_usage_error(top):
    conf = top / "rpo-guard.conf"
    conf.write_text(f"[paths]\ndata_dir = {top / 'data'}\n")
    r = init(conf, "--asterisk-user", "no_such_user_here")
    assert r.returncode == 2 and "no such user" in r.stderr and "Traceback" not in r.stderr
