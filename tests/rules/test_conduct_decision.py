"""Decision table of the conduct-code rules (issue 6), on the pure function.

The calendar facts (holiday names) come from rpo_guard.rules.calendar_it, i.e. from
the real holidays package; the decision itself gets them as plain facts.
"""
from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from rpo_guard.rules.calendar_it import call_time, local_time
from rpo_guard.rules.decision import (ALLOW, BLOCK, CALLBACK_REQUEST, CALLER_ID_NOT_ALLOWED, CID_0843, CID_0844,
                                CID_FIXED, CID_FOREIGN, CID_HIDDEN, CID_INVALID, CID_MOBILE, CID_OTHER,
                                CID_UNCLASSIFIED, CONTRACT, INTERNAL_DNC, NOT_REGISTERED, OPTOUT,
                                OUTSIDE_CALLING_HOURS, RPO_REGISTERED, SILENT_CALL_COOLDOWN, CallerId, CallFacts,
                                ConsentEvent, Consultation, DncEntry, Policy, SilentCall, decide)

ROME = ZoneInfo("Europe/Rome")
NUMBER = "+393331234567"
FIXED_CID = CallerId("0612340000", "+390612340000", CID_FIXED)


def facts(local: str | datetime, *, registered: bool = False, brand: str = "Energia Uno",
          caller_id: CallerId | None = FIXED_CID, local_holidays: tuple[str, ...] = (), **kw) -> CallFacts:
    """A callable number (consulted that day, not registered) called at ``local`` (Europe/Rome)."""
    at = datetime.fromisoformat(local).replace(tzinfo=ROME) if isinstance(local, str) else local
    when = call_time(at, "Europe/Rome", local_holidays)
    today = when.local.date()
    kw.setdefault("consultations", (Consultation(1, today - timedelta(days=1), registered),))
    return CallFacts(today=today, e164=NUMBER, brand=brand, when=when, caller_id=caller_id, **kw)


def verdict(local, **kw):
    policy = kw.pop("policy", Policy())
    return decide(facts(local, **kw), policy)


# ---------------------------------------------------------------- calling hours

HOURS = [
    # weekday (Wednesday 25 November 2026)
    ("2026-11-25T08:59:59", BLOCK, "weekday, before 09:00"),
    ("2026-11-25T09:00", ALLOW, "weekday, 09:00 opens"),
    ("2026-11-25T19:59", ALLOW, "weekday, 19:59"),
    ("2026-11-25T19:59:59", ALLOW, "weekday, last second"),
    ("2026-11-25T20:00", BLOCK, "weekday, 20:00 closes"),
    # Saturday 28 November 2026
    ("2026-11-28T09:59", BLOCK, "Saturday 09:59"),
    ("2026-11-28T10:00", ALLOW, "Saturday 10:00"),
    ("2026-11-28T18:59", ALLOW, "Saturday 18:59"),
    ("2026-11-28T19:00", BLOCK, "Saturday 19:00"),
    # a weekday before a public holiday: Monday 7 December 2026 (8 December, Tuesday)
    ("2026-12-07T09:59", BLOCK, "day before a holiday 09:59"),
    ("2026-12-07T10:00", ALLOW, "day before a holiday 10:00"),
    ("2026-12-07T18:59", ALLOW, "day before a holiday 18:59"),
    ("2026-12-07T19:00", BLOCK, "day before a holiday 19:00"),
    ("2026-12-24T19:30", BLOCK, "Christmas Eve (Thursday) after 19:00"),
    ("2026-12-23T19:30", ALLOW, "two days before Christmas: weekday hours"),
    # public holidays on weekdays, and Sundays
    ("2026-12-08T12:00", BLOCK, "Immacolata, a Tuesday"),
    ("2026-12-25T12:00", BLOCK, "Christmas, a Friday"),
    ("2026-12-26T12:00", BLOCK, "Santo Stefano, a Saturday"),
    ("2026-11-29T12:00", BLOCK, "a Sunday"),
    ("2026-11-29T10:00", BLOCK, "a Sunday, inside every window"),
    # Easter: Sunday, Monday, and the Saturday before
    ("2026-04-05T12:00", BLOCK, "Easter Sunday 2026"),
    ("2026-04-06T12:00", BLOCK, "Easter Monday 2026"),
    ("2027-03-29T12:00", BLOCK, "Easter Monday 2027"),
    ("2026-04-04T12:00", ALLOW, "Saturday before Easter"),
    ("2026-04-07T09:00", ALLOW, "Tuesday after Easter Monday"),
    # 4 October, national holiday again from 2026 (Legge 151/2025)
    ("2025-10-04T12:00", ALLOW, "4 Oct 2025, a Saturday, not yet a holiday"),
    ("2025-10-03T19:30", ALLOW, "3 Oct 2025: not the day before a holiday"),
    ("2027-10-04T12:00", BLOCK, "4 Oct 2027, a Monday"),
    ("2028-10-03T19:30", BLOCK, "3 Oct 2028, the day before San Francesco, after 19:00"),
    ("2028-10-03T18:59", ALLOW, "3 Oct 2028, the day before San Francesco, 18:59"),
    # the DST change days are Sundays; the weekdays after keep 09:00-20:00 on the wall clock
    ("2026-03-29T12:00", BLOCK, "DST starts (last Sunday of March)"),
    ("2026-03-29T02:30", BLOCK, "DST starts: 02:30 does not exist (03:30)"),
    ("2026-10-25T02:30", BLOCK, "DST ends (last Sunday of October): 02:30 happens twice"),
    ("2026-03-30T08:59", BLOCK, "Monday after DST starts, 08:59"),
    ("2026-03-30T09:00", ALLOW, "Monday after DST starts, 09:00"),
    ("2026-10-26T08:59", BLOCK, "Monday after DST ends, 08:59"),
    ("2026-10-26T09:00", ALLOW, "Monday after DST ends, 09:00"),
    ("2026-03-30T02:30", BLOCK, "Monday 02:30"),
]


