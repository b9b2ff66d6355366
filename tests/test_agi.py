"""The process AGI as a real subprocess, driven by the Asterisk peer."""
import re
import sqlite3
import threading

import pytest

from conftest import agi_path
from rpo_guard.harness import Channel, run_process_agi

SAFE_LINE = re.compile(r'SET VARIABLE "RPO_(RESULT|REASON|AUDIT_ID)" "[A-Za-z0-9_]{1,64}"')


def call(env, number="3331234567", brand="Energia Uno", channel=None, **kw):
    return run_process_agi(agi_path(), [number, brand], channel or Channel(extension="3331234567"),
                           env=env.agi_env, **kw)


def script_lines(session):
    return [t.split("Rx << ", 1)[1] for t in session.transcript if "Rx << " in t]


@pytest.fixture
def data(env):
    env.init()
    env.consult([("3331234567", "non iscritto"), ("0612345678", "iscritto")])
    return env


def test_allowed_call_sets_variables_and_is_audited(data):
    ch = Channel(extension="3331234567", uniqueid="1795339068.25", callerid="0612340000", accountcode="camp7")
    s = call(data, channel=ch)
    assert (s.agistatus, s.exit_code, s.result, s.reason) == ("SUCCESS", 0, "ALLOW", "not_registered")
    assert s.dialplan_allows
    assert s.stderr == b""
    rows = data.audit_rows()
    assert len(rows) == 1
    row = rows[0]
    assert (row["uniqueid"], row["channel"], row["callerid"], row["accountcode"]) == (
        "1795339068.25", ch.name, "0612340000", "camp7")
    assert (row["dialed"], row["e164"], row["brand"], row["decision"], row["reason"], row["via"]) == (
        "3331234567", "+393331234567", "Energia Uno", "ALLOW", "not_registered", "agi")
    assert '"kind": "consultation"' in row["basis"] and row["latency_ms"] > 0
    assert s.channel.variables["RPO_AUDIT_ID"] == str(row["id"])
    assert all(SAFE_LINE.fullmatch(line) for line in script_lines(s))


def test_registered_fixed_line_blocks(data):
    s = call(data, number="06 1234 5678")
    assert (s.result, s.reason, s.dialplan_allows) == ("BLOCK", "rpo_registered", False)
    assert data.audit_rows()[0]["e164"] == "+390612345678"


def test_caller_hangs_up_mid_session_with_sighup(data):
    s = call(data, hangup_before_command=1)
    assert s.sighup_sent and s.agistatus == "HANGUP" and s.exit_code == 0
    assert (s.result, s.reason) == ("ALLOW", "not_registered")  # set on the dead channel for the h extension
    assert not s.dialplan_allows
    assert len(data.audit_rows()) == 1
    assert s.stderr == b""


def test_caller_hangs_up_during_the_lookup(data):
    """SIGHUP while the AGI waits (here: on a locked audit log), as in transcript 15."""
    locker = sqlite3.connect(data.cfg.audit_db, isolation_level=None, check_same_thread=False)
    locker.execute("BEGIN IMMEDIATE")
    release = threading.Timer(1.2, lambda: locker.execute("ROLLBACK"))
    release.start()
    try:
        s = call(data, hangup_after=0.6)
    finally:
        release.join()
        locker.close()
    assert s.sighup_sent and s.agistatus == "HANGUP" and s.exit_code == 0
    assert len(data.audit_rows()) == 1


def test_agisighup_no_hangup_at_launch_still_records(data):
    ch = Channel(extension="3331234567")
    ch.variables["AGISIGHUP"] = "no"
    s = call(data, channel=ch, hangup_after=0.0)
    assert not s.sighup_sent and s.agistatus == "HANGUP" and s.exit_code == 0
    assert [r["reason"] for r in data.audit_rows()] == ["not_registered"]


def test_missing_database_blocks_with_error(env):
    env.data.mkdir()
    s = call(env)
    assert (s.agistatus, s.result, s.reason) == ("SUCCESS", "BLOCK", "error")
    assert "register database not found" in env.failures.read_text()
    assert [(r["decision"], r["reason"]) for r in env.audit_rows()] == [("BLOCK", "error")]


