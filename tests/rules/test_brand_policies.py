"""Brand policies on the pure decision: require_consent, the caller ID's purpose,
require_declared_caller_id, attempt caps, and how they combine with the other rules.

The same cases run through the real process AGI and the real FastAGI server in
tests/test_brand_policies_e2e.py and tests/fastagi/test_fastagi_brand_policies.py.
"""
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from rpo_guard.rules.decision import (ALLOW, ATTEMPT_CAP, BLOCK, CALLBACK_REQUEST, CALLER_ID_NOT_ALLOWED, CID_0843,
                                      CID_0844, CID_FIXED, CID_HIDDEN, CID_UNCLASSIFIED, CONSENT, CONSENT_REQUIRED,
                                      CONTRACT, NOT_REGISTERED, OPTOUT, OUTSIDE_CALLING_HOURS, RPO_REGISTERED,
                                      AttemptCap, AttemptCount, CallerId, CallFacts, CallTime, ConsentEvent,
                                      Consultation, Policy, SilentCall, cap_attempts, decide, decide_rules,
                                      window_start)

T = date(2026, 11, 25)  # a Wednesday
N = "+393331234567"
BRAND = "Energia Uno"
REGISTER_ONLY = Policy(calling_hours=False, caller_id_check=False)
CONSENT_ONLY = REGISTER_ONLY._replace(require_consent=True)


def d(days_ago: int) -> date:
    return T - timedelta(days=days_ago)


def free(days_ago=1):
    return Consultation(batch_id=1, consulted_on=d(days_ago), registered=False)


def registered(days_ago=1, reg_days_ago=None):
    return Consultation(batch_id=2, consulted_on=d(days_ago), registered=True,
                        registration_date=None if reg_days_ago is None else d(reg_days_ago))


def ev(kind, days_ago, ends_days_ago=None, brand=BRAND, id=1):
    return ConsentEvent(id=id, kind=kind, given_at=d(days_ago), brand=brand,
                        ends_at=None if ends_days_ago is None else d(ends_days_ago), evidence=f"ev-{id}")


def facts(consultations=(free(),), consents=(), **kw):
    kw.setdefault("brand", BRAND)
    return CallFacts(today=T, e164=N, consultations=tuple(consultations), consents=tuple(consents), **kw)


def run(policy=CONSENT_ONLY, **kw):
    return decide(facts(**kw), policy)


# ---------------------------------------------------------------- require_consent

REQUIRE_CONSENT = [
    # (what, consultations, consents, decision, reason)
    ("nothing but a 'not registered' result", (free(),), (), BLOCK, CONSENT_REQUIRED),
    ("never consulted, nothing", (), (), BLOCK, CONSENT_REQUIRED),
    ("a live consent, not registered", (free(),), (ev("consent", 10),), ALLOW, CONSENT),
    ("a live consent, registered before it", (registered(reg_days_ago=100),), (ev("consent", 10),), ALLOW, CONSENT),
    ("a consent before the registration: the registration wins",
     (registered(reg_days_ago=100),), (ev("consent", 200),), BLOCK, RPO_REGISTERED),
    ("a live consent, never consulted", (), (ev("consent", 10),), BLOCK, "not_consulted"),
    ("a consent revoked since", (free(),), (ev("consent", 10), ev("revocation", 5, id=2)), BLOCK, CONSENT_REQUIRED),
    ("a consent given again after a revocation", (free(),),
     (ev("revocation", 10, id=2), ev("consent", 5)), ALLOW, CONSENT),
    ("a consent that expired yesterday", (free(),), (ev("consent", 100, ends_days_ago=1),), BLOCK, CONSENT_REQUIRED),
    ("a consent that expires today", (free(),), (ev("consent", 100, ends_days_ago=0),), ALLOW, CONSENT),
    ("a consent dated tomorrow", (free(),), (ev("consent", -1),), BLOCK, CONSENT_REQUIRED),
    ("a contract in force, registered", (registered(),), (ev("contract", 400),), ALLOW, CONTRACT),
    ("a contract that ended 20 days ago", (registered(),), (ev("contract", 400, ends_days_ago=20),), ALLOW, CONTRACT),
    ("a contract that ended 30 days ago (the grace's last day)", (free(),),
     (ev("contract", 400, ends_days_ago=30),), ALLOW, CONTRACT),
    ("a contract that ended 31 days ago", (free(),), (ev("contract", 400, ends_days_ago=31),), BLOCK, CONSENT_REQUIRED),
    ("a contract that ended 31 days ago, a live consent too", (free(),),
     (ev("contract", 400, ends_days_ago=31), ev("consent", 3, id=2)), ALLOW, CONSENT),
    ("a callback request today", (), (ev("callback_request", 0),), ALLOW, CALLBACK_REQUEST),
    ("a callback request 6 days ago (its 7th day)", (registered(),), (ev("callback_request", 6),),
     ALLOW, CALLBACK_REQUEST),
    ("a callback request 7 days ago: out of its window", (free(),), (ev("callback_request", 7),),
     BLOCK, CONSENT_REQUIRED),
    ("a callback request revoked", (free(),), (ev("callback_request", 2), ev("revocation", 1, id=2)),
     BLOCK, CONSENT_REQUIRED),
    ("an opt-out wins over a live consent given before it", (free(),),
     (ev("consent", 10), ev("optout", 5, id=2)), BLOCK, OPTOUT),
    ("an opt-out wins over a contract", (free(),), (ev("contract", 400), ev("optout", 5, id=2)), BLOCK, OPTOUT),
    ("an opt-out wins over a contract that ended 20 days ago", (free(),),
     (ev("contract", 400, ends_days_ago=20), ev("optout", 5, id=2)), BLOCK, OPTOUT),
    ("an opt-out for every brand wins over a live consent", (free(),),
     (ev("consent", 10), ev("optout", 5, brand="", id=2)), BLOCK, OPTOUT),
    ("a callback request after the opt-out lifts it", (free(),),
     (ev("optout", 5, id=2), ev("callback_request", 1)), ALLOW, CALLBACK_REQUEST),
    ("a consent after the opt-out lifts it", (free(),), (ev("optout", 5, id=2), ev("consent", 1)), ALLOW, CONSENT),
    ("another brand's consent does not count", (free(),), (ev("consent", 10, brand="Telco Due"),),
     BLOCK, CONSENT_REQUIRED),
]


