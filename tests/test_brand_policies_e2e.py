"""Brand policies end to end: the real configuration file, real SQLite files, `rpo-guard check`
and the real process AGI driven by the Asterisk peer; attempt caps counted from audit.db."""
from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timedelta

import pytest
from click.testing import CliRunner

from brand_policy_table import (BRANDS_CONFIG, CALLBACK, CAPPED, CASES, CONSENTED, ENERGY, FREE, LINE_0843,
                                LINE_0844, PLAIN, ROME_LINE, SALES, build, insert_attempts)
from conftest import ROME, agi_path, today_rome
from rpo_guard import config as config_mod
from rpo_guard.cli.main import cli
from rpo_guard.harness import Channel, run_process_agi

FREE_E164 = "+390612345678"


def check(env, dialed, brand, *more) -> dict:
    r = CliRunner().invoke(cli, ["--config", str(env.conf), "check", dialed, "--brand", brand, "--json", *more],
                           catch_exceptions=False)
    out = json.loads(r.output)
    assert r.exit_code == (0 if out["decision"] == "ALLOW" else 1)
    return out


def agi(env, dialed, brand, caller_id=ROME_LINE):
    s = run_process_agi(agi_path(), [dialed, brand], Channel(extension="3331234567", callerid=caller_id),
                        env=env.agi_env)
    assert s.agistatus == "SUCCESS", s.transcript
    return s


@pytest.fixture(scope="module")
def brands_env(tmp_path_factory):
    return build(tmp_path_factory.mktemp("brands"))


@pytest.mark.parametrize("dialed, brand, caller_id, decision, reason", CASES)
def test_check_and_agi_agree(brands_env, dialed, brand, caller_id, decision, reason):
    out = check(brands_env, dialed, brand, "--caller-id", caller_id)
    assert (out["decision"], out["reason"]) == (decision, reason), out["detail"]
    s = agi(brands_env, dialed, brand, caller_id)
    assert (s.result, s.reason) == (decision, reason)
    assert s.dialplan_allows == (decision == "ALLOW")


def test_audit_rows_name_what_decided(brands_env):
    s = agi(brands_env, CONSENTED, ENERGY)
    row = next(r for r in brands_env.audit_rows() if str(r["id"]) == s.channel.variables["RPO_AUDIT_ID"])
    basis = json.loads(row["basis"])
    assert row["reason"] == "consent" and basis["kind"] == "consent" and basis["evidence"] == "ev-0"
    assert basis["batch_id"]  # and the consultation that found it not registered
    s = agi(brands_env, FREE, SALES, LINE_0843)
    row = next(r for r in brands_env.audit_rows() if str(r["id"]) == s.channel.variables["RPO_AUDIT_ID"])
    assert "0843 range, reserved for statistical research" in row["detail"]


def test_check_shows_the_new_reasons_in_words(brands_env):
    r = CliRunner().invoke(cli, ["--config", str(brands_env.conf), "check", FREE, "--brand", ENERGY])
    assert r.exit_code == 1
    assert r.output.startswith("BLOCK consent_required") and "consent, a contract or a callback request" in r.output
    r = CliRunner().invoke(cli, ["--config", str(brands_env.conf), "check", FREE, "--brand", SALES,
                                 "--caller-id", ROME_LINE])
    assert r.exit_code == 1 and "caller_id_not_allowed" in r.output and "declared" in r.output


def test_check_without_caller_id_leaves_the_caller_id_rule_out(brands_env):
    out = check(brands_env, CALLBACK, ENERGY)
    assert out["reason"] == "callback_request" and out["caller_id_checked"] is False


# ---------------------------------------------------------------- attempt caps through the process AGI

@pytest.fixture
def capped(tmp_path):
    return build(tmp_path)


def test_cap_reached_at_exactly_n_and_refusals_not_counted(capped):
    # history: refused attempts and allowed ones outside the window do not count; one inside does
    insert_attempts(capped, [(FREE_E164, CAPPED, "BLOCK", 1), (FREE_E164, CAPPED, "BLOCK", 2),
                             (FREE_E164, CAPPED, "ALLOW", 30), (FREE_E164, CAPPED, "ALLOW", 45),
                             (FREE_E164, PLAIN, "ALLOW", 1)])      # another brand's: the brand's cap ignores it
    assert check(capped, FREE, CAPPED)["decision"] == "ALLOW"
    insert_attempts(capped, [(FREE_E164, CAPPED, "ALLOW", 29)])   # the window's first day: counts
    out = check(capped, FREE, CAPPED)
    assert out["attempts_counted_from"] == capped.cfg.audit_db
    assert (out["decision"], out["reason"]) == ("ALLOW", "not_registered")     # 1 of 2
    assert agi(capped, FREE, CAPPED).result == "ALLOW"                           # now 2 of 2
    out = check(capped, FREE, CAPPED)
    assert (out["decision"], out["reason"]) == ("BLOCK", "attempt_cap")
    assert out["basis"]["attempts"] == 2 and out["basis"]["max_attempts"] == 2
    s = agi(capped, FREE, CAPPED)
    assert (s.result, s.reason, s.dialplan_allows) == ("BLOCK", "attempt_cap", False)
    assert agi(capped, FREE, CAPPED).reason == "attempt_cap"  # the refusals were not counted as attempts...
    rows = [r for r in capped.audit_rows() if r["e164"] == FREE_E164 and r["brand"] == CAPPED and r["via"] == "agi"]
    assert [r["decision"] for r in rows] == ["ALLOW", "BLOCK", "BLOCK"]  # ...but are recorded
    # other brands and other numbers are not capped by it
    assert agi(capped, FREE, PLAIN).result == "ALLOW"
    assert agi(capped, CONSENTED, CAPPED).result == "ALLOW"


