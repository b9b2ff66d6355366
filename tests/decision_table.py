"""The shared decision table over real data: its fixtures and rows.

Used by tests/rules/test_decision_table.py (the CLI and the process AGI) and
tests/fastagi/test_fastagi.py (the FastAGI server). The data is loaded
through the real importers into real SQLite files; older consultation
batches are moved back in time with SQL, as if they had been imported on
earlier days (the importer itself refuses expired results).
"""
import sqlite3

import pytest

from conftest import Env, days, today_rome
from rpo_guard.register.lists import dnc_add

BRAND, OTHER = "Energia Uno", "Telco Due"


def backdate(env, batch_id: int, days_ago: int):
    conn = sqlite3.connect(env.cfg.register_db)
    with conn:
        conn.execute("UPDATE batches SET consulted_on = ? WHERE id = ?", (days(days_ago), batch_id))
    conn.close()


@pytest.fixture(scope="module")
def table_by_day(tmp_path_factory):
    """The table's data is dated from today (Europe/Rome) and its edge cases count days
    (14 vs 15, 30 vs 31): a module running across midnight builds it again for the new day."""
    built = {}

    def get():
        day = today_rome()
        if day not in built:
            built[day] = build_table(tmp_path_factory.mktemp("table"))
        return built[day]
    return get


@pytest.fixture
def table_env(table_by_day):
    return table_by_day()


def build_table(root):
    env = Env(root)
    env.write_config("[numbers]\nstrip_prefixes = 9, *31#\n")
    env.init()
    # History for the "unbroken run of registered results" (registration date unknown).
    old = env.consult([("3471112223", "iscritto"), ("3472223334", "iscritto"), ("3473334445", "iscritto"),
                       ("3401111111", "no")], name="old.csv")
    backdate(env, old.batch_id, 40)
    mid = env.consult([("3471112223", "iscritto"), ("3472223334", "non iscritto"), ("3473334445", "1")],
                      name="mid.csv")
    backdate(env, mid.batch_id, 20)
    expired = env.consult([("3409999999", "no"), ("3408888888", "no")], name="expired.csv")
    backdate(env, expired.batch_id, 15)
    env.consult([("3408888888", "no")], name="edge.csv", days_ago=14)
    env.consult([
        ("0612345678", "non iscritto"),
        ("3331234567", "iscritto"),
        ("3339876543", "iscritto", days(60)),      # registration date given by the result
        ("3471112223", "iscritto"),
        ("3472223334", "iscritto"),                 # run broken 20 days ago: restarts today-1
        ("3473334445", "yes"),
        ("3402223334", "iscritto"),                 # contract holders
        ("3402223335", "iscritto"),
        ("3402223336", "iscritto"),
        ("3485556667", "no"),                       # DNC
        ("3486667778", "no"),                       # brand DNC
        ("3319998887", "iscritto", days(90)),       # consent then revocation
        ("3318887776", "iscritto", days(90)),       # revocation then consent
        ("3494443332", "no"),                       # opt-out
        ("3495554443", "no"),                       # opt-out for every brand
    ], days_ago=1, name="current.csv")
    env.consult([("3461231234", "no")], days_ago=2, brand=OTHER, name="other-brand.csv")
    env.consents([
        ("3339876543", BRAND, "consent", days(30), ""),
        ("3471112223", BRAND, "consent", days(39), ""),     # a day after the run began: counts
        ("3473334445", BRAND, "consent", days(40), ""),     # the day the run began: does not
        ("3472223334", BRAND, "consent", days(10), ""),     # before the current run: does not
        ("3331234567", BRAND, "consent", days(400), ""),    # long before: the registration revoked it
        ("3402223334", BRAND, "contract", days(700), ""),   # in force
        ("3402223335", BRAND, "contract", days(700), days(31)),  # ended 30 days ago + 1: too old
        ("3402223336", BRAND, "contract", days(700), days(30)),  # ended exactly 30 days ago: grace
        ("3407777777", BRAND, "contract", days(100), ""),   # contract, never consulted
        ("3319998887", BRAND, "consent", days(30), ""),
        ("3319998887", BRAND, "revocation", days(10), ""),
        ("3318887776", BRAND, "revocation", days(30), ""),
        ("3318887776", BRAND, "consent", days(10), ""),
        ("3494443332", BRAND, "optout", days(5), ""),
        ("3495554443", "", "optout", days(5), ""),
    ])
    dnc_add(env.cfg, "3485556667", "", "complaint", who="test")
    dnc_add(env.cfg, "3486667778", BRAND, "asked this brand", who="test")
    return env


