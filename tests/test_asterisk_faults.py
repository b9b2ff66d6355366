"""Every fault through a real Asterisk: the call is never dialed, the reason is on the channel.

Process AGI: script missing, not executable, crashing (Python cannot start; killed mid-check);
register missing, corrupt, unreadable; audit log unwritable; configuration missing, invalid.
FastAGI: server down, hung, killed mid-call; register missing, corrupt; audit log unwritable.
Both: a stale RPO_RESULT=ALLOW already on the channel; the caller hanging up in mid-check
(the attempt is recorded all the same).

Asterisk runs as root here, and root ignores file modes: an unreadable file is read by an AGI
started without CAP_DAC_OVERRIDE (setpriv), an unwritable one is made immutable (chattr +i).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from contextlib import contextmanager

import pytest

from asterisk_calls import assert_refused, audit_row, place, standard_dialplan
from conftest import Env, agi_path
from fastagi_support import Server

pytestmark = pytest.mark.asterisk

FREE = "0612345678"
ROME_LINE = "0612340000"


@pytest.fixture
def data(tmp_path):
    """A register in which FREE is allowed: any block below is the fault's."""
    env = Env(tmp_path)
    env.init()
    env.consult([(FREE, "non iscritto")])
    return env


def fastagi_url(port: int) -> str:
    return f"agi://127.0.0.1:{port}/rpo_guard"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(sandbox, front, env, config=None, variables=None, dialed=FREE, timeout=30):
    c = place(sandbox, front, dialed, "Energia Uno", config or env.conf, variables=variables, callerid=ROME_LINE)
    return c, sandbox.wait_for(c, timeout=timeout)


def script(tmp_path, name, body, mode=0o755):
    p = tmp_path / name
    p.write_text(body)
    p.chmod(mode)
    return str(p)


def without_dac_override(tmp_path, target: str) -> str:
    """An AGI wrapper that drops root's file-permission overrides: modes apply to it."""
    return script(tmp_path, "agi-no-dac.sh",
                  "#!/bin/sh\nexec /usr/bin/setpriv --bounding-set -dac_override,-dac_read_search "
                  f"--inh-caps -dac_override,-dac_read_search -- {target} \"$@\"\n")


needs_setpriv = pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/usr/bin/setpriv"),
                                   reason="dropping file-permission overrides needs root and setpriv")
needs_chattr = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("chattr"),
                                  reason="making a file immutable needs root and chattr")


@contextmanager
def immutable(path):
    subprocess.run(["chattr", "+i", str(path)], check=True)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def baseline(sandbox, front, env):
    """The same call without the fault is allowed (so the block below is the fault's)."""
    c, outcome = call(sandbox, front, env)
    assert (outcome["RPO_RESULT"], outcome["RPO_REASON"]) == ("ALLOW", "not_registered"), outcome
    assert sandbox.sink_hits(c) == [FREE]


# ---------------------------------------------------------------- process AGI: the script itself

@pytest.mark.parametrize("case", ["missing", "not_executable", "python_cannot_start"])
def test_agi_script_faults(asterisk_sandbox, data, tmp_path, case):
    if case == "missing":
        agi, status = str(tmp_path / "no-such-agi"), "NOTFOUND"
    elif case == "not_executable":
        agi, status = script(tmp_path, "agi-644", f"#!/bin/sh\nexec {agi_path()} \"$@\"\n", 0o644), "FAILURE"
    else:  # the installed script runs, its interpreter dies at start-up
        agi, status = script(tmp_path, "agi-broken", f"#!/bin/sh\nPYTHONHOME=/nonexistent exec {agi_path()} \"$@\"\n"), \
            "FAILURE"
    asterisk_sandbox.load_dialplan(standard_dialplan(agi=agi))
    c, outcome = call(asterisk_sandbox, "agi", data)
    assert (outcome["AGISTATUS"], outcome["RPO_RESULT"], outcome["RPO_REASON"]) == \
           (status, "BLOCK", f"agi_{status}"), outcome
    assert_refused(asterisk_sandbox, c, outcome)
    assert outcome["HANGUPCAUSE"] == "21"