@pytest.mark.parametrize("local, expected, why", HOURS, ids=[h[2] for h in HOURS])
def test_calling_hours_edges(local, expected, why):
    v = verdict(local)
    assert v.decision == expected, (why, v)
    assert v.reason == (NOT_REGISTERED if expected == ALLOW else OUTSIDE_CALLING_HOURS)


@pytest.mark.parametrize("utc, expected, local_hhmm", [
    ("2026-03-27T08:00:00+00:00", ALLOW, "09:00"),  # Friday before the change: UTC+1
    ("2026-03-27T07:59:00+00:00", BLOCK, "08:59"),
    ("2026-03-30T07:00:00+00:00", ALLOW, "09:00"),  # Monday after: UTC+2
    ("2026-03-30T06:59:00+00:00", BLOCK, "08:59"),
    ("2026-03-30T17:59:00+00:00", ALLOW, "19:59"),
    ("2026-03-30T18:00:00+00:00", BLOCK, "20:00"),
    ("2026-10-26T08:00:00+00:00", ALLOW, "09:00"),  # Monday after the change back: UTC+1
    ("2026-10-26T07:59:00+00:00", BLOCK, "08:59"),
    ("2026-10-26T19:00:00+00:00", BLOCK, "20:00"),
])
def test_dst_instants_are_judged_on_the_rome_wall_clock(utc, expected, local_hhmm):
    at = local_time(datetime.fromisoformat(utc), "Europe/Rome")
    assert at.strftime("%H:%M") == local_hhmm
    assert verdict(at).decision == expected


def test_nonexistent_local_time_is_normalized():
    at = local_time(datetime(2026, 3, 29, 2, 30), "Europe/Rome")
    assert (at.hour, at.minute, at.utcoffset()) == (3, 30, timedelta(hours=2))
    assert local_time(datetime(2026, 10, 25, 2, 30), "Europe/Rome").utcoffset() == timedelta(hours=2)


def test_holiday_detail_names_the_holiday():
    v = verdict("2026-04-06T12:00")
    assert "Easter Monday" in v.detail and v.basis["holiday"]


def test_local_holiday_and_its_eve():
    milan = ("12-07",)
    # 7 December 2027 is a Tuesday; 6 December its eve
    assert verdict("2027-12-07T12:00", local_holidays=milan).reason == OUTSIDE_CALLING_HOURS
    assert verdict("2027-12-06T19:30", local_holidays=milan).reason == OUTSIDE_CALLING_HOURS
    assert verdict("2027-12-06T18:59", local_holidays=milan).decision == ALLOW
    assert verdict("2027-12-06T19:30").decision == ALLOW  # without the setting
    one_off = ("2027-06-29",)
    assert verdict("2027-06-29T12:00", local_holidays=one_off).reason == OUTSIDE_CALLING_HOURS
    assert verdict("2028-06-29T12:00", local_holidays=one_off).decision == ALLOW


def test_custom_windows_and_switch():
    p = Policy(weekday_window=(time(9, 30), time(19)), reduced_window=(time(11), time(13)))
    assert verdict("2026-11-25T09:15", policy=p).reason == OUTSIDE_CALLING_HOURS
    assert verdict("2026-11-25T09:30", policy=p).decision == ALLOW
    assert verdict("2026-11-28T12:59", policy=p).decision == ALLOW
    assert verdict("2026-11-28T13:00", policy=p).reason == OUTSIDE_CALLING_HOURS
    off = Policy(calling_hours=False)
    assert verdict("2026-11-29T03:00", policy=off).decision == ALLOW
    assert verdict("2026-12-25T12:00", policy=off).decision == ALLOW


