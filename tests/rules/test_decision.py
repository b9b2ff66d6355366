"""The pure decision function, rule by rule, at the edges."""
from datetime import date, timedelta

import pytest

from rpo_guard.rules.decision import (ALLOW, BLOCK, CallFacts, ConsentEvent, Consultation, DncEntry, Policy,
                                decide, registration_date)

T = date(2026, 11, 25)
# The register rules alone: the conduct-code rules (clock, caller ID) are tested in test_conduct_*.
BASE = Policy(calling_hours=False, caller_id_check=False)
N = "+393331234567"


def d(days_ago: int) -> date:
    return T - timedelta(days=days_ago)


def c(days_ago, registered, batch=1, brand="", reg=None):
    return Consultation(batch_id=batch, consulted_on=d(days_ago), registered=registered, brand=brand,
                        registration_date=reg)


def e(kind, days_ago, brand="B", ends_days_ago=None, id=1):
    return ConsentEvent(id=id, kind=kind, given_at=d(days_ago), brand=brand,
                        ends_at=None if ends_days_ago is None else d(ends_days_ago))


def run(consultations=(), consents=(), dnc=(), brand="B", e164=N, policy=BASE):
    return decide(CallFacts(today=T, e164=e164, brand=brand, consultations=tuple(consultations),
                            consents=tuple(consents), dnc=tuple(dnc)), policy)


def test_invalid_number_blocks_before_anything():
    v = run([c(1, False)], dnc=[DncEntry(1)], e164=None)
    assert (v.decision, v.reason) == (BLOCK, "invalid_number")


def test_global_dnc_blocks_even_with_contract():
    v = run([c(1, False)], [e("contract", 100)], [DncEntry(7, "", "complaint")])
    assert (v.decision, v.reason, v.basis["dnc_id"]) == (BLOCK, "internal_dnc", 7)


def test_brand_dnc_blocks_only_that_brand():
    dnc = [DncEntry(3, "B")]
    assert run([c(1, False)], dnc=dnc, brand="B").reason == "internal_dnc"
    assert run([c(1, False)], dnc=dnc, brand="OTHER").reason == "not_registered"


def test_optout_blocks_even_a_not_registered_number_and_a_contract():
    v = run([c(1, False)], [e("contract", 100), e("optout", 5)])
    assert (v.decision, v.reason) == (BLOCK, "optout")


def test_optout_for_every_brand():
    assert run([c(1, False)], [e("optout", 5, brand="")], brand="ANY").reason == "optout"


def test_consent_after_optout_lifts_it():
    v = run([c(1, False)], [e("optout", 10), e("consent", 5, id=2)])
    assert (v.decision, v.reason) == (ALLOW, "not_registered")


def test_optout_same_day_as_consent_wins():
    assert run([c(1, False)], [e("consent", 5), e("optout", 5, id=2)]).reason == "optout"


@pytest.mark.parametrize("ended, expected", [(None, "contract"), (0, "contract"), (30, "contract"),
                                             (31, "rpo_registered")])
def test_contract_grace_period(ended, expected):
    v = run([c(1, True)], [e("contract", 400, ends_days_ago=ended)])
    assert v.reason == expected


def test_contract_grace_is_a_setting():
    v = run([c(1, True)], [e("contract", 400, ends_days_ago=10)], policy=BASE._replace(contract_grace_days=5))
    assert v.reason == "rpo_registered"


def test_contract_allows_without_consultation():
    assert (run([], [e("contract", 10)]).decision, run([], [e("contract", 10)]).reason) == (ALLOW, "contract")


def test_contract_of_another_brand_does_not_count():
    assert run([c(1, True)], [e("contract", 10, brand="OTHER")]).reason == "rpo_registered"


def test_contract_starting_in_the_future_does_not_count():
    assert run([c(1, True)], [e("contract", -3)]).reason == "rpo_registered"


