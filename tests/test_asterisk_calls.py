"""The allow/block table through a real Asterisk, both front ends, every reason code.

Each call goes through the shipped subroutine (process AGI: the test venv's rpo-guard-agi;
FastAGI: an `rpo-guard serve` on 127.0.0.1), dials the trunk stand-in only on ALLOW, and
leaves an audit row whose id the channel carries.
"""
from __future__ import annotations

from datetime import timedelta

import pytest

from asterisk_calls import assert_refused, audit_row, place, standard_dialplan
from conftest import Env, agi_path, days, today_rome
from fastagi_support import Server
from decision_table import TABLE, build_table

pytestmark = pytest.mark.asterisk

FRONTS = ("agi", "fastagi")
ROME_LINE = "0612340000"
FREE, REGISTERED = "0612345678", "3331234567"


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """The decision table's data (tests/test_decision_table.py) and a FastAGI server on it."""
    env = build_table(tmp_path_factory.mktemp("table"))
    server = Server(env.conf)
    yield env, server
    server.stop()


@pytest.fixture(scope="module")
def conduct(tmp_path_factory):
    """Data for the conduct rules: caller-ID rule on, calling hours off; a second configuration
    on the same data declares today and tomorrow local holidays (outside calling hours)."""
    env = Env(tmp_path_factory.mktemp("conduct"))
    env.write_config(conduct="calling_hours = off\n")
    env.init()
    env.consult([(REGISTERED, "iscritto"), (FREE, "non iscritto")], days_ago=0)
    env.consents([(REGISTERED, "Energia Uno", "callback_request", days(0), "")], name="cb.csv")
    from click.testing import CliRunner

    from rpo_guard.cli.main import cli
    r = CliRunner().invoke(cli, ["--config", str(env.conf), "silent-call", "3470001112", "--at", f"{days(2)}T11:00"])
    assert r.exit_code == 0, r.output
    env.consult([("3470001112", "non iscritto")], days_ago=0, name="silent.csv")
    holidays = env.root / "holidays.conf"
    today = today_rome()
    holidays.write_text(env.conf.read_text().replace(  # calling hours on (the default), no call today
        "calling_hours = off\n", f"local_holidays = {today}, {today + timedelta(days=1)}\n"))
    server = Server(env.conf)
    holiday_server = Server(holidays)
    yield env, holidays, server, holiday_server
    server.stop()
    holiday_server.stop()


def fastagi_url(server) -> str:
    return f"agi://127.0.0.1:{server.port}/rpo_guard"


def run_all(sandbox, env, calls, config):
    """Place every call at once, then wait for each; [(call, outcome, expected)]."""
    placed = [(place(sandbox, front, dialed, brand, config, callerid=cid), front, dialed, brand, expect)
              for front, dialed, brand, cid, expect in calls]
    return [(call, sandbox.wait_for(call, timeout=60), front, dialed, brand, expect)
            for call, front, dialed, brand, expect in placed]


def check_outcome(sandbox, env, call, outcome, front, dialed, decision, reason):
    assert (outcome["AGISTATUS"], outcome["RPO_RESULT"], outcome["RPO_REASON"]) == ("SUCCESS", decision, reason), \
        (front, dialed, outcome)
    row = audit_row(env, outcome["RPO_AUDIT_ID"])
    assert row is not None and (row["decision"], row["reason"], row["via"]) == (decision, reason, front)
    assert row["dialed"] == dialed and row["uniqueid"]
    if decision == "ALLOW":
        digits = "".join(c for c in dialed if c.isdigit() or c == "+")
        assert sandbox.sink_hits(call) == [digits]
        assert outcome["DIALSTATUS"] == "ANSWER"
    else:
        assert_refused(sandbox, call, outcome)
        assert outcome["HANGUPCAUSE"] == "21"  # call rejected


def test_decision_table_through_asterisk(asterisk_sandbox, table):
    env, server = table
    asterisk_sandbox.load_dialplan(standard_dialplan(agi=agi_path(), fastagi=fastagi_url(server)))
    calls = [(front, dialed, brand, ROME_LINE, (decision, reason))
             for front in FRONTS for dialed, brand, decision, reason in TABLE]
    for call, outcome, front, dialed, brand, (decision, reason) in run_all(asterisk_sandbox, env, calls, env.conf):
        check_outcome(asterisk_sandbox, env, call, outcome, front, dialed, decision, reason)