# (dialed, brand, decision, reason)
TABLE = [
    # every number format, the leading-zero fixed line
    ("0612345678", BRAND, "ALLOW", "not_registered"),
    ("06 1234 5678", BRAND, "ALLOW", "not_registered"),
    ("06-1234-5678", BRAND, "ALLOW", "not_registered"),
    ("06.1234.5678", BRAND, "ALLOW", "not_registered"),
    ("+39 06 1234 5678", BRAND, "ALLOW", "not_registered"),
    ("0039 06 1234 5678", BRAND, "ALLOW", "not_registered"),
    ("390612345678", BRAND, "ALLOW", "not_registered"),
    ("9 0612345678", BRAND, "ALLOW", "not_registered"),
    ("*31#0612345678", BRAND, "ALLOW", "not_registered"),
    ("612345678", BRAND, "BLOCK", "invalid_number"),  # without its 0 it is no number at all
    ("3331234567", BRAND, "BLOCK", "rpo_registered"),  # consent 400 days ago: revoked by the registration
    ("+393331234567", BRAND, "BLOCK", "rpo_registered"),
    ("393331234567", BRAND, "BLOCK", "rpo_registered"),
    ("0039 333 123 4567", BRAND, "BLOCK", "rpo_registered"),
    # invalid numbers
    ("12345", BRAND, "BLOCK", "invalid_number"),
    ("abc", BRAND, "BLOCK", "invalid_number"),
    ("+39", BRAND, "BLOCK", "invalid_number"),
    # internal do-not-contact, global and per brand
    ("3485556667", BRAND, "BLOCK", "internal_dnc"),
    ("3485556667", OTHER, "BLOCK", "internal_dnc"),
    ("3486667778", BRAND, "BLOCK", "internal_dnc"),
    ("3486667778", OTHER, "ALLOW", "not_registered"),
    # opt-outs
    ("3494443332", BRAND, "BLOCK", "optout"),
    ("3494443332", OTHER, "ALLOW", "not_registered"),
    ("3495554443", OTHER, "BLOCK", "optout"),
    # contracts and their grace period
    ("3402223334", BRAND, "ALLOW", "contract"),
    ("3402223336", BRAND, "ALLOW", "contract"),
    ("3402223335", BRAND, "BLOCK", "rpo_registered"),
    ("3402223334", OTHER, "BLOCK", "rpo_registered"),
    ("3407777777", BRAND, "ALLOW", "contract"),
    ("3407777777", OTHER, "BLOCK", "not_consulted"),
    # consultation coverage
    ("3400000001", BRAND, "BLOCK", "not_consulted"),
    ("3409999999", BRAND, "BLOCK", "consultation_expired"),
    ("3408888888", BRAND, "ALLOW", "not_registered"),   # 14 days old: still valid
    ("3461231234", OTHER, "ALLOW", "not_registered"),   # consulted on that brand's account
    ("3461231234", BRAND, "BLOCK", "not_consulted"),    # ... which does not cover another brand
    ("3401111111", BRAND, "BLOCK", "consultation_expired"),
    # registered: consent after the registration, the trap, revocations
    ("3339876543", BRAND, "ALLOW", "consent"),
    ("3339876543", OTHER, "BLOCK", "rpo_registered"),
    ("3471112223", BRAND, "ALLOW", "consent"),
    ("3473334445", BRAND, "BLOCK", "rpo_registered"),
    ("3472223334", BRAND, "BLOCK", "rpo_registered"),
    ("3319998887", BRAND, "BLOCK", "consent_revoked"),
    ("3318887776", BRAND, "ALLOW", "consent"),
    ("3339876543", "", "BLOCK", "rpo_registered"),
]