def test_unknown_time_blocks_when_the_rule_is_on():
    f = facts("2026-11-25T12:00")._replace(when=None)
    assert decide(f).reason == OUTSIDE_CALLING_HOURS
    assert decide(f, Policy(calling_hours=False)).decision == ALLOW


def test_time_and_date_must_agree():
    f = facts("2026-11-25T12:00")._replace(today=date(2026, 11, 26))
    assert decide(f).reason == "error"


# ---------------------------------------------------------------- caller ID

DECLARED = ("+390612340000", "+3908441234567")


@pytest.mark.parametrize("cid, declared, expected", [
    (FIXED_CID, (), ALLOW),
    (CallerId("3331112222", "+393331112222", CID_MOBILE), (), ALLOW),
    (CallerId("0843123456", "+390843123456", CID_0843), (), ALLOW),
    (CallerId("08441234567", "+3908441234567", CID_0844), (), ALLOW),
    (CallerId("800123456", "+39800123456", CID_OTHER), (), BLOCK),      # toll-free: not allowed by default
    (CallerId("+447911123456", "+447911123456", CID_FOREIGN), (), BLOCK),
    (CallerId("12", None, CID_INVALID), (), BLOCK),
    (CallerId("unknown", None, CID_HIDDEN), (), BLOCK),
    (CallerId("", None, CID_HIDDEN), (), BLOCK),
    (CallerId("0612340000", None, CID_HIDDEN), DECLARED, BLOCK),       # presentation restricted
    # a declared list decides alone
    (CallerId("0612340000", "+390612340000", CID_UNCLASSIFIED), DECLARED, ALLOW),
    (CallerId("08441234567", "+3908441234567", CID_0844), DECLARED, ALLOW),
    (CallerId("0612349999", "+390612349999", CID_FIXED), DECLARED, BLOCK),  # valid, but undeclared
    (CallerId("3331112222", "+393331112222", CID_MOBILE), DECLARED, BLOCK),
])
def test_caller_id(cid, declared, expected):
    v = verdict("2026-11-25T12:00", caller_id=cid, declared_caller_ids=declared)
    assert v.decision == expected, v
    if expected == BLOCK:
        assert v.reason == CALLER_ID_NOT_ALLOWED and v.basis["kind"] == "caller_id"


def test_caller_id_missing_blocks_unless_switched_off():
    assert verdict("2026-11-25T12:00", caller_id=None).reason == CALLER_ID_NOT_ALLOWED
    assert verdict("2026-11-25T12:00", caller_id=None, policy=Policy(caller_id_check=False)).decision == ALLOW


def test_caller_id_blocks_even_a_contract():
    contract = ConsentEvent(1, "contract", date(2026, 1, 1), "Energia Uno")
    v = verdict("2026-11-25T12:00", registered=True, consents=(contract,),
                caller_id=CallerId("unknown", None, CID_HIDDEN))
    assert v.reason == CALLER_ID_NOT_ALLOWED
    assert verdict("2026-11-25T12:00", registered=True, consents=(contract,)).reason == CONTRACT


# ---------------------------------------------------------------- silent calls

def test_silent_call_cooldown_first_and_last_day():
    silent = (SilentCall(5, date(2026, 11, 16)),)  # a Monday
    assert verdict("2026-11-13T12:00", silent_calls=silent).decision == ALLOW  # before it (what-if)
    first = verdict("2026-11-16T12:00", silent_calls=silent)
    assert first.reason == SILENT_CALL_COOLDOWN and first.basis["silent_call_id"] == 5
    last = verdict("2026-11-23T12:00", silent_calls=silent)  # D + 7: still less than 7 days after a late call
    assert last.reason == SILENT_CALL_COOLDOWN and last.basis["until"] == "2026-11-23"
    assert verdict("2026-11-24T12:00", silent_calls=silent).decision == ALLOW  # D + 8
    assert verdict("2026-11-24T12:00", silent_calls=silent,
                   policy=Policy(silent_call_days=10)).reason == SILENT_CALL_COOLDOWN


def test_silent_call_covers_every_brand_and_beats_an_allow():
    silent = (SilentCall(1, date(2026, 11, 20)),)
    contract = ConsentEvent(1, "contract", date(2026, 1, 1), "Telco Due")
    v = verdict("2026-11-25T12:00", brand="Telco Due", consents=(contract,), silent_calls=silent)
    assert v.reason == SILENT_CALL_COOLDOWN


