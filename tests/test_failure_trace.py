"""A failure always leaves a trace an admin can find, syslog or not.

With no configuration to say where failures go ([paths] log_file), a failure line goes to
syslog when /dev/log is there, and always to the fallback file (/var/log/rpo-guard/failures.log,
$RPO_GUARD_FAILURE_LOG overrides it) and to stderr (the journal under systemd). The process
AGI also sends it to Asterisk's own log (a VERBOSE command) while the AGI stream works.
"""
from __future__ import annotations

import os

import pytest

from conftest import agi_path
from rpo_guard.harness import Channel, run_process_agi


@pytest.mark.parametrize("how", ["missing", "invalid"])
def test_configuration_failure_leaves_a_trace_without_syslog(tmp_path, how):
    conf = tmp_path / "rpo-guard.conf"
    if how == "invalid":
        conf.write_text("[rules]\nvalidity_days = -1\n")
    fallback = tmp_path / "fallback" / "failures.log"
    fallback.parent.mkdir()
    env = {"RPO_GUARD_CONFIG": str(conf), "RPO_GUARD_FAILURE_LOG": str(fallback)}
    s = run_process_agi(agi_path(), ["0612345678", "B"], Channel(), env=env)
    assert (s.agistatus, s.result, s.reason) == ("SUCCESS", "BLOCK", "error")
    text = fallback.read_text()
    assert "configuration" in text and str(conf) in text
    assert b"configuration" in s.stderr and b"Traceback" not in s.stderr
    verbose = [t for t in s.transcript if "Rx << VERBOSE" in t]
    assert verbose and "configuration" in verbose[0]


def test_failure_log_reports_where_it_wrote(tmp_path, monkeypatch, capsys):
    from rpo_guard.failure_log import log_failure
    fallback = tmp_path / "failures.log"
    monkeypatch.setenv("RPO_GUARD_FAILURE_LOG", str(fallback))
    where = log_failure("test failure one")
    assert str(fallback) in where and "stderr" in where
    assert ("syslog" in where) == os.path.exists("/dev/log")
    assert "test failure one" in fallback.read_text() and "test failure one" in capsys.readouterr().err
    configured = tmp_path / "configured.log"
    assert log_failure("test failure two", str(configured)) == [str(configured)]
    assert "test failure two" in configured.read_text() and "test failure two" not in fallback.read_text()


def test_unwritable_configured_log_falls_back(tmp_path, monkeypatch):
    from rpo_guard.failure_log import log_failure
    fallback = tmp_path / "failures.log"
    monkeypatch.setenv("RPO_GUARD_FAILURE_LOG", str(fallback))
    where = log_failure("test failure three", str(tmp_path / "no-such-dir" / "x.log"))
    assert str(fallback) in where and "test failure three" in fallback.read_text()