def test_not_consulted():
    assert run([]).reason == "not_consulted"


@pytest.mark.parametrize("age, expected", [(0, "not_registered"), (14, "not_registered"),
                                           (15, "consultation_expired")])
def test_validity_window_includes_the_consultation_day(age, expected):
    assert run([c(age, False)]).reason == expected


def test_validity_window_is_a_setting():
    assert run([c(7, False)], policy=BASE._replace(validity_days=7)).reason == "consultation_expired"
    assert run([c(6, False)], policy=BASE._replace(validity_days=7)).reason == "not_registered"


def test_newest_consultation_decides():
    assert run([c(20, True, 1), c(2, False, 2)]).reason == "not_registered"
    assert run([c(20, False, 1), c(2, True, 2)]).reason == "rpo_registered"


def test_same_day_conflict_fails_closed():
    v = run([c(2, False, 1, brand="B"), c(2, True, 2)])
    assert v.reason == "rpo_registered"


def test_consultation_dated_in_the_future_is_not_trusted():
    assert run([c(-1, False)]).reason == "consultation_expired"


def test_consent_after_registration_allows():
    v = run([c(1, True, reg=d(60))], [e("consent", 30, id=9)])
    assert (v.decision, v.reason, v.basis["consent_id"]) == (ALLOW, "consent", 9)


def test_consent_before_registration_is_revoked_by_it():
    assert run([c(1, True, reg=d(20))], [e("consent", 30)]).reason == "rpo_registered"


def test_consent_on_the_registration_day_does_not_count():
    assert run([c(1, True, reg=d(20))], [e("consent", 20)]).reason == "rpo_registered"
    assert run([c(1, True, reg=d(20))], [e("consent", 19)]).reason == "consent"


def test_unknown_registration_date_uses_the_start_of_the_registered_run():
    history = [c(40, True, 1), c(25, True, 2), c(1, True, 3)]
    assert registration_date(sorted(history, key=lambda x: x.consulted_on, reverse=True)) == d(40)
    assert run(history, [e("consent", 39)]).reason == "consent"
    assert run(history, [e("consent", 40)]).reason == "rpo_registered"


def test_a_broken_run_restarts_the_registration_date():
    history = [c(40, True, 1), c(25, False, 2), c(10, True, 3), c(1, True, 4)]
    assert run(history, [e("consent", 30)]).reason == "rpo_registered"   # before the new run
    assert run(history, [e("consent", 5)]).reason == "consent"


def test_consent_of_another_brand_does_not_count():
    assert run([c(1, True, reg=d(60))], [e("consent", 30, brand="OTHER")]).reason == "rpo_registered"


def test_later_revocation_beats_consent():
    v = run([c(1, True, reg=d(60))], [e("consent", 30), e("revocation", 10, id=2)])
    assert (v.decision, v.reason, v.basis["consent_id"]) == (BLOCK, "consent_revoked", 2)


def test_consent_after_revocation_counts():
    assert run([c(1, True, reg=d(60))], [e("revocation", 30), e("consent", 10, id=2)]).reason == "consent"


def test_expired_consent_does_not_count():
    assert run([c(1, True, reg=d(60))], [e("consent", 30, ends_days_ago=2)]).reason == "rpo_registered"


def test_consent_given_in_the_future_is_ignored():
    assert run([c(1, True, reg=d(60))], [e("consent", -2)]).reason == "rpo_registered"


def test_no_brand_means_no_consent_or_contract_can_apply():
    assert run([c(1, True, reg=d(60))], [e("consent", 30, brand="")], brand="").reason == "rpo_registered"


def test_every_verdict_names_what_decided():
    cases = [run([c(1, False)]), run([c(1, True)]), run([c(20, False)]),
             run([c(1, True, reg=d(60))], [e("consent", 30)])]
    for v in cases:
        assert v.basis, v
        assert v.basis["kind"] in {"consultation", "consent"}