def test_a_refused_call_is_not_counted(capped):
    capped.write_config(BRANDS_CONFIG.replace("max_attempts = 2\nattempt_window_days = 30\n",
                                              "max_attempts = 1\npurpose = commercial\n"))
    assert capped.cfg.policy_for(CAPPED).purpose == "commercial"
    for _ in range(3):  # refused: a statistical number for a commercial brand
        assert agi(capped, FREE, CAPPED, LINE_0843).reason == "caller_id_not_allowed"
    assert agi(capped, FREE, CAPPED, LINE_0844).result == "ALLOW"
    assert agi(capped, FREE, CAPPED, LINE_0844).reason == "attempt_cap"


@pytest.mark.parametrize("scope, expected", [
    ("number", ["ALLOW", "ALLOW", "BLOCK"]),   # every brand's attempts count
    ("brand", ["ALLOW", "ALLOW", "ALLOW"]),    # each brand its own two
])
def test_global_cap_across_brands_or_per_brand(tmp_path, scope, expected):
    env = build(tmp_path, f"\n[attempts]\nmax_attempts = 2\nwindow_days = 7\nscope = {scope}\n")
    got = [agi(env, FREE, brand).result for brand in (PLAIN, ENERGY.replace("Uno", "Sei"), PLAIN)]
    assert got == expected
    s = agi(env, FREE, PLAIN)
    assert (s.result, s.reason) == ("BLOCK", "attempt_cap")


def test_unreadable_audit_log_fails_closed(capped, tmp_path):
    """With a cap, an audit log that cannot be read refuses the call (BLOCK/error); without one it is not read."""
    conn = sqlite3.connect(capped.cfg.audit_db)
    conn.execute("DROP TRIGGER attempts_no_update")  # the test breaks the table the count reads
    conn.execute("ALTER TABLE attempts RENAME TO attempts_gone")
    conn.commit()
    conn.close()
    s = agi(capped, FREE, CAPPED)
    assert (s.result, s.reason) == ("BLOCK", "error")
    assert "attempts" in capped.failures.read_text()
    assert check(capped, FREE, CAPPED)["reason"] == "error"


def test_check_attempts_option(capped):
    assert check(capped, FREE, CAPPED, "--attempts", "1")["decision"] == "ALLOW"
    out = check(capped, FREE, CAPPED, "--attempts", "2")
    assert out["reason"] == "attempt_cap" and out["attempts_counted_from"] == "--attempts 2"
    assert check(capped, FREE, PLAIN, "--attempts", "99")["decision"] == "ALLOW"  # no cap for that brand


def test_check_without_an_audit_log_counts_none(tmp_path):
    env = build(tmp_path)
    import os
    os.remove(env.cfg.audit_db)
    out = check(env, FREE, CAPPED)
    assert out["decision"] == "ALLOW" and "no audit log yet" in out["attempts_counted_from"]
    assert not os.path.exists(env.cfg.audit_db)  # check records nothing


# ---------------------------------------------------------------- configuration

def write(tmp_path, text):
    p = tmp_path / "c.conf"
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize("text, words", [
    ("[brand X]\nrequire_consnet = on\n", ["c.conf", "[brand X]", "unknown key", "require_consnet"]),
    ("[brand X]\nrequire_consent = perhaps\n", ["c.conf", "[brand X] require_consent", "perhaps", "on or off"]),
    ("[brand X]\npurpose = sales\n", ["[brand X] purpose", "commercial", "statistical"]),
    ("[brand X]\nmax_attempts = 0\n", ["[brand X] max_attempts", "positive"]),
    ("[brand X]\nattempt_window_days = 7\n", ["[brand X]", "need max_attempts"]),
    ("[brand X]\nmax_attempts = 3\nattempt_scope = campaign\n", ["[brand X] attempt_scope", "campaign"]),
    ("[brand ]\nrequire_consent = on\n", ["needs a name"]),
    ("[attempts]\nmax_attempts = -1\n", ["[attempts] max_attempts"]),
    ("[attempts]\nwindow_days = 0\n", ["[attempts] window_days"]),
    ("[attempts]\nscope = everyone\n", ["[attempts] scope", "everyone"]),
    ("[attempts]\nmax_attempt = 3\n", ["[attempts]", "unknown key", "max_attempt"]),
    ("[audit]\nretention_days = 20\n[brand X]\nmax_attempts = 3\n", ["retention_days = 20", "30 days"]),
    ("[audit]\nretention_days = 6\n[attempts]\nmax_attempts = 3\nwindow_days = 7\n", ["retention_days = 6"]),
])
def test_bad_brand_settings_name_file_section_and_key(tmp_path, text, words):
    with pytest.raises(config_mod.ConfigError) as exc:
        config_mod.load(write(tmp_path, text))
    for w in words:
        assert w in str(exc.value)


