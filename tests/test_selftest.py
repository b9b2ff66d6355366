"""`rpo-guard selftest` against a real (sandboxed) Asterisk running the shipped dialplan."""
from __future__ import annotations

import sqlite3
import subprocess

import pytest

from asterisk_calls import globals_section, includes, standard_dialplan
from conftest import Env, agi_path
from fastagi_support import Server, rpo_guard_bin

pytestmark = pytest.mark.asterisk

FREE = "0612345678"


@pytest.fixture
def data(tmp_path):
    env = Env(tmp_path)
    env.init()
    env.consult([(FREE, "non iscritto"), ("3331234567", "iscritto")])
    return env


def selftest(sandbox, env, *args):
    binary, _, conf = sandbox.control_args()
    r = subprocess.run([rpo_guard_bin(), "--config", str(env.conf), "selftest", "--asterisk", binary,
                        "--asterisk-conf", conf, *args], capture_output=True, text=True, timeout=300)
    return r.returncode, r.stdout + r.stderr


def lines(out: str, level: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith(level)]


def test_selftest_passes_on_a_working_box(asterisk_sandbox, data):
    server = Server(data.conf)
    try:
        asterisk_sandbox.load_dialplan(standard_dialplan(agi=agi_path(),
                                                         fastagi=f"agi://127.0.0.1:{server.port}/rpo_guard"))
        asterisk_sandbox.set_env("RPO_GUARD_CONFIG", str(data.conf))
        code, out = selftest(asterisk_sandbox, data)
    finally:
        server.stop()
    assert code == 0, out
    for sub in ("rpo-guard-check", "rpo-guard-check-fastagi"):
        for what in ("refused call", "forced failure", "allowed call"):
            assert any(line.startswith(f"OK       {sub}: {what}") for line in out.splitlines()), (sub, what, out)
    assert not lines(out, "WARNING") and not lines(out, "FAILURE")
    rows = data.audit_rows()
    vias = {(r["via"], r["decision"], r["reason"]) for r in rows}
    assert vias == {("agi-selftest", "BLOCK", "invalid_number"), ("agi-selftest", "ALLOW", "not_registered"),
                    ("fastagi-selftest", "BLOCK", "invalid_number"), ("fastagi-selftest", "ALLOW", "not_registered")}
    # the auditor's summary leaves the test calls out
    from rpo_guard.audit.query import Filters, summary
    conn = sqlite3.connect(data.cfg.audit_db)
    assert summary(conn, Filters()) == []
    conn.close()
    # its contexts are gone
    for ctx in ("rpo-guard-selftest", "rpo-guard-selftest-sink", "rpo-guard-selftest-record"):
        assert f"Context '{ctx}'" not in asterisk_sandbox.cli(f"dialplan show {ctx}")


def test_selftest_fails_when_the_agi_is_not_executable(asterisk_sandbox, data, tmp_path):
    bad = tmp_path / "rpo-guard-agi"
    bad.write_text("#!/bin/sh\nexit 0\n")
    bad.chmod(0o644)
    asterisk_sandbox.load_dialplan(includes("rpo-guard.conf") + globals_section(agi=str(bad)))
    code, out = selftest(asterisk_sandbox, data)
    assert code == 2, out
    assert any("RPO_GUARD_AGI" in line and "not an executable file" in line for line in lines(out, "FAILURE"))


def test_selftest_fails_without_the_subroutine(asterisk_sandbox, data):
    asterisk_sandbox.load_dialplan("[nothing-here]\nexten => s,1,NoOp()\n")
    code, out = selftest(asterisk_sandbox, data)
    assert code == 2 and "is loaded" in out, out


def test_selftest_warns_when_no_call_can_be_allowed(asterisk_sandbox, tmp_path):
    env = Env(tmp_path)
    env.init()
    env.consult([("3331234567", "iscritto")])  # nothing the register allows
    asterisk_sandbox.load_dialplan(includes("rpo-guard.conf") + globals_section(agi=agi_path()))
    asterisk_sandbox.set_env("RPO_GUARD_CONFIG", str(env.conf))
    code, out = selftest(asterisk_sandbox, env)
    assert code == 1, out
    assert any("allowed call" in line and "not tried" in line for line in lines(out, "WARNING"))
    assert any("refused call" in line for line in lines(out, "OK"))
