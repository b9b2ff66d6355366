"""The fleet-mode staleness rule: a replica not confirmed current recently enough refuses every call."""
from datetime import date

import pytest

from rpo_guard.rules.decision import (ALLOW, BLOCK, CLOCK_BACK_SLACK, REPLICA_STALE, CallFacts, Consultation,
                                      DncEntry, Policy, decide)

TODAY = date(2026, 11, 25)
FLEET = Policy(calling_hours=False, caller_id_check=False, max_staleness_seconds=60)


def facts(age, **kw):
    return CallFacts(today=TODAY, e164="+393331234567", brand="acme", replica_age=age,
                     consultations=(Consultation(1, TODAY, False),), **kw)


def test_single_box_ignores_replica_age():
    single = FLEET._replace(max_staleness_seconds=None)
    assert decide(facts(None), single).decision == ALLOW
    assert decide(facts(10_000), single).decision == ALLOW


@pytest.mark.parametrize("age", [0, 1.5, 59.9, 60, -CLOCK_BACK_SLACK])
def test_fresh_replica_decides_as_usual(age):
    assert decide(facts(age), FLEET).reason == "not_registered"


@pytest.mark.parametrize("age", [None, 60.01, 3600, -CLOCK_BACK_SLACK - 0.1, -3600])
def test_stale_never_confirmed_or_future_confirmation_is_refused(age):
    v = decide(facts(age), FLEET)
    assert (v.decision, v.reason) == (BLOCK, REPLICA_STALE)
    if age is not None:
        assert v.basis["max_staleness_s"] == 60


def test_invalid_number_keeps_its_own_reason():
    f = facts(None)._replace(e164=None)
    assert decide(f, FLEET).reason == "invalid_number"


def test_stale_wins_over_an_allow_but_a_fresh_dnc_still_blocks():
    assert decide(facts(61, dnc=(DncEntry(3, ""),)), FLEET).reason == REPLICA_STALE
    assert decide(facts(1, dnc=(DncEntry(3, ""),)), FLEET).reason == "internal_dnc"