@pytest.mark.parametrize("front", FRONTS)
def test_conduct_reasons_through_asterisk(asterisk_sandbox, conduct, front):
    env, holidays, server, holiday_server = conduct
    cases = [
        (FREE, "Energia Uno", ROME_LINE, env.conf, ("ALLOW", "not_registered")),
        (FREE, "Energia Uno", "", env.conf, ("BLOCK", "caller_id_not_allowed")),        # no caller ID
        (FREE, "Energia Uno", "+447911123456", env.conf, ("BLOCK", "caller_id_not_allowed")),  # foreign
        (REGISTERED, "Energia Uno", ROME_LINE, env.conf, ("ALLOW", "callback_request")),
        (REGISTERED, "Telco Due", ROME_LINE, env.conf, ("BLOCK", "rpo_registered")),
        ("3470001112", "Energia Uno", ROME_LINE, env.conf, ("BLOCK", "silent_call_cooldown")),
        (FREE, "Energia Uno", ROME_LINE, holidays, ("BLOCK", "outside_calling_hours")),
    ]
    for dialed, brand, cid, config, (decision, reason) in cases:
        srv = holiday_server if config == holidays else server
        asterisk_sandbox.load_dialplan(standard_dialplan(agi=agi_path(), fastagi=fastagi_url(srv)))
        call = place(asterisk_sandbox, front, dialed, brand, config, callerid=cid)
        outcome = asterisk_sandbox.wait_for(call)
        check_outcome(asterisk_sandbox, env, call, outcome, front, dialed, decision, reason)


@pytest.fixture(scope="module")
def brands(tmp_path_factory):
    """The brand-policy data (tests/brand_policy_table.py) and a FastAGI server on it."""
    from brand_policy_table import build
    env = build(tmp_path_factory.mktemp("brands"))
    server = Server(env.conf)
    yield env, server
    server.stop()


@pytest.mark.parametrize("front", FRONTS)
def test_brand_policy_reasons_through_asterisk(asterisk_sandbox, brands, front):
    """consent_required, the purpose of the caller ID, and an attempt cap reached at exactly N
    (the cap's brand allows 2 calls to a number; the third is refused, and so are the next)."""
    from brand_policy_table import CAPPED, CONSENTED, ENDED_20, ENDED_31, ENERGY, LINE_0843, SALES
    env, server = brands
    asterisk_sandbox.load_dialplan(standard_dialplan(agi=agi_path(), fastagi=fastagi_url(server)))
    capped_number = FREE if front == "agi" else CONSENTED  # each front its own number under the cap
    cases = [
        (FREE, ENERGY, ROME_LINE, ("BLOCK", "consent_required")),
        (ENDED_31, ENERGY, ROME_LINE, ("BLOCK", "consent_required")),
        (ENDED_20, ENERGY, ROME_LINE, ("ALLOW", "contract")),
        (CONSENTED, ENERGY, ROME_LINE, ("ALLOW", "consent")),
        (FREE, SALES, LINE_0843, ("BLOCK", "caller_id_not_allowed")),
        (capped_number, CAPPED, ROME_LINE, ("ALLOW", "not_registered")),
        (capped_number, CAPPED, ROME_LINE, ("ALLOW", "not_registered")),
        (capped_number, CAPPED, ROME_LINE, ("BLOCK", "attempt_cap")),
        (capped_number, CAPPED, ROME_LINE, ("BLOCK", "attempt_cap")),
    ]
    for dialed, brand, cid, (decision, reason) in cases:  # one at a time: the cap's order matters
        call = place(asterisk_sandbox, front, dialed, brand, env.conf, callerid=cid)
        outcome = asterisk_sandbox.wait_for(call, timeout=60)
        check_outcome(asterisk_sandbox, env, call, outcome, front, dialed, decision, reason)


@pytest.fixture(scope="module")
def stale_box(tmp_path_factory):
    """A box in fleet mode whose replica the centre never confirmed (no agent has reached it)."""
    from click.testing import CliRunner
    from rpo_guard.cli.main import cli
    env = Env(tmp_path_factory.mktemp("fleetbox"))
    env.init()
    env.consult([(FREE, "no")])  # written while still a single box: it would be callable there
    env.write_config(extra="[fleet]\ncentral = host=/nonexistent dbname=rpo\nbox = sandbox\n")
    r = CliRunner().invoke(cli, ["--config", str(env.conf), "init"])
    assert r.exit_code == 0, r.output
    server = Server(env.conf)
    yield env, server
    server.stop()


@pytest.mark.parametrize("front", FRONTS)
def test_a_replica_never_confirmed_refuses_through_asterisk(asterisk_sandbox, stale_box, front):
    env, server = stale_box
    asterisk_sandbox.load_dialplan(standard_dialplan(agi=agi_path(), fastagi=fastagi_url(server)))
    call = place(asterisk_sandbox, front, FREE, "Energia Uno", env.conf, callerid=ROME_LINE)
    outcome = asterisk_sandbox.wait_for(call, timeout=60)
    check_outcome(asterisk_sandbox, env, call, outcome, front, FREE, "BLOCK", "replica_stale")


def test_every_reason_code_is_covered():
    from rpo_guard.rules.decision import REASONS
    covered = {reason for _, _, _, reason in TABLE} | {
        "caller_id_not_allowed", "callback_request", "silent_call_cooldown", "outside_calling_hours",
        "consent_required", "attempt_cap",  # test_brand_policy_reasons_through_asterisk
        "replica_stale",  # test_a_replica_never_confirmed_refuses_through_asterisk
        "error"}  # error: tests/test_asterisk_faults.py
    assert covered == set(REASONS)
