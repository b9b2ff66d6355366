"""`rpo-guard simulate-call`: its rows are marked (via=simulate) and left out of the auditors'
counts, a hangup never loses the row (AGISIGHUP=no, as the shipped dialplan), and --at
decides as of another moment while the row keeps the real time."""
from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from conftest import today_rome

EXE = str(Path(sys.executable).parent / "rpo-guard")


def rpo(env, *args):
    return subprocess.run([EXE, "--config", str(env.conf), *args], capture_output=True, text=True, timeout=120)


def test_rows_are_marked_simulated_and_not_counted(env):
    env.init()
    env.consult([("0612345678", "non iscritto")], days_ago=1)
    r = rpo(env, "simulate-call", "0612345678", "--quiet")
    assert r.returncode == 0 and "RPO_RESULT=ALLOW RPO_REASON=not_registered" in r.stdout, r.stderr
    rows = env.audit_rows()
    assert len(rows) == 1 and rows[0]["via"] == "simulate"
    assert rows[0]["channel"].startswith("Local/0612345678@rpo-guard-simulate-")
    again = rpo(env, "simulate-call", "0612345678", "--quiet")
    assert again.returncode == 0
    assert env.audit_rows()[1]["uniqueid"] != rows[0]["uniqueid"]  # another process: another uniqueid
    summary = rpo(env, "audit", "summary")
    assert "total 0: 0 allowed, 0 refused" in summary.stdout
    assert "(2 simulated calls (`rpo-guard simulate-call`, via simulate) not counted" in summary.stdout
    listed = rpo(env, "audit", "list", "--json")
    assert listed.stdout.count('"via": "simulate"') == 2  # listed and exported all the same


def test_hangup_at_once_still_leaves_the_row(env):
    env.init()
    env.consult([("0612345678", "non iscritto")], days_ago=1)
    r = rpo(env, "simulate-call", "0612345678", "--hangup-after", "0")
    assert r.returncode == 1  # the caller is gone: nothing is dialed
    rows = env.audit_rows()
    assert len(rows) == 1 and (rows[0]["decision"], rows[0]["reason"]) == ("ALLOW", "not_registered"), r.stdout


def test_at_decides_as_of_that_moment_and_keeps_the_real_time(env):
    env.write_config(conduct="calling_hours = on\ncaller_id_check = off\n")
    env.init()
    env.consult([("0612345678", "non iscritto")], days_ago=1)
    today = today_rome()
    sunday = today + timedelta(days=(6 - today.weekday()) or 7)
    r = rpo(env, "simulate-call", "0612345678", "--quiet", "--at", f"{sunday.isoformat()}T11:00")
    assert "RPO_RESULT=BLOCK RPO_REASON=outside_calling_hours" in r.stdout, r.stdout + r.stderr
    row = env.audit_rows()[0]
    assert row["at"][:10] == today_rome().isoformat()  # recorded when it ran
    assert f"[simulated as of {sunday.isoformat()}T11:00:00+0" in row["detail"]
    bad = rpo(env, "simulate-call", "0612345678", "--at", "sunday")
    assert bad.returncode == 2 and "--at" in bad.stderr


def test_fastagi_simulated_call_is_marked_too(env):
    from fastagi_support import Server
    env.init()
    env.consult([("0612345678", "non iscritto")], days_ago=1)
    server = Server(env.conf)
    try:
        r = rpo(env, "simulate-call", "0612345678", "--quiet", "--fastagi", f"127.0.0.1:{server.port}")
        assert "RPO_RESULT=ALLOW RPO_REASON=not_registered" in r.stdout, r.stdout + r.stderr
        no_at = rpo(env, "simulate-call", "0612345678", "--fastagi", f"127.0.0.1:{server.port}",
                    "--at", "2026-12-06T11:00")
        assert no_at.returncode == 2 and "--at works with the process AGI only" in no_at.stderr
    finally:
        assert server.stop() == 0
    assert [row["via"] for row in env.audit_rows()] == ["simulate"]
