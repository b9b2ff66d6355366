"""The command line: simulate-call, demo, imports, the do-not-contact list."""
import json
import subprocess
import sys
from datetime import timedelta

import pytest
from click.testing import CliRunner

from conftest import today_rome
from rpo_guard.cli.main import cli


def run(env, *args):
    return CliRunner().invoke(cli, ["--config", str(env.conf), *args])


@pytest.fixture
def data(env):
    env.init()
    env.consult([("3331234567", "non iscritto"), ("0612345678", "iscritto")])
    return env


def test_simulate_call_prints_the_session_and_the_result(data):
    r = run(data, "simulate-call", "06 1234 5678", "--brand", "Energia Uno", "--caller-id", "0612340000")
    assert r.exit_code == 1, r.output
    assert "AGI Tx >> agi_arg_1: 06 1234 5678" in r.output
    assert "AGI Tx >> agi_callerid: 0612340000" in r.output
    assert 'AGI Rx << SET VARIABLE "RPO_RESULT" "BLOCK"' in r.output
    assert r.output.strip().splitlines()[-1] == (
        "RPO_RESULT=BLOCK RPO_REASON=rpo_registered AGISTATUS=SUCCESS -> HANGUP(21)")
    r = run(data, "simulate-call", "3331234567", "--quiet")
    assert r.exit_code == 0 and r.output.strip() == (
        "RPO_RESULT=ALLOW RPO_REASON=not_registered AGISTATUS=SUCCESS -> DIAL")


def test_simulate_call_with_a_missing_agi_is_a_block(data, tmp_path):
    r = run(data, "simulate-call", "3331234567", "--agi", str(tmp_path / "nope.agi"), "--quiet")
    assert r.exit_code == 1
    assert "AGISTATUS=NOTFOUND -> HANGUP(21)" in r.output


def test_python_dash_m_runs_the_agi(data):
    env_block = "agi_uniqueid: 1795339068.25\nagi_callerid: unknown\n\n"
    p = subprocess.run([sys.executable, "-m", "rpo_guard.agi", "3331234567", "B"],
                       input=(env_block + "200 result=1\n" * 3).encode(), capture_output=True,
                       env={**__import__("os").environ, **data.agi_env}, timeout=30)
    assert p.returncode == 0
    assert p.stdout.decode().splitlines()[:2] == ['SET VARIABLE "RPO_RESULT" "ALLOW"',
                                                  'SET VARIABLE "RPO_REASON" "not_registered"']


DEMO_REASONS = ("not_registered", "rpo_registered", "consent", "contract", "internal_dnc", "consent_revoked",
                "optout", "not_consulted", "invalid_number", "caller_id_not_allowed", "silent_call_cooldown",
                "callback_request")


def _campaign_calls():
    from importlib import resources
    return len((resources.files("rpo_guard") / "sample_data" / "campaign.csv").read_text().strip().splitlines()) - 1


def test_demo_runs_the_campaign(tmp_path):
    # On the real clock: every rule shows, in the calling hours or not.
    r = CliRunner().invoke(cli, ["demo", "--data-dir", str(tmp_path / "demo")])
    assert r.exit_code == 0, r.output
    for reason in DEMO_REASONS:
        assert f" {reason} " in r.output, reason
    assert r.output.count(" SUCCESS ") >= _campaign_calls()


def test_demo_outside_the_calling_hours_shows_the_block_then_every_rule(tmp_path, capsys):
    from rpo_guard.cli.demo import run_demo
    today = today_rome()
    holiday = f"{today.isoformat()}, {(today + timedelta(days=1)).isoformat()}"  # a run across midnight too
    run_demo(tmp_path / "demo", conduct={"local_holidays": holiday})
    output = capsys.readouterr().out
    assert "note: now is outside the calling hours" in output
    rows = [line for line in output.splitlines() if " SUCCESS " in line]
    assert len(rows) == _campaign_calls() + 1
    assert " outside_calling_hours " in rows[0] and rows[0].endswith("# outside the calling hours now")
    assert rows[1].split()[:5] == rows[0].split()[:5]  # the same call, then with the calling hours off
    assert " not_registered " in rows[1]
    assert sum(" outside_calling_hours " in row for row in rows) == 1
    for reason in DEMO_REASONS:
        assert f" {reason} " in output, reason


def test_import_errors_name_file_line_and_field(data):
    bad = data.csv("bad.csv", "number,status\n3331234567,si\n3339999999,forse\n")
    r = run(data, "import-consultation", str(bad), "--date", today_rome().isoformat())
    assert r.exit_code == 1
    assert f"{bad}:3: field 'status': unknown status word 'forse'" in r.output
    bad = data.csv("bad2.csv", "number,status\n3331234567,si\n33312,no\n")
    r = run(data, "import-consultation", str(bad), "--date", today_rome().isoformat())
    assert f"{bad}:3: field 'number'" in r.output
    r = run(data, "check", "3339999999", "--json")
    assert json.loads(r.output)["reason"] == "not_consulted"  # nothing of the bad files landed


def test_import_keeps_the_leading_zero_and_is_idempotent(data):
    f = data.csv("c.csv", "number,status\n0687654321,no\n")
    first = run(data, "import-consultation", str(f), "--date", today_rome().isoformat())
    again = run(data, "import-consultation", str(f), "--date", today_rome().isoformat())
    assert first.exit_code == 0 and again.exit_code == 0
    assert "already imported" in again.output
    assert json.loads(run(data, "check", "0687654321", "--json").output)["number"] == "+390687654321"


def test_dnc_add_list_remove(data):
    assert run(data, "dnc", "add", "333 123 4567", "--reason", "complaint").exit_code == 0
    out = json.loads(run(data, "dnc", "list", "--json").output)
    assert [(r["number"], r["brand"], r["reason"]) for r in out] == [("+393331234567", "", "complaint")]
    assert json.loads(run(data, "check", "3331234567", "--json").output)["reason"] == "internal_dnc"
    assert run(data, "dnc", "remove", "+393331234567").exit_code == 0
    assert json.loads(run(data, "check", "3331234567", "--json").output)["reason"] == "not_registered"
    r = run(data, "dnc", "remove", "+393331234567")
    assert r.exit_code == 1 and "not on the do-not-contact list" in r.output
    assert run(data, "dnc", "add", "12").exit_code == 1