@pytest.mark.parametrize("what, consultations, consents, decision, reason", REQUIRE_CONSENT,
                         ids=[row[0] for row in REQUIRE_CONSENT])
def test_require_consent(what, consultations, consents, decision, reason):
    v = run(consultations=consultations, consents=consents)
    assert (v.decision, v.reason) == (decision, reason), v.detail


def test_require_consent_off_keeps_todays_answers():
    """The same facts without the setting: the register decides as before."""
    assert run(REGISTER_ONLY).reason == NOT_REGISTERED
    assert run(REGISTER_ONLY, consents=(ev("contract", 400, ends_days_ago=31),)).reason == NOT_REGISTERED
    assert run(REGISTER_ONLY, consents=(ev("consent", 10),)).reason == NOT_REGISTERED  # today's reason
    assert run(REGISTER_ONLY, consultations=(registered(),)).reason == RPO_REGISTERED


def test_consent_required_detail_says_why():
    v = run(consents=(ev("contract", 400, ends_days_ago=31),))
    assert v.reason == CONSENT_REQUIRED and BRAND in v.detail and f"ended on {d(31)}" in v.detail
    assert v.basis == {"kind": "consent_required", "brand": BRAND}
    v = run(consents=(ev("consent", 10), ev("revocation", 5, id=2)))
    assert f"revoked on {d(5)}" in v.detail


def test_consent_allow_names_the_consent_and_the_consultation():
    v = run(consents=(ev("consent", 10, id=42),))
    assert v.basis["consent_id"] == 42 and v.basis["evidence"] == "ev-42"
    assert v.basis["batch_id"] == 1 and v.basis["consulted_on"] == d(1).isoformat()


def test_consent_required_comes_after_the_conduct_rules():
    """A silent call, the hour and the caller ID keep their own reason."""
    f = facts(silent_calls=(SilentCall(1, d(2)),))
    assert decide(f, CONSENT_ONLY).reason == "silent_call_cooldown"
    late = CallTime(datetime(2026, 11, 25, 21, 0, tzinfo=ZoneInfo("Europe/Rome")))
    assert decide(facts(when=late), CONSENT_ONLY._replace(calling_hours=True)).reason == OUTSIDE_CALLING_HOURS
    hidden = CallerId("", None, CID_HIDDEN)
    assert decide(facts(caller_id=hidden), CONSENT_ONLY._replace(caller_id_check=True)).reason == \
        CALLER_ID_NOT_ALLOWED


# ---------------------------------------------------------------- the caller ID's purpose

CID_0843_NUM = CallerId("0843123456", "+390843123456", CID_0843)
CID_0844_NUM = CallerId("08441234567", "+3908441234567", CID_0844)
ROME_LINE = CallerId("0612340000", "+390612340000", CID_FIXED)
CID_POLICY = REGISTER_ONLY._replace(caller_id_check=True)