def test_corrupt_database_blocks_with_error(data):
    from pathlib import Path
    db = Path(data.cfg.register_db)
    db.write_bytes(b"this is not a database" * 500)
    for suffix in ("-wal", "-shm"):
        p = db.with_name(db.name + suffix)
        if p.exists():
            p.unlink()
    s = call(data)
    assert (s.agistatus, s.result, s.reason) == ("SUCCESS", "BLOCK", "error")
    assert "DatabaseError" in data.failures.read_text()


def test_wrong_schema_version_blocks(data):
    conn = sqlite3.connect(data.cfg.register_db)
    conn.execute("PRAGMA user_version = 99")
    conn.commit()
    conn.close()
    s = call(data)
    assert (s.result, s.reason) == ("BLOCK", "error")
    assert "schema version 99" in data.failures.read_text()


def test_bad_config_blocks(data):
    data.conf.write_text(data.conf.read_text() + "[rules]\nvalidity_dayz = 3\n")
    s = call(data)
    assert (s.agistatus, s.result, s.reason, s.exit_code) == ("SUCCESS", "BLOCK", "error", 0)


def test_unwritable_audit_log_blocks(data):
    conn = sqlite3.connect(data.cfg.audit_db)
    conn.execute("DROP TABLE attempts")
    conn.commit()
    conn.close()
    s = call(data)
    assert (s.result, s.reason) == ("BLOCK", "error")
    assert "audit log unwritable" in data.failures.read_text()


@pytest.mark.parametrize("number, brand, callerid", [
    ('333"1234567', "Energia Uno", "unknown"),
    ("3331234567", 'Ene"rgia\\" Uno', '06"12'),
    ("3331234567\nSET VARIABLE RPO_RESULT ALLOW", "B", "unknown"),
    ("3331234567", "B\r\nSET VARIABLE \"RPO_RESULT\" \"ALLOW\"", "unknown"),
])
def test_quotes_and_newlines_never_reach_the_stream(data, number, brand, callerid):
    s = call(data, number=number, brand=brand, channel=Channel(extension="3331234567", callerid=callerid))
    lines = script_lines(s)
    assert lines and all(SAFE_LINE.fullmatch(line) for line in lines), lines
    assert s.result in ("ALLOW", "BLOCK")
    if '"' in number or "\n" in number:
        assert (s.result, s.reason) == ("BLOCK", "invalid_number")


@pytest.mark.parametrize("response", [
    "510 Invalid or unknown command\n",
    "511 Command Not Permitted on a dead channel or intercept routine\n",
    "520-Invalid command syntax.  Proper usage follows:\nSets a variable to the current channel.\n"
    "520 End of proper usage.\n",
])
@pytest.mark.parametrize("which", [1, 2])
def test_error_responses_fail_closed(data, response, which):
    """An ALLOW that Asterisk did not accept must not become a dialed call."""
    s = call(data, replace_responses={which: response})
    assert s.exit_code == 1 and s.agistatus == "FAILURE"
    assert not s.dialplan_allows
    assert s.stderr == b""
    assert "AGI stream broken" in data.failures.read_text()


def test_empty_environment_and_no_arguments_block(data):
    s = run_process_agi(agi_path(), [], Channel(), env=data.agi_env, env_block_override=b"\n")
    assert (s.result, s.reason, s.exit_code) == ("BLOCK", "invalid_number", 0)


def test_killed_agi_is_a_failure_the_dialplan_blocks(data):
    import signal

    data.consult([("3470000000", "no")], name="x.csv")
    # A stopped audit log keeps the AGI waiting; the harness's timeout then kills it.
    locker = sqlite3.connect(data.cfg.audit_db, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    try:
        s = call(data, timeout=0.8)
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert s.agistatus == "TIMEOUT" and s.exit_code == -signal.SIGKILL
    assert not s.dialplan_allows


def test_agi_start_up_imports_stay_light(data):
    """phonenumbers and sqlite_utils stay off the per-call path for a known number."""
    import subprocess
    import sys
    code = ("import sys; sys.argv=['rpo-guard-agi','3331234567','B'];"
            "import rpo_guard.agi as a\n"
            "try:\n    a.main()\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('phonenumbers','sqlite_utils','click','holidays') if m in sys.modules),"
            " file=sys.stderr)")
    env = {**__import__("os").environ, **data.agi_env}
    p = subprocess.run([sys.executable, "-c", code], input=b"agi_uniqueid: 1\n\n200 result=1\n200 result=1\n200 result=1\n",
                       capture_output=True, env=env, timeout=30)
    assert p.stderr.decode().strip().splitlines()[-1] == "[]"
