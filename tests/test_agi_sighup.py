"""A hangup never kills the process AGI unrecorded, at any moment of its life.

Asterisk sends SIGHUP when the caller hangs up (unless the dialplan sets AGISIGHUP=no, as
the shipped subroutine does). The installed ``rpo-guard-agi`` is a tiny /bin/sh program that
ignores SIGHUP before it starts Python; agi.py then handles it itself. Before, Python's
default action killed the AGI during the 17-25 ms Python needs to start: no audit row, no
failure-log line.
"""
from __future__ import annotations

import pytest

from conftest import agi_path
from rpo_guard.harness import Channel, run_process_agi

FREE = "0612345678"


@pytest.fixture
def data(env):
    env.init()
    env.consult([(FREE, "non iscritto")])
    return env


def call(env, **kw):
    return run_process_agi(agi_path(), [FREE, "B"], Channel(extension=FREE), env=env.agi_env, **kw)


def test_sighup_while_python_is_still_starting(data, tmp_path):
    """SIGHUP arrives while Python is still starting up (held there on purpose by a
    sitecustomize that sleeps): the AGI survives it and records the attempt."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import time\ntime.sleep(0.6)\n")
    env = dict(data.agi_env, PYTHONPATH=str(site))
    s = run_process_agi(agi_path(), [FREE, "B"], Channel(extension=FREE), env=env, hangup_after=0.2)
    assert s.sighup_sent and s.exit_code == 0, (s.exit_code, s.stderr)
    rows = data.audit_rows()
    assert [(r["dialed"], r["decision"]) for r in rows] == [(FREE, "ALLOW")]


@pytest.mark.parametrize("delay_ms", [3, 6, 10, 15, 20, 30, 50, 100])
def test_sighup_at_several_moments_after_launch(data, delay_ms):
    s = call(data, hangup_after=delay_ms / 1000)
    assert s.exit_code == 0, (delay_ms, s.exit_code, s.stderr)
    rows = data.audit_rows()
    assert len(rows) == 1 and rows[0]["dialed"] == FREE
    if delay_ms <= 20:  # Python alone needs longer than that to start: the AGI is always still running
        assert s.sighup_sent
    # the harness saw the caller gone (the attempt is recorded all the same); when the check was
    # over before the hangup came (a process AGI takes some 60-130 ms in all), no SIGHUP was sent
    # and the channel ends as the moment of the hangup says (it may still fall before the harness
    # noticed the end)
    if s.sighup_sent:
        assert s.agistatus == "HANGUP", (delay_ms, s.transcript)
    else:
        assert s.agistatus in ("SUCCESS", "HANGUP"), (delay_ms, s.transcript)