def test_defaults_keep_todays_policy(tmp_path):
    cfg = config_mod.load(write(tmp_path, "[rules]\nvalidity_days = 15\n"))
    assert cfg.brands == {} and (cfg.attempt_max, cfg.attempt_window_days, cfg.attempt_scope) == (0, 30, "number")
    assert cfg.policy_for("Anything") == cfg.policy
    from rpo_guard.rules.decision import Policy
    assert cfg.policy == Policy()


def test_policy_for_a_brand(tmp_path):
    from rpo_guard.rules.decision import AttemptCap
    cfg = config_mod.load(write(tmp_path, "[conduct]\ncaller_id_check = off\n[attempts]\nmax_attempts = 4\n"
                                          "[brand E]\nrequire_consent = on\nmax_attempts = 2\nattempt_window_days = 7\n"
                                          "[brand S]\npurpose = Statistical\n[brand N]\nmax_attempts = 1\n"
                                          "attempt_scope = number\n"))
    e = cfg.policy_for(" E ")
    assert e.require_consent and not e.caller_id_check
    assert e.attempt_caps == (AttemptCap(4, 30, False), AttemptCap(2, 7, True))
    s = cfg.policy_for("S")
    assert s.purpose == "statistical" and s.caller_id_check  # the brand's caller-ID setting turns the rule on
    assert cfg.policy_for("N").attempt_caps[-1] == AttemptCap(1, 30, False)
    assert cfg.policy_for("e") == cfg.policy  # brand names are exact
    assert cfg.policy.attempt_caps == (AttemptCap(4, 30, False),)


def _agi_waiting_for_a_lock(deadline: float) -> bool:
    """True once a process AGI child of this test sleeps in SQLite's busy handler (nanosleep)."""
    import os
    import time
    me = str(os.getpid())
    while time.monotonic() < deadline:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    ppid = f.read().rsplit(")", 1)[1].split()[1]
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmdline = f.read()
                with open(f"/proc/{pid}/wchan") as f:
                    wchan = f.read()
            except OSError:
                continue
            if ppid == me and b"rpo_guard.agi" in cmdline and "nanosleep" in wchan:
                return True
        time.sleep(0.02)
    return False


def test_two_process_agis_cannot_both_take_the_last_place(capped):
    """One AGI (played here by the test) has counted 1 of 2 under the write lock and allowed
    its call; a second AGI checking the same number meanwhile must wait for that row and count
    it, so it is refused at exactly 2. (Counting without the lock, it saw 1 and allowed.)"""
    import threading
    import time

    from rpo_guard.audit.log import AuditLog
    capped.write_config(BRANDS_CONFIG + "\n[store]\naudit_busy_timeout_ms = 30000\n")
    insert_attempts(capped, [(FREE_E164, CAPPED, "ALLOW", 3)])   # 1 of 2
    first = AuditLog(capped.cfg.audit_db)
    second = {}
    with first.write_lock():
        from rpo_guard.audit.attempts import count_allowed
        assert count_allowed(first.conn, FREE_E164, CAPPED, today_rome() - timedelta(days=29)) == 1
    runner = threading.Thread(target=lambda: second.update(s=agi(capped, FREE, CAPPED)))
    runner.start()
    try:
        assert _agi_waiting_for_a_lock(time.monotonic() + 30), "the second AGI never waited for the write lock"
        assert runner.is_alive() and not second
        first.append({"at": datetime.now(ROME).isoformat(timespec="milliseconds"), "brand": CAPPED,
                      "dialed": FREE, "e164": FREE_E164, "decision": "ALLOW", "reason": "not_registered",
                      "basis": {}, "detail": "the first AGI's call", "via": "agi"})   # 2 of 2, committed
    finally:
        first.close()
        runner.join(60)
    s = second["s"]
    assert (s.result, s.reason) == ("BLOCK", "attempt_cap")
    rows = [r for r in capped.audit_rows() if r["e164"] == FREE_E164 and r["via"] == "agi"]
    assert [(r["decision"], r["detail"] == "the first AGI's call") for r in rows] == [
        ("ALLOW", True), ("BLOCK", False)]