PURPOSE = [
    # (purpose, caller ID, declared, decision)
    ("commercial", CID_0844_NUM, (), ALLOW),
    ("commercial", CID_0843_NUM, (), BLOCK),
    ("statistical", CID_0843_NUM, (), ALLOW),
    ("statistical", CID_0844_NUM, (), BLOCK),
    ("other", CID_0843_NUM, (), BLOCK),
    ("other", CID_0844_NUM, (), BLOCK),
    ("other", ROME_LINE, (), ALLOW),
    ("commercial", ROME_LINE, (), ALLOW),        # the purpose is checked on 0843/0844 numbers only
    ("statistical", ROME_LINE, (), ALLOW),
    ("", CID_0843_NUM, (), ALLOW),               # unset: not checked (today's behaviour)
    ("", CID_0844_NUM, (), ALLOW),
    # declared numbers come unclassified (the list decides): the purpose still reads the range
    ("commercial", CallerId("0843123456", "+390843123456", CID_UNCLASSIFIED), ("+390843123456",), BLOCK),
    ("statistical", CallerId("08441234567", "+3908441234567", CID_UNCLASSIFIED), ("+3908441234567",), BLOCK),
    ("commercial", CallerId("08441234567", "+3908441234567", CID_UNCLASSIFIED), ("+3908441234567",), ALLOW),
]


@pytest.mark.parametrize("purpose, cid, declared, decision", PURPOSE)
def test_purpose_against_the_agcom_range(purpose, cid, declared, decision):
    v = decide(facts(caller_id=cid, declared_caller_ids=declared), CID_POLICY._replace(purpose=purpose))
    assert v.decision == decision, v.detail
    if decision == BLOCK:
        assert v.reason == CALLER_ID_NOT_ALLOWED
        assert v.basis["purpose"] == purpose and v.basis["agcom_range"] in ("0843", "0844")
        assert "AGCOM 156/18/CIR" in v.detail and repr(purpose) in v.detail


def test_purpose_mismatch_details_name_the_range_and_its_use():
    v = decide(facts(caller_id=CID_0843_NUM), CID_POLICY._replace(purpose="commercial"))
    assert "0843 range, reserved for statistical research" in v.detail
    v = decide(facts(caller_id=CID_0844_NUM), CID_POLICY._replace(purpose="statistical"))
    assert "0844 range, reserved for market research, advertising and sales" in v.detail


# ---------------------------------------------------------------- require_declared_caller_id

DECLARED = CID_POLICY._replace(require_declared_caller_id=True)


def test_require_declared_caller_id_without_a_list_refuses_the_generic_fallback():
    assert decide(facts(caller_id=ROME_LINE), CID_POLICY).decision == ALLOW  # today: the fallback allows
    v = decide(facts(caller_id=ROME_LINE), DECLARED)
    assert (v.decision, v.reason) == (BLOCK, CALLER_ID_NOT_ALLOWED)
    assert "declared" in v.detail and BRAND in v.detail and v.basis["required_declared"] is True


def test_require_declared_caller_id_with_a_list():
    declared = ("+390612340000",)
    assert decide(facts(caller_id=CallerId("0612340000", "+390612340000", CID_UNCLASSIFIED),
                        declared_caller_ids=declared), DECLARED).decision == ALLOW
    v = decide(facts(caller_id=CallerId("0612349999", "+390612349999", CID_FIXED), declared_caller_ids=declared),
               DECLARED)
    assert v.reason == CALLER_ID_NOT_ALLOWED and "not one of the 1 number(s) declared" in v.detail


def test_require_declared_caller_id_and_a_hidden_caller_id():
    v = decide(facts(caller_id=CallerId("", None, CID_HIDDEN)), DECLARED)
    assert v.reason == CALLER_ID_NOT_ALLOWED and "hidden" in v.detail


def test_caller_id_settings_are_a_caller_id_rule():
    """With the caller-ID rule off in the policy nothing of it runs (Config.policy_for turns it on for a brand
    that sets require_declared_caller_id or purpose)."""
    policy = REGISTER_ONLY._replace(require_declared_caller_id=True, purpose="statistical")
    assert decide(facts(caller_id=CID_0844_NUM), policy).decision == ALLOW


# ---------------------------------------------------------------- attempt caps

CAP3 = REGISTER_ONLY._replace(attempt_caps=(AttemptCap(3, 30, False),))
SINCE = window_start(T, 30)


def counts(n, per_brand=False, since=SINCE):
    return (AttemptCount(per_brand, since, n),)


