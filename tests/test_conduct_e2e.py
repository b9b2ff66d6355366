"""The conduct rules end to end: real config, real SQLite, `rpo-guard check --at`,
the conduct commands, and the real process AGI driven by the Asterisk peer."""
from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from rpo_guard import config as config_mod
from rpo_guard.cli.main import cli
from rpo_guard.harness import Channel, run_process_agi

from conftest import ROME, agi_path, days, today_rome

REGISTERED = "3331234567"
FREE = "0612345678"
CLIENT = "3402223334"      # has an open contract with Energia Uno: callable on any date the clock allows
ROME_LINE = "0612340000"   # the demo's caller ID
CLOCK_FREE = "calling_hours = off\n"  # caller-ID rule on, calling hours off: results do not depend on the clock


def run(*args) -> tuple[int, str]:
    r = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return r.exit_code, r.output


def check(*args) -> dict:
    code, out = run("check", *args, "--json")
    v = json.loads(out)
    assert code == (0 if v["decision"] == "ALLOW" else 1)
    return v


@pytest.fixture
def data(env):
    def setup(conduct: str = ""):
        env.write_config(conduct=conduct)
        env.init()
        env.consult([(REGISTERED, "iscritto"), (FREE, "non iscritto"), (CLIENT, "iscritto")], days_ago=0)
        env.consents([(CLIENT, "Energia Uno", "contract", "2024-01-01", "")])
        return env
    return setup


# ---------------------------------------------------------------- calling hours through `check --at`

@pytest.mark.parametrize("at, expected", [
    ("2027-11-24T08:59", "outside_calling_hours"),   # Wednesday
    ("2027-11-24T09:00", "contract"),
    ("2027-11-24T19:59", "contract"),
    ("2027-11-24T20:00", "outside_calling_hours"),
    ("2027-11-27T09:59", "outside_calling_hours"),   # Saturday
    ("2027-11-27T10:00", "contract"),
    ("2027-11-27T18:59", "contract"),
    ("2027-11-27T19:00", "outside_calling_hours"),
    ("2027-12-07T19:00", "outside_calling_hours"),   # Tuesday before the Immacolata
    ("2027-12-07T18:59", "contract"),
    ("2027-11-28T12:00", "outside_calling_hours"),   # Sunday
    ("2027-03-29T12:00", "outside_calling_hours"),   # Easter Monday 2027
    ("2027-10-04T12:00", "outside_calling_hours"),   # San Francesco, a Monday
    ("2027-03-28T02:30", "outside_calling_hours"),   # DST starts (Sunday); 02:30 does not exist
    ("2027-03-29T06:59:00Z", "outside_calling_hours"),  # Monday after: 08:59 in Rome
    ("2027-03-29T07:00:00Z", "outside_calling_hours"),  # 09:00 in Rome, but Easter Monday 2027
    ("2027-03-30T07:00:00Z", "contract"),            # Tuesday 09:00 CEST
    ("2027-11-02T07:59:00Z", "outside_calling_hours"),  # 08:59 CET after the change back
    ("2027-11-02T08:00:00Z", "contract"),
    ("2031-12-25T12:00", "outside_calling_hours"),   # a year the holiday cache does not hold
    ("2031-12-24T19:30", "outside_calling_hours"),
    ("2031-12-24T18:30", "contract"),
])
def test_check_at(data, at, expected):
    data()
    v = check(CLIENT, "--brand", "Energia Uno", "--at", at, "--caller-id", ROME_LINE)
    assert v["reason"] == expected, v


def test_check_reads_the_holiday_cache(data):
    env = data()
    conn = sqlite3.connect(env.cfg.register_db)
    years = {r[0] for r in conn.execute("SELECT year FROM holiday_years")}
    year = today_rome().year + 1
    assert year - 1 in years and year in years
    # a Wednesday of next year's last week of November (no national holiday that week or the day before)
    day = date(year, 11, 22) + timedelta(days=(2 - date(year, 11, 22).weekday()) % 7)
    assert check(CLIENT, "--brand", "Energia Uno", "--at", f"{day}T12:00", "--caller-id", ROME_LINE)["reason"] == "contract"
    with conn:  # a holiday only the cache knows: proves the per-call path reads it
        conn.execute("INSERT INTO holidays (day, year, name) VALUES (?, ?, 'test-only holiday')", (day.isoformat(), year))
    conn.close()
    v = check(CLIENT, "--brand", "Energia Uno", "--at", f"{day}T12:00", "--caller-id", ROME_LINE)
    assert v["reason"] == "outside_calling_hours" and "test-only holiday" in v["detail"]
    v = check(CLIENT, "--brand", "Energia Uno", "--at", f"{day - timedelta(days=1)}T19:30", "--caller-id", ROME_LINE)
    assert v["reason"] == "outside_calling_hours"  # its eve


