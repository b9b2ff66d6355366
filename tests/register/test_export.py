"""export-barred: every lead gets the answer `check` gives it (guard.check_call), in bulk."""
import csv
import io
import random
from datetime import datetime, time, timedelta

import pytest
from click.testing import CliRunner

from conftest import ROME, days, today_rome
from rpo_guard.cli.main import cli
from rpo_guard.guard import check_call
from rpo_guard.register.conduct import caller_id_add, silent_call_add
from rpo_guard.register.export import decide_leads, read_leads
from rpo_guard.register.lists import dnc_add
from rpo_guard.register.store import Store
from rpo_guard.rules.calendar_it import national_holidays


def mobile(i: int) -> str:
    return f"333{1000000 + i}"


# number index -> what the register says about it (brand A is the one the list is dialed for)
NOT_REGISTERED = range(0, 40)
REGISTERED = range(40, 60)
CONSENT_AFTER = 60          # registered, consent for A after the registration
CONSENT_REVOKED = 61
CONTRACT = 62               # not consulted, contract with A
CALLBACK = 63               # not consulted, callback request to A
OPTOUT_GLOBAL = 64
OPTOUT_A = 65
OPTOUT_B = 66               # opt-out from brand B only: A may call
DNC_GLOBAL = 67
DNC_A = 68
DNC_B = 69
SILENT = 70
EXPIRED = range(71, 75)     # consulted 14 days ago: expired three days from now
NOT_CONSULTED = range(75, 80)
CONSENT_BEFORE = 80         # consent given before the registration: still registered


def weekday_at(start, hour: int, want_sunday: bool = False) -> datetime:
    day = start
    while True:
        hol = national_holidays(day.year)
        nxt = day + timedelta(days=1)
        ok = (day.weekday() == 6) if want_sunday else (
            day.weekday() < 5 and day not in hol and nxt not in national_holidays(nxt.year))
        if ok:
            return datetime.combine(day, time(hour, 30), ROME)
        day = nxt


@pytest.fixture
def register(env):
    env.write_config(conduct="calling_hours = on\ncaller_id_check = on\ncallback_days = 30\n")
    env.init()
    cfg = env.cfg
    env.consult([(mobile(i), "no") for i in NOT_REGISTERED]
                + [(mobile(i), "si", days(400)) for i in REGISTERED]
                + [(mobile(i), "si", days(400)) for i in (CONSENT_AFTER, CONSENT_REVOKED, CONSENT_BEFORE)]
                + [(mobile(i), "no") for i in (OPTOUT_GLOBAL, OPTOUT_A, OPTOUT_B, DNC_GLOBAL, DNC_A, DNC_B, SILENT)],
                days_ago=1)
    env.consult([(mobile(i), "no") for i in EXPIRED], days_ago=14, name="old.csv")
    env.consents([
        (mobile(CONSENT_AFTER), "A", "consent", days(30), ""),
        (mobile(CONSENT_REVOKED), "A", "consent", days(30), ""),
        (mobile(CONSENT_REVOKED), "A", "revocation", days(10), ""),
        (mobile(CONSENT_BEFORE), "A", "consent", days(500), ""),
        (mobile(CONTRACT), "A", "contract", days(300), ""),
        (mobile(CALLBACK), "A", "callback_request", days(0), ""),
        (mobile(OPTOUT_GLOBAL), "", "optout", days(5), ""),
        (mobile(OPTOUT_A), "A", "optout", days(5), ""),
        (mobile(OPTOUT_B), "B", "optout", days(5), ""),
    ])
    dnc_add(cfg, mobile(DNC_GLOBAL), "", "complaint")
    dnc_add(cfg, mobile(DNC_A), "A", "asked A")
    dnc_add(cfg, mobile(DNC_B), "B", "asked B")
    silent_call_add(cfg, mobile(SILENT), "A")
    caller_id_add(cfg, "0612340000", "A")
    return env


def lead_forms(i: int) -> list[str]:
    """One number written the ways lead lists write it."""
    n = mobile(i)
    return [n, f"+39 {n[:3]} {n[3:]}", f"0039{n}", f"{n[:3]}-{n[3:6]}.{n[6:]}", f"39{n}"]


INVALID = ["12", "not a number", "+39 0", "", "0039", "+44 20 7946 0958x"]


def sample(seed: int = 7, size: int = 600) -> list[tuple[int, str]]:
    rng = random.Random(seed)
    pool = [f for i in range(81) for f in lead_forms(i)] + ["06 1234 5678", "+44 20 7946 0958"] + INVALID
    return [(line, rng.choice(pool)) for line in range(2, size + 2)]


