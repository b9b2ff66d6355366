"""Fault injection, end to end through the Asterisk peer: every fault ends in a block.

Each case runs the real AGI; the outcome must be RPO_RESULT=BLOCK, or an
AGISTATUS that the shipped dialplan treats as a block, with the reason
recorded in the audit log or the failure log. Never an allow.
"""
import os
import resource
import sqlite3
import subprocess
import threading

import pytest

from conftest import agi_path
from rpo_guard.harness import Channel, run_process_agi

needs_root = pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/usr/bin/setpriv"),
                                reason="dropping file-permission overrides needs root and setpriv")


def without_dac_override(env, tmp_path):
    """A wrapper that runs the AGI as root without CAP_DAC_OVERRIDE/READ_SEARCH:
    file permissions then apply to it as they do to the asterisk user."""
    wrapper = tmp_path / "agi-no-dac.sh"
    wrapper.write_text("#!/bin/sh\nexec /usr/bin/setpriv --bounding-set -dac_override,-dac_read_search "
                       f"--inh-caps -dac_override,-dac_read_search -- {agi_path()} \"$@\"\n")
    wrapper.chmod(0o755)
    return str(wrapper)


def call(env, script=None, **kw):
    return run_process_agi(script or agi_path(), ["3331234567", "B"], Channel(extension="3331234567"),
                           env=env.agi_env, **kw)


@pytest.fixture
def data(env):
    env.init()
    env.consult([("3331234567", "no")])
    s = call(env)
    assert (s.result, s.reason) == ("ALLOW", "not_registered")  # the data allows: any block below is the fault's
    return env


def assert_blocked(s, env, text):
    assert not s.dialplan_allows
    assert s.result != "ALLOW"
    assert b"Traceback" not in s.stderr
    assert text in env.failures.read_text()


def test_config_missing(data, tmp_path):
    s = run_process_agi(agi_path(), ["3331234567", "B"], Channel(),
                        env={"RPO_GUARD_CONFIG": str(tmp_path / "missing.conf")})
    assert (s.agistatus, s.result, s.reason) == ("SUCCESS", "BLOCK", "error")


def test_register_locked_longer_than_the_deadline(data):
    """A writer holding an exclusive lock (WAL readers are never blocked by an
    ordinary writer; exclusive locking mode, or a file switched back to a
    rollback journal by hand, does block them)."""
    import gc
    gc.collect()  # close the importers' connections: exclusive mode needs the file to itself
    holder = sqlite3.connect(data.cfg.register_db, isolation_level=None)
    holder.execute("PRAGMA locking_mode = EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("UPDATE batches SET rows = rows")
    try:
        s = call(data)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert (s.result, s.reason) == ("BLOCK", "error")
    assert_blocked(s, data, "locked")
    assert [r["reason"] for r in data.audit_rows()][-1] == "error"


def test_audit_disk_full(data):
    """A file-size limit at the audit log's current size: SQLite sees a full disk."""
    size = max(os.path.getsize(data.cfg.audit_db), 1)

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    wal = data.cfg.audit_db + "-wal"
    if os.path.exists(wal):
        sqlite3.connect(data.cfg.audit_db).execute("PRAGMA wal_checkpoint(TRUNCATE)").close()
    s = call(data, preexec_fn=limit)
    assert (s.result, s.reason) == ("BLOCK", "error")
    assert_blocked(s, data, "audit log unwritable")


@needs_root
def test_register_unreadable(data, tmp_path):
    wrapper = without_dac_override(data, tmp_path)
    assert call(data, script=wrapper).result == "ALLOW"  # the wrapper itself changes nothing
    os.chmod(data.cfg.register_db, 0o000)
    s = call(data, script=wrapper)
    assert (s.agistatus, s.result, s.reason) == ("SUCCESS", "BLOCK", "error")
    assert_blocked(s, data, "rpo.db")


@needs_root
def test_config_unreadable(data, tmp_path):
    """Not even the config can be read: the failure goes to syslog; still a block."""
    os.chmod(data.conf, 0o000)
    s = call(data, script=without_dac_override(data, tmp_path))
    assert (s.agistatus, s.result, s.reason) == ("SUCCESS", "BLOCK", "error")


def test_agi_killed_mid_call(data):
    holder = sqlite3.connect(data.cfg.audit_db, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    result = {}

    def run():
        result["s"] = call(data)
    t = threading.Thread(target=run)
    t.start()
    import time
    deadline = time.time() + 10
    pids = []
    while time.time() < deadline and not pids:
        out = subprocess.run(["pgrep", "-P", str(os.getpid()), "-f", r"rpo(-guard-agi|_guard\.agi) 3331234567"], capture_output=True, text=True)
        pids = [int(p) for p in out.stdout.split()]
        time.sleep(0.05)
    for pid in pids:
        os.kill(pid, 9)
    t.join(30)
    holder.execute("ROLLBACK")
    holder.close()
    s = result["s"]
    assert pids and s.agistatus == "FAILURE" and s.exit_code == -9
    assert not s.dialplan_allows


def test_fastagi_server_hung():
    """A server that accepts and never answers: Asterisk waits (it has no FastAGI
    read timeout, transcript 13 waited 3 s) until the caller gives up; the call is
    never dialed, and the dialplan sees HANGUP."""
    import socket as so

    from rpo_guard.harness import run_fastagi
    srv = so.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]
    held = []
    t = threading.Thread(target=lambda: held.append(srv.accept()), daemon=True)
    t.start()
    try:
        s = run_fastagi("127.0.0.1", port, "rpo_guard", ["3331234567", "B"], Channel(), hangup_after=0.5, timeout=2)
    finally:
        for conn, _addr in held:
            conn.close()
        srv.close()
    assert s.agistatus in ("HANGUP", "TIMEOUT")
    assert not s.dialplan_allows and s.result == ""