# ---------------------------------------------------------------- callback requests

def cb(given: date, brand="Energia Uno", ends=None, id=10):
    return ConsentEvent(id, "callback_request", given, brand, ends, "rec-cb")


def test_callback_request_for_one_brand_tried_from_another():
    ev = (cb(date(2026, 11, 24)),)
    own = verdict("2026-11-25T12:00", registered=True, consents=ev)
    assert (own.decision, own.reason) == (ALLOW, CALLBACK_REQUEST)
    assert own.basis["consent_id"] == 10
    # the store hands the decision only the brand's own events; even if another
    # brand's callback reached it, it must not count
    other = verdict("2026-11-25T12:00", registered=True, consents=ev, brand="Telco Due")
    assert (other.decision, other.reason) == (BLOCK, RPO_REGISTERED)


def test_callback_window_first_and_last_day():
    ev = (cb(date(2026, 11, 16)),)  # default 7 days: 16 .. 22 November
    assert verdict("2026-11-16T12:00", registered=True, consents=ev).reason == CALLBACK_REQUEST
    assert verdict("2026-11-21T12:00", registered=True, consents=ev).reason == CALLBACK_REQUEST  # Saturday
    assert verdict("2026-11-23T12:00", registered=True, consents=ev).reason == RPO_REGISTERED
    assert verdict("2026-11-20T12:00", registered=True, consents=(cb(date(2026, 11, 16), ends=date(2026, 11, 18)),)
                   ).reason == RPO_REGISTERED  # ends_at shortens it
    assert verdict("2026-11-13T12:00", registered=True, consents=ev).reason == RPO_REGISTERED  # not yet given
    assert verdict("2026-11-25T12:00", registered=True, consents=ev,
                   policy=Policy(callback_days=10)).reason == CALLBACK_REQUEST


def test_callback_allows_without_a_consultation_but_not_outside_hours():
    ev = (cb(date(2026, 11, 24)),)
    assert verdict("2026-11-25T12:00", consents=ev, consultations=()).reason == CALLBACK_REQUEST
    assert verdict("2026-11-25T20:30", consents=ev, registered=True).reason == OUTSIDE_CALLING_HOURS


def test_callback_revoked_or_stopped():
    given = date(2026, 11, 20)
    revoked = (cb(given), ConsentEvent(11, "revocation", date(2026, 11, 21), "Energia Uno"))
    assert verdict("2026-11-23T12:00", registered=True, consents=revoked).reason == RPO_REGISTERED
    optout_after = (cb(given), ConsentEvent(12, "optout", date(2026, 11, 21), "Energia Uno"))
    assert verdict("2026-11-23T12:00", registered=True, consents=optout_after).reason == OPTOUT
    optout_before = (ConsentEvent(12, "optout", date(2026, 11, 1), ""), cb(given))
    assert verdict("2026-11-23T12:00", registered=True, consents=optout_before).reason == CALLBACK_REQUEST
    # once the callback window is over, the earlier opt-out holds again
    assert verdict("2026-11-30T12:00", registered=False, consents=optout_before).reason == OPTOUT
    dnc = (DncEntry(1, "", "complaint"),)
    assert verdict("2026-11-23T12:00", consents=(cb(given),), dnc=dnc).reason == INTERNAL_DNC


# ---------------------------------------------------------------- order of the rules

def test_order_of_the_new_rules():
    silent = (SilentCall(1, date(2026, 11, 29)),)
    hidden = CallerId("unknown", None, CID_HIDDEN)
    sunday = "2026-11-29T12:00"
    assert verdict(sunday, silent_calls=silent, caller_id=hidden).reason == SILENT_CALL_COOLDOWN
    assert verdict(sunday, caller_id=hidden).reason == CALLER_ID_NOT_ALLOWED
    assert verdict(sunday).reason == OUTSIDE_CALLING_HOURS
    optout = (ConsentEvent(1, "optout", date(2026, 11, 1), ""),)
    assert verdict(sunday, consents=optout, silent_calls=silent).reason == OPTOUT
    assert verdict(sunday, dnc=(DncEntry(1),), silent_calls=silent).reason == INTERNAL_DNC
    f = facts(sunday)._replace(e164=None)
    assert decide(f).reason == "invalid_number"


def test_utc_datetime_given_to_call_time():
    at = datetime(2026, 11, 25, 18, 59, tzinfo=timezone.utc)  # 19:59 in Rome
    assert verdict(at).decision == ALLOW
    assert verdict(at + timedelta(minutes=1)).reason == OUTSIDE_CALLING_HOURS