@pytest.mark.parametrize("n, decision", [(0, ALLOW), (1, ALLOW), (2, ALLOW), (3, BLOCK), (4, BLOCK)])
def test_cap_reached_at_exactly_n(n, decision):
    v = decide(facts(attempt_counts=counts(n)), CAP3)
    assert v.decision == decision
    if decision == BLOCK:
        assert v.reason == ATTEMPT_CAP and v.basis == {
            "kind": "attempt_cap", "max_attempts": 3, "window_days": 30, "since": SINCE.isoformat(),
            "scope": "number", "attempts": n}
        assert f"{n} allowed attempt(s)" in v.detail and "by any brand" in v.detail


def test_window_start_counts_the_calls_day():
    assert window_start(T, 1) == T
    assert window_start(T, 30) == T - timedelta(days=29)


def test_a_missing_count_refuses():
    v = decide(facts(), CAP3)
    assert (v.decision, v.reason) == (BLOCK, ATTEMPT_CAP) and "not known" in v.detail
    # a count of another window or scope is not this cap's
    assert decide(facts(attempt_counts=counts(0, since=SINCE + timedelta(days=1))), CAP3).reason == ATTEMPT_CAP
    assert decide(facts(attempt_counts=counts(0, per_brand=True)), CAP3).reason == ATTEMPT_CAP


def test_cap_only_turns_an_allow_into_a_block():
    """A call the other rules refuse keeps its reason: it is not counted, and the cap does not name it."""
    v = decide(facts(consultations=(registered(),), attempt_counts=counts(99)), CAP3)
    assert v.reason == RPO_REGISTERED
    v = decide(facts(consents=(ev("optout", 1),), attempt_counts=counts(99)), CAP3)
    assert v.reason == OPTOUT
    # every kind of ALLOW is capped
    for consents, reason in [((), NOT_REGISTERED), ((ev("contract", 400),), CONTRACT),
                             ((ev("callback_request", 1),), CALLBACK_REQUEST)]:
        assert decide(facts(consents=consents, attempt_counts=counts(2)), CAP3).reason == reason
        assert decide(facts(consents=consents, attempt_counts=counts(3)), CAP3).reason == ATTEMPT_CAP


def test_decide_is_cap_attempts_of_decide_rules():
    for f in [facts(attempt_counts=counts(3)), facts(attempt_counts=counts(2)),
              facts(consultations=(registered(),), attempt_counts=counts(3))]:
        assert decide(f, CAP3) == cap_attempts(decide_rules(f, CAP3), f, CAP3)
    assert decide_rules(facts(attempt_counts=counts(3)), CAP3).reason == NOT_REGISTERED


def test_brand_cap_and_global_cap_both_hold():
    policy = REGISTER_ONLY._replace(attempt_caps=(AttemptCap(4, 30, False), AttemptCap(2, 7, True)))
    brand_since = window_start(T, 7)
    both = lambda every, own: (AttemptCount(False, SINCE, every), AttemptCount(True, brand_since, own))  # noqa: E731
    assert decide(facts(attempt_counts=both(3, 1)), policy).decision == ALLOW
    v = decide(facts(attempt_counts=both(3, 2)), policy)
    assert v.reason == ATTEMPT_CAP and v.basis["scope"] == "brand" and f"by brand {BRAND}" in v.detail
    v = decide(facts(attempt_counts=both(4, 0)), policy)
    assert v.reason == ATTEMPT_CAP and v.basis["scope"] == "number"


def test_everything_at_once():
    """require_consent, a declared commercial caller ID and a cap: each in its place."""
    policy = Policy(calling_hours=False, require_consent=True, require_declared_caller_id=True,
                    purpose="commercial", attempt_caps=(AttemptCap(2, 30, True),))
    declared = ("+3908441234567",)
    cid = CallerId("08441234567", "+3908441234567", CID_UNCLASSIFIED)
    ok = dict(caller_id=cid, declared_caller_ids=declared, consents=(ev("consent", 3),),
              attempt_counts=(AttemptCount(True, SINCE, 1),))
    assert decide(facts(**ok), policy).reason == CONSENT
    assert decide(facts(**{**ok, "consents": ()}), policy).reason == CONSENT_REQUIRED
    assert decide(facts(**{**ok, "attempt_counts": (AttemptCount(True, SINCE, 2),)}), policy).reason == ATTEMPT_CAP
    assert decide(facts(**{**ok, "caller_id": CID_0843_NUM}), policy).reason == CALLER_ID_NOT_ALLOWED
    # no consent AND at the cap: the consent rule names it (the cap only turns an ALLOW)
    assert decide(facts(**{**ok, "consents": (), "attempt_counts": (AttemptCount(True, SINCE, 9),)}),
                  policy).reason == CONSENT_REQUIRED


def test_default_policy_has_no_brand_rule():
    p = Policy()
    assert (p.require_consent, p.require_declared_caller_id, p.purpose, p.attempt_caps) == (False, False, "", ())