def compare(env, brand, at, caller_id=None, chunk=37):
    cfg = env.cfg
    leads = sample()
    store = Store(cfg.register_db)
    try:
        bulk = list(decide_leads(cfg, store, leads, brand, at, caller_id, chunk=chunk))
        policy = cfg.policy if caller_id is not None else cfg.policy._replace(caller_id_check=False)
        reasons = set()
        assert [(b.line, b.number) for b in bulk] == leads
        for b in bulk:
            one = check_call(cfg, store, b.number, brand, at, caller_id=caller_id, policy=policy)
            assert (b.e164, b.verdict) == (one.e164, one.verdict), b
            reasons.add(b.verdict.reason)
        return reasons
    finally:
        store.close()


def test_every_lead_gets_the_answer_check_gives(register):
    at = weekday_at(today_rome() + timedelta(days=3), 11)
    seen = set()
    seen |= compare(register, "A", at)
    seen |= compare(register, "B", at)
    seen |= compare(register, "", at)
    seen |= compare(register, "A", at, caller_id="+390612340000")   # declared for A
    seen |= compare(register, "A", at, caller_id="0298765432")      # not declared
    seen |= compare(register, "A", at.replace(hour=21))             # evening
    seen |= compare(register, "A", weekday_at(today_rome() + timedelta(days=3), 11, want_sunday=True))
    expected = {"not_registered", "rpo_registered", "consent", "consent_revoked", "contract", "callback_request",
                "optout", "internal_dnc", "silent_call_cooldown", "consultation_expired", "not_consulted",
                "invalid_number", "caller_id_not_allowed", "outside_calling_hours"}
    assert expected <= seen, expected - seen


def test_one_chunk_or_many_give_the_same_answers(register):
    at = weekday_at(today_rome() + timedelta(days=3), 11)
    store = Store(register.cfg.register_db)
    try:
        a = list(decide_leads(register.cfg, store, sample(3), "A", at, chunk=10_000))
        b = list(decide_leads(register.cfg, store, sample(3), "A", at, chunk=1))
    finally:
        store.close()
    assert a == b


def run(env, *args):
    return CliRunner().invoke(cli, ["--config", str(env.conf), *args])


def test_cli_writes_the_refused_leads_with_line_and_reason(register, tmp_path):
    at = weekday_at(today_rome() + timedelta(days=3), 11).isoformat()
    path = tmp_path / "leads.csv"
    path.write_text("name;telefono\nAnna;" + mobile(0) + "\nBruno;+39 " + mobile(DNC_GLOBAL)
                    + "\n\nCarla;12\nDario;" + mobile(OPTOUT_A) + "\nElio;0039" + mobile(CONTRACT) + "\n",
                    encoding="utf-8")
    r = run(register, "export-barred", str(path), "--brand", "A", "--at", at)
    assert r.exit_code == 0, r.output + r.stderr
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert [(x["line"], x["reason"]) for x in rows] == [("3", "internal_dnc"), ("5", "invalid_number"),
                                                       ("6", "optout")]
    assert rows[0]["e164"] == "+39" + mobile(DNC_GLOBAL) and rows[1]["e164"] == "" and rows[1]["number"] == "12"
    assert "5 lead(s)" in r.stderr
    r = run(register, "export-barred", str(path), "--brand", "A", "--at", at, "--callable")
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert [(x["line"], x["decision"], x["reason"]) for x in rows] == [("2", "ALLOW", "not_registered"),
                                                                      ("7", "ALLOW", "contract")]
    # the same number through `check` gives the same reason
    c = run(register, "check", "+39" + mobile(OPTOUT_A), "--brand", "A", "--at", at)
    assert c.exit_code == 1 and "optout" in c.stdout


def test_cli_reads_a_headerless_list_and_a_chosen_column(register, tmp_path):
    at = weekday_at(today_rome() + timedelta(days=3), 11).isoformat()
    path = tmp_path / "plain.csv"
    path.write_text(f"1001,{mobile(DNC_A)}\n1002,{mobile(1)}\n", encoding="utf-8")
    r = run(register, "export-barred", str(path), "--brand", "A", "--at", at, "--column", "2")
    assert r.exit_code == 0, r.stderr
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert [(x["line"], x["reason"]) for x in rows] == [("1", "internal_dnc")]


def test_cli_names_a_missing_list_or_register(env, tmp_path):
    r = run(env, "export-barred", str(tmp_path / "none.csv"))
    assert r.exit_code == 1 and "rpo.db" in r.stderr and "Traceback" not in r.stderr
    env.init()
    r = run(env, "export-barred", str(tmp_path / "none.csv"))
    assert r.exit_code == 1 and "none.csv: file not found" in r.stderr


def test_read_leads_skips_blank_lines_and_keeps_line_numbers(env, tmp_path):
    path = tmp_path / "l.csv"
    path.write_text("phone\n\n3331000001\n ,\n3331000002\n", encoding="utf-8")
    assert list(read_leads(env.cfg, path)) == [(3, "3331000001"), (5, "3331000002")]