def test_per_call_path_does_not_import_holidays_when_cached(data):
    env = data()
    epiphany = f"{today_rome().year + 1}-01-06T12:00+01:00"  # a year the cache holds, whatever the clock
    code = f"""
import sys
from datetime import datetime
from rpo_guard import config
from rpo_guard.guard import check_call
from rpo_guard.register.store import Store
cfg = config.load({str(env.conf)!r})
o = check_call(cfg, Store(cfg.register_db), {CLIENT!r}, "Energia Uno", datetime.fromisoformat({epiphany!r}),
               caller_id={ROME_LINE!r}, callingpres="0")
print(o.verdict.reason, "holidays" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["outside_calling_hours", "False"]


def test_local_holidays_setting(data):
    data("local_holidays = 06-29, 2027-11-24\n")
    v = check(CLIENT, "--brand", "Energia Uno", "--at", "2027-06-29T12:00", "--caller-id", ROME_LINE)
    assert v["reason"] == "outside_calling_hours" and "06-29" in v["detail"]
    assert check(CLIENT, "--brand", "Energia Uno", "--at", "2027-11-24T12:00",
                 "--caller-id", ROME_LINE)["reason"] == "outside_calling_hours"
    assert check(CLIENT, "--brand", "Energia Uno", "--at", "2028-11-24T12:00",
                 "--caller-id", ROME_LINE)["reason"] == "contract"


def test_calling_hours_switch_and_window_settings(data):
    data("calling_hours = off\n")
    assert check(CLIENT, "--brand", "Energia Uno", "--at", "2027-11-28T23:00",
                 "--caller-id", ROME_LINE)["reason"] == "contract"
    data("weekday_hours = 09:30-19:00\n")
    assert check(CLIENT, "--brand", "Energia Uno", "--at", "2027-11-24T09:15",
                 "--caller-id", ROME_LINE)["reason"] == "outside_calling_hours"
    assert check(CLIENT, "--brand", "Energia Uno", "--at", "2027-11-24T09:30",
                 "--caller-id", ROME_LINE)["reason"] == "contract"


@pytest.mark.parametrize("body, key", [
    ("weekday_hours = 20:00-09:00\n", "weekday_hours"),
    ("reduced_hours = 10-19\n", "reduced_hours"),
    ("calling_hours = maybe\n", "calling_hours"),
    ("local_holidays = 13-45\n", "local_holidays"),
    ("silent_call_days = 0\n", "silent_call_days"),
    ("callback_days = x\n", "callback_days"),
])
def test_bad_conduct_settings(env, body, key):
    env.write_config(conduct=body)
    with pytest.raises(config_mod.ConfigError, match=rf"\[conduct\] {key}"):
        config_mod.load(str(env.conf))


def test_shipped_defaults_are_on(env):
    env.write_config(conduct="")
    cfg = config_mod.load(str(env.conf))
    assert cfg.calling_hours and cfg.caller_id_check and cfg.silent_call_days == 7
    assert cfg.policy.weekday_window[0].hour == 9 and cfg.policy.reduced_window[1].hour == 19


# ---------------------------------------------------------------- caller ID through `check`

def test_check_caller_id_option(data):
    data(CLOCK_FREE)
    code, out = run("check", FREE)
    assert code == 0 and "caller ID not checked" in out
    assert check(FREE, "--caller-id", "unknown")["reason"] == "caller_id_not_allowed"
    assert check(FREE, "--caller-id", "08441234567")["decision"] == "ALLOW"
    assert check(FREE, "--caller-id", "0843123456")["decision"] == "ALLOW"
    v = check(FREE, "--caller-id", "+447911123456")
    assert v["reason"] == "caller_id_not_allowed" and v["basis"]["caller_id_kind"] == "foreign"
    assert check(FREE, "--caller-id", "800123456")["reason"] == "caller_id_not_allowed"


def test_caller_id_commands(data):
    data(CLOCK_FREE)
    assert run("caller-id", "add", ROME_LINE, "--brand", "Energia Uno", "--note", "ROC 2026")[0] == 0
    assert run("caller-id", "add", "0844 1234567", "--brand", "Energia Uno")[0] == 0
    code, out = run("caller-id", "add", ROME_LINE, "--brand", "Energia Uno")
    assert code == 0 and "already" in out
    code, out = run("caller-id", "add", "+447911123456")
    assert code == 1 and "foreign" in out
    assert run("caller-id", "add", "12345")[0] == 1
    rows = json.loads(run("caller-id", "list", "--brand", "Energia Uno", "--json")[1])
    assert sorted(r["number"] for r in rows) == ["+390612340000", "+3908441234567"]
    assert json.loads(run("caller-id", "list", "--brand", "Telco Due", "--json")[1]) == []
    # declared for Energia Uno: only those numbers; Telco Due has no list: any callable Italian number
    assert check(FREE, "--brand", "Energia Uno", "--caller-id", ROME_LINE)["decision"] == "ALLOW"
    assert check(FREE, "--brand", "Energia Uno", "--caller-id", "+3908441234567")["decision"] == "ALLOW"
    v = check(FREE, "--brand", "Energia Uno", "--caller-id", "0612349999")
    assert v["reason"] == "caller_id_not_allowed" and "declared" in v["detail"]
    assert check(FREE, "--brand", "Telco Due", "--caller-id", "0612349999")["decision"] == "ALLOW"
    # an every-brand declaration applies to Telco Due too
    assert run("caller-id", "add", "0298765432")[0] == 0
    assert check(FREE, "--brand", "Telco Due", "--caller-id", "0612349999")["reason"] == "caller_id_not_allowed"
    assert check(FREE, "--brand", "Telco Due", "--caller-id", "0298765432")["decision"] == "ALLOW"
    assert run("caller-id", "remove", ROME_LINE, "--brand", "Energia Uno")[0] == 0
    assert check(FREE, "--brand", "Energia Uno", "--caller-id", ROME_LINE)["reason"] == "caller_id_not_allowed"
    code, out = run("caller-id", "remove", ROME_LINE, "--brand", "Energia Uno")
    assert code == 1 and "not a declared caller ID" in out


# ---------------------------------------------------------------- silent calls

def test_silent_call_command_and_cooldown(data):
    data(CLOCK_FREE)
    code, out = run("silent-call", FREE, "--brand", "Telco Due", "--at", f"{days(7)}T19:30", "--uniqueid", "17.3")
    assert code == 0 and f"refused until {today_rome().isoformat()}" in out
    today = f"{today_rome()}T12:00"  # the day the data is dated from, even if the test runs across midnight
    v = check(FREE, "--brand", "Energia Uno", "--at", today)  # every brand, last day of the cool-down
    assert v["reason"] == "silent_call_cooldown" and v["basis"]["until"] == today_rome().isoformat()
    tomorrow = (today_rome() + timedelta(days=1)).isoformat()
    assert check(FREE, "--at", f"{tomorrow}T12:00")["reason"] == "not_registered"
    # first day: the day of the silent call itself
    code, _ = run("silent-call", REGISTERED, "--at", f"{days(0)}T00:01")
    assert code == 0
    assert check(REGISTERED, "--brand", "Energia Uno", "--at", today)["reason"] == "silent_call_cooldown"
    code, out = run("silent-call", FREE, "--at", f"{tomorrow}T12:00")
    assert code == 1 and "future" in out
    assert run("silent-call", "12345")[0] == 1
    rows = sqlite3.connect(str(config_mod.load().register_db)).execute(
        "SELECT number, brand, on_day, uniqueid, source FROM silent_calls ORDER BY id").fetchall()
    assert rows[0] == ("+390612345678", "Telco Due", days(7), "17.3", "cli")


def test_dialplan_hook_runs_the_command(data, tmp_path):
    """The System() line of dialplan/rpo-guard-silent-call.conf, with the values Asterisk substitutes."""
    data(CLOCK_FREE)
    conf = (Path(__file__).resolve().parents[1] / "dialplan" / "rpo-guard-silent-call.conf").read_text()
    line = re.search(r"System\((.*)\)\s*$", conf, re.M).group(1)
    cli_path = Path(sys.executable).parent / "rpo-guard"
    values = {"RPO_GUARD_CLI": str(cli_path), "num": "+390612345678", "brand": "Energia Uno",
              "UNIQUEID": "1795339068.25"}
    command = re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], line)
    subprocess.run(["/bin/sh", "-c", command], check=True, capture_output=True)
    assert check(FREE, "--brand", "Energia Uno")["reason"] == "silent_call_cooldown"
    src = sqlite3.connect(str(config_mod.load().register_db)).execute("SELECT source, uniqueid FROM silent_calls").fetchall()
    assert src == [("dialplan", "1795339068.25")]


# ---------------------------------------------------------------- callback requests

def test_callback_request_is_for_its_brand_only(data):
    env = data(CLOCK_FREE)
    assert check(REGISTERED, "--brand", "Energia Uno")["reason"] == "rpo_registered"
    env.consents([(REGISTERED, "Energia Uno", "callback_request", days(1), "")], name="cb.csv")
    v = check(REGISTERED, "--brand", "Energia Uno")
    assert (v["decision"], v["reason"]) == ("ALLOW", "callback_request")
    assert check(REGISTERED, "--brand", "Telco Due")["reason"] == "rpo_registered"
    last = (today_rome() + timedelta(days=5)).isoformat()  # given yesterday, 7 days: yesterday .. +5
    assert check(REGISTERED, "--brand", "Energia Uno", "--at", f"{last}T12:00")["reason"] == "callback_request"


def test_callback_request_needs_a_brand(data):
    from rpo_guard.sync import ImportFailed
    env = data(CLOCK_FREE)
    with pytest.raises(ImportFailed, match="field 'brand'"):
        env.consents([(REGISTERED, "", "callback_request", days(1), "")], name="cb-nobrand.csv")


# ---------------------------------------------------------------- the real AGI

def agi(env, number, brand="Energia Uno", callerid="unknown", pres=None, extra_args=()):
    ch = Channel(extension=number, callerid=callerid)
    if pres is not None:
        ch.callingpres = pres
    s = run_process_agi(agi_path(), [number, brand, *extra_args], ch, env=env.agi_env)
    assert s.agistatus == "SUCCESS"
    return s


def test_agi_caller_id(data):
    env = data(CLOCK_FREE)
    assert agi(env, FREE, callerid=ROME_LINE).result == "ALLOW"
    s = agi(env, FREE)  # CALLERID(num) unset: agi_callerid unknown, callingpres 67
    assert (s.result, s.reason) == ("BLOCK", "caller_id_not_allowed")
    assert agi(env, FREE, callerid=ROME_LINE, pres=32).reason == "caller_id_not_allowed"  # withheld
    assert agi(env, FREE, callerid="08441234567").result == "ALLOW"
    assert agi(env, FREE, callerid="+447911123456").reason == "caller_id_not_allowed"
    # the third argument overrides CALLERID(num)
    assert agi(env, FREE, extra_args=("0843123456",)).result == "ALLOW"
    assert agi(env, FREE, callerid=ROME_LINE, extra_args=("",)).reason == "caller_id_not_allowed"
    run("caller-id", "add", ROME_LINE, "--brand", "Energia Uno")
    assert agi(env, FREE, callerid=ROME_LINE).result == "ALLOW"
    assert agi(env, FREE, callerid="0612349999").reason == "caller_id_not_allowed"
    assert agi(env, FREE, brand="Telco Due", callerid="0612349999").result == "ALLOW"
    rows = env.audit_rows()
    assert rows[1]["reason"] == "caller_id_not_allowed" and rows[1]["callerid"] == "unknown"
    assert rows[5]["callerid"] == "0843123456"
    assert json.loads(rows[1]["basis"])["caller_id_kind"] == "hidden"


def test_agi_silent_call_and_callback(data):
    env = data(CLOCK_FREE)
    run("silent-call", FREE, "--at", f"{days(3)}T11:00")
    s = agi(env, FREE, callerid=ROME_LINE)
    assert (s.result, s.reason) == ("BLOCK", "silent_call_cooldown")
    env.consents([(REGISTERED, "Energia Uno", "callback_request", days(0), "")], name="cb.csv")
    assert agi(env, REGISTERED, callerid=ROME_LINE).reason == "callback_request"
    s = agi(env, REGISTERED, brand="Telco Due", callerid=ROME_LINE)
    assert (s.result, s.reason) == ("BLOCK", "rpo_registered")
    assert env.audit_rows()[-1]["reason"] == "rpo_registered"


def test_agi_outside_calling_hours_on_the_real_clock(data):
    """Today and tomorrow declared local holidays: blocked whatever the time (and across midnight)."""
    today = today_rome()
    env = data(f"local_holidays = {today}, {today + timedelta(days=1)}\n")
    s = agi(env, CLIENT, callerid=ROME_LINE)
    assert (s.result, s.reason) == ("BLOCK", "outside_calling_hours")
    row = env.audit_rows()[-1]
    assert row["reason"] == "outside_calling_hours" and "local holiday" in row["detail"]
    at = datetime.fromisoformat(row["at"])  # Rome's offset at that instant (DST or not)
    assert at.utcoffset() == at.astimezone(ROME).utcoffset()


def test_demo_shows_the_conduct_rules(tmp_path):
    """The demo's new rows (clock-free: after the first call, the demo turns calling hours off when closed)."""
    r = CliRunner().invoke(cli, ["demo", "--data-dir", str(tmp_path / "demo")], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    lines = {ln.split("#")[1].strip(): ln for ln in r.output.splitlines() if "  # " in ln}
    assert "BLOCK      caller_id_not_allowed" in lines[
        "the same free number with a hidden caller ID (Code of conduct)"]
    assert "BLOCK      silent_call_cooldown" in lines["not registered but a silent call 3 days ago: 7-day cool-down"]
    assert "ALLOW      callback_request" in lines["registered; the person asked Telco Due to call back"]
    assert "BLOCK      rpo_registered" in lines["registered and no consent"]  # the same number, Energia Uno