@contextmanager
def audit_locked(env):
    """Another writer holds audit.db: the AGI waits for it (up to audit_busy_timeout_ms)."""
    holder = sqlite3.connect(env.cfg.audit_db, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def wait_for_agi(sandbox, number: str, timeout: float = 20) -> list[int]:
    """The AGI processes for ``number`` that this sandbox's Asterisk started (its children only)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        out = subprocess.run(["pgrep", "-P", str(sandbox.proc.pid), "-f", rf"rpo(-guard-agi|_guard\.agi) {number}"],
                             capture_output=True, text=True)
        pids = [int(p) for p in out.stdout.split()]
        if pids:
            return pids
        time.sleep(0.02)
    raise AssertionError(f"no AGI for {number} started")


def test_agi_killed_mid_check(asterisk_sandbox, data, tmp_path):
    data.write_config("[store]\naudit_busy_timeout_ms = 20000\n")
    asterisk_sandbox.load_dialplan(standard_dialplan(agi=agi_path()))
    with audit_locked(data):
        c = place(asterisk_sandbox, "agi", FREE, "Energia Uno", data.conf, callerid=ROME_LINE)
        for pid in wait_for_agi(asterisk_sandbox, FREE):
            os.kill(pid, signal.SIGKILL)
        outcome = asterisk_sandbox.wait_for(c)
    assert (outcome["AGISTATUS"], outcome["RPO_RESULT"], outcome["RPO_REASON"]) == \
           ("FAILURE", "BLOCK", "agi_FAILURE"), outcome
    assert_refused(asterisk_sandbox, c, outcome)


# ---------------------------------------------------------------- process AGI: data and configuration

def break_register(env, how, tmp_path):
    db = env.cfg.register_db
    for suffix in ("-wal", "-shm"):
        if os.path.exists(db + suffix):
            os.remove(db + suffix)
    if how == "missing":
        os.remove(db)
    elif how == "corrupt":
        with open(db, "r+b") as fh:
            fh.write(b"this is not an SQLite database" * 200)


@pytest.mark.parametrize("how", ["missing", "corrupt"])
def test_agi_register_faults(asterisk_sandbox, data, tmp_path, how):
    asterisk_sandbox.load_dialplan(standard_dialplan(agi=agi_path()))
    baseline(asterisk_sandbox, "agi", data)
    import gc
    gc.collect()
    break_register(data, how, tmp_path)
    c, outcome = call(asterisk_sandbox, "agi", data)
    assert (outcome["AGISTATUS"], outcome["RPO_RESULT"], outcome["RPO_REASON"]) == ("SUCCESS", "BLOCK", "error")
    assert_refused(asterisk_sandbox, c, outcome)
    row = audit_row(data, outcome["RPO_AUDIT_ID"])
    assert (row["decision"], row["reason"]) == ("BLOCK", "error") and "rpo.db" in data.failures.read_text()


@needs_setpriv
def test_agi_register_unreadable(asterisk_sandbox, data, tmp_path):
    asterisk_sandbox.load_dialplan(standard_dialplan(agi=without_dac_override(tmp_path, agi_path())))
    baseline(asterisk_sandbox, "agi", data)
    os.chmod(data.cfg.register_db, 0o000)
    c, outcome = call(asterisk_sandbox, "agi", data)
    assert (outcome["AGISTATUS"], outcome["RPO_RESULT"], outcome["RPO_REASON"]) == ("SUCCESS", "BLOCK", "error")
    assert_refused(asterisk_sandbox, c, outcome)
    assert audit_row(data, outcome["RPO_AUDIT_ID"])["reason"] == "error"


@needs_chattr
@pytest.mark.parametrize("front", ["agi", "fastagi"])
def test_audit_log_unwritable(asterisk_sandbox, data, front):
    server = Server(data.conf) if front == "fastagi" else None
    try:
        asterisk_sandbox.load_dialplan(standard_dialplan(agi=agi_path(),
                                                         fastagi=fastagi_url(server.port) if server else None))
        baseline(asterisk_sandbox, front, data)
        sqlite3.connect(data.cfg.audit_db).execute("PRAGMA wal_checkpoint(TRUNCATE)").close()
        rows_before = len(data.audit_rows())
        with immutable(data.cfg.audit_db):
            if server:
                server.send(signal.SIGHUP)  # reopen the audit log (as after a log rotation)
                time.sleep(0.5)
            c, outcome = call(asterisk_sandbox, front, data)
        assert (outcome["RPO_RESULT"], outcome["RPO_REASON"]) == ("BLOCK", "error"), outcome
        assert outcome.get("RPO_AUDIT_ID", "") == ""
        assert_refused(asterisk_sandbox, c, outcome)
        assert len(data.audit_rows()) == rows_before
        assert "audit" in data.failures.read_text()
    finally:
        if server:
            server.stop()


@pytest.mark.parametrize("how", ["missing", "invalid"])
def test_agi_configuration_faults(asterisk_sandbox, data, tmp_path, how):
    asterisk_sandbox.load_dialplan(standard_dialplan(agi=agi_path()))
    config = tmp_path / "nowhere.conf"
    if how == "invalid":
        config.write_text(data.conf.read_text() + "\n[rules]\nvalidity_days = -1\n")
    mark = asterisk_sandbox.log_mark()
    c, outcome = call(asterisk_sandbox, "agi", data, config=config)
    assert (outcome["AGISTATUS"], outcome["RPO_RESULT"], outcome["RPO_REASON"]) == ("SUCCESS", "BLOCK", "error")
    assert_refused(asterisk_sandbox, c, outcome)
    # no configuration, no log file, no syslog here: the failure is in Asterisk's own log
    assert "rpo-guard: call refused, configuration unusable" in asterisk_sandbox.log_since(mark)


# ---------------------------------------------------------------- FastAGI

def test_fastagi_server_down(asterisk_sandbox, data):
    asterisk_sandbox.load_dialplan(standard_dialplan(fastagi=fastagi_url(free_port())))
    c, outcome = call(asterisk_sandbox, "fastagi", data)
    assert (outcome["AGISTATUS"], outcome["RPO_RESULT"], outcome["GOSUB_RETVAL"]) == ("FAILURE", "BLOCK", "BLOCK")
    assert_refused(asterisk_sandbox, c, outcome)


@pytest.mark.parametrize("how", ["missing", "invalid"])
def test_fastagi_configuration_faults(data, tmp_path, how):
    """The server refuses to start (the dialplan then sees a server down, above)."""
    from fastagi_support import rpo_guard_bin
    config = tmp_path / "nowhere.conf"
    if how == "invalid":
        config.write_text(data.conf.read_text() + "\n[fastagi]\nlisten = nowhere\n")
    r = subprocess.run([rpo_guard_bin(), "--config", str(config), "serve", "--listen", "127.0.0.1:0"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and str(config) in r.stdout + r.stderr


def test_fastagi_server_hung(asterisk_sandbox, data):
    """A server that accepts and never answers holds the call, even after the caller hangs up
    (Asterisk has no FastAGI read timeout), until the connection closes; nothing is dialed.
    (The shipped systemd unit's watchdog restarts a server whose loop is stuck: tests/fastagi/test_watchdog.py.)"""
    listener = socket.create_server(("127.0.0.1", 0))
    held = []
    threading.Thread(target=lambda: held.append(listener.accept()), daemon=True).start()
    try:
        asterisk_sandbox.load_dialplan(standard_dialplan(fastagi=fastagi_url(listener.getsockname()[1])))
        c = place(asterisk_sandbox, "fastagi", FREE, "Energia Uno", data.conf, callerid=ROME_LINE)
        time.sleep(1.0)
        assert asterisk_sandbox.outcome(c) is None  # still waiting for the server
        asterisk_sandbox.hangup(c)
        time.sleep(1.0)
        assert asterisk_sandbox.outcome(c) is None  # still held: the channel waits for the server
        for conn, _ in held:
            conn.close()  # what a restart of the server does to its connections
        outcome = asterisk_sandbox.wait_for(c)
    finally:
        for conn, _ in held:
            conn.close()
        listener.close()
    assert_refused(asterisk_sandbox, c, outcome)


def test_fastagi_server_killed_mid_call(asterisk_sandbox, data):
    data.write_config("[store]\naudit_busy_timeout_ms = 20000\n[fastagi]\ndeadline_ms = 20000\n")
    server = Server(data.conf)
    try:
        asterisk_sandbox.load_dialplan(standard_dialplan(fastagi=fastagi_url(server.port)))
        with audit_locked(data):
            c = place(asterisk_sandbox, "fastagi", FREE, "Energia Uno", data.conf, callerid=ROME_LINE)
            time.sleep(1.0)
            server.stop(signal.SIGKILL)
            outcome = asterisk_sandbox.wait_for(c)
    finally:
        server.stop()
    assert (outcome["RPO_RESULT"], outcome["GOSUB_RETVAL"]) == ("BLOCK", "BLOCK"), outcome
    assert_refused(asterisk_sandbox, c, outcome)


@pytest.mark.parametrize("how", ["missing", "corrupt"])
def test_fastagi_register_faults(asterisk_sandbox, data, tmp_path, how):
    """The server starts on a register that is missing or corrupt. (A register replaced or
    removed under a running server is not a fault: it keeps answering from the file it has
    open until the new one can be opened.)"""
    import gc
    gc.collect()
    break_register(data, how, tmp_path)
    server = Server(data.conf)
    try:
        asterisk_sandbox.load_dialplan(standard_dialplan(fastagi=fastagi_url(server.port)))
        c, outcome = call(asterisk_sandbox, "fastagi", data)
    finally:
        server.stop()
    assert (outcome["AGISTATUS"], outcome["RPO_RESULT"], outcome["RPO_REASON"]) == ("SUCCESS", "BLOCK", "error")
    assert_refused(asterisk_sandbox, c, outcome)
    assert audit_row(data, outcome["RPO_AUDIT_ID"])["reason"] == "error"


# ---------------------------------------------------------------- both front ends

@pytest.mark.parametrize("front", ["agi", "fastagi"])
def test_stale_allow_on_the_channel_never_allows(asterisk_sandbox, data, tmp_path, front):
    """RPO_RESULT=ALLOW left by an earlier check, and the check now cannot run at all."""
    asterisk_sandbox.load_dialplan(standard_dialplan(agi=str(tmp_path / "no-such-agi"),
                                                     fastagi=fastagi_url(free_port())))
    c, outcome = call(asterisk_sandbox, front, data,
                      variables={"RPO_RESULT": "ALLOW", "RPO_REASON": "not_registered", "RPO_AUDIT_ID": "1"})
    assert outcome["RPO_RESULT"] == "BLOCK" and outcome["RPO_AUDIT_ID"] == ""
    assert_refused(asterisk_sandbox, c, outcome)


@pytest.mark.parametrize("front", ["agi", "fastagi"])
def test_caller_hangs_up_mid_check(asterisk_sandbox, data, front):
    """The caller hangs up while the check waits for the audit log: nothing is dialed, the
    attempt is recorded once the log is free, and what the channel shows at hangup is not
    an ALLOW (the subroutine never returned)."""
    data.write_config("[store]\naudit_busy_timeout_ms = 20000\n[fastagi]\ndeadline_ms = 20000\n")
    server = Server(data.conf) if front == "fastagi" else None
    try:
        asterisk_sandbox.load_dialplan(standard_dialplan(agi=agi_path(),
                                                         fastagi=fastagi_url(server.port) if server else None))
        rows_before = len(data.audit_rows())
        with audit_locked(data):
            c = place(asterisk_sandbox, front, FREE, "Energia Uno", data.conf, callerid=ROME_LINE)
            if front == "agi":
                wait_for_agi(asterisk_sandbox, FREE)
            time.sleep(0.5)
            asterisk_sandbox.hangup(c)
            time.sleep(0.5)
        outcome = asterisk_sandbox.wait_for(c)
    finally:
        if server:
            server.stop()
    assert_refused(asterisk_sandbox, c, outcome)
    rows = data.audit_rows()[rows_before:]
    assert [(r["dialed"], r["decision"], r["via"]) for r in rows] == [(FREE, "ALLOW", front)]
    assert (outcome["RPO_RESULT"], outcome["RPO_REASON"]) == ("BLOCK", "agi_HANGUP"), outcome
