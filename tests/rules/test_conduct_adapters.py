"""The adapters of the conduct rules: Italian holidays and caller-ID classification."""
from __future__ import annotations

from datetime import date, timedelta

import holidays
import pytest

from rpo_guard.rules import callerid
from rpo_guard.rules.calendar_it import SAN_FRANCESCO, local_holiday, national_holidays, with_san_francesco
from rpo_guard.rules.decision import CID_0843, CID_0844, CID_FIXED, CID_FOREIGN, CID_HIDDEN, CID_INVALID, CID_MOBILE, \
    CID_OTHER, CID_UNCLASSIFIED
from rpo_guard.rules.numbers import InvalidNumber

EASTER = {2024: date(2024, 3, 31), 2025: date(2025, 4, 20), 2026: date(2026, 4, 5), 2027: date(2027, 3, 28),
          2028: date(2028, 4, 16), 2029: date(2029, 4, 1), 2030: date(2030, 4, 21)}
FIXED = ["01-01", "01-06", "04-25", "05-01", "06-02", "08-15", "11-01", "12-08", "12-25", "12-26"]


def statutory(year: int) -> set[date]:
    """The national holidays as rpo-rules.md section 3 lists them."""
    days = {date.fromisoformat(f"{year}-{md}") for md in FIXED}
    days |= {EASTER[year], EASTER[year] + timedelta(days=1)}
    if year >= 2026:
        days.add(date(year, 10, 4))  # Legge 151/2025
    return days


@pytest.mark.parametrize("year", sorted(EASTER))
def test_holidays_package_knows_the_statutory_list(year):
    """The installed package itself (not our addition) knows Easter, Easter Monday and 4 October."""
    package = set(holidays.country_holidays("IT", years=year))
    assert statutory(year) <= package
    # anything more it lists falls on a Sunday (the first Sunday of November observance), so
    # it changes no calling hours: Sundays are closed and Saturdays have reduced hours anyway
    assert all(d.weekday() == 6 for d in package - statutory(year)), sorted(package - statutory(year))


@pytest.mark.parametrize("year", sorted(EASTER))
def test_national_holidays_used_by_the_rule(year):
    assert statutory(year) <= set(national_holidays(year))
    assert (date(year, 10, 4) in national_holidays(year)) == (year >= 2026)


def test_san_francesco_added_when_a_package_does_not_know_it():
    """Older holidays releases (before their Legge 151/2025 update) lack 4 October."""
    old_2026 = {d: "x" for d in statutory(2026) if d != date(2026, 10, 4)}
    assert with_san_francesco(2026, dict(old_2026))[date(2026, 10, 4)] == SAN_FRANCESCO
    assert date(2025, 10, 4) not in with_san_francesco(2025, {d: "x" for d in statutory(2025)})
    known = {date(2027, 10, 4): "Saint Francis"}
    assert with_san_francesco(2027, dict(known)) == known


def test_local_holiday_setting():
    assert local_holiday(date(2027, 6, 29), ("06-29",)) and local_holiday(date(2031, 6, 29), ("06-29",))
    assert local_holiday(date(2027, 6, 29), ("2027-06-29",))
    assert not local_holiday(date(2028, 6, 29), ("2027-06-29",))
    assert not local_holiday(date(2027, 6, 28), ("06-29", "12-07"))


# ---------------------------------------------------------------- caller ID

@pytest.mark.parametrize("raw, e164, kind", [
    ("0612340000", "+390612340000", CID_FIXED),
    ("+39 06 1234 0000", "+390612340000", CID_FIXED),
    ("00390612340000", "+390612340000", CID_FIXED),
    ("3331112222", "+393331112222", CID_MOBILE),
    ("+393331112222", "+393331112222", CID_MOBILE),
    # AGCOM 156/18/CIR ranges, which libphonenumber rejects
    ("0843123456", "+390843123456", CID_0843),
    ("0844 1234567", "+3908441234567", CID_0844),
    ("+3908441234567", "+3908441234567", CID_0844),
    ("003908431234567", "+3908431234567", CID_0843),
    ("3908441234567", "+3908441234567", CID_0844),
    ("08441", None, CID_INVALID),               # too short for a number
    ("084412345678", None, CID_INVALID),        # 12 digits: too long
    ("800123456", "+39800123456", CID_OTHER),   # toll-free
    ("899123456", "+39899123456", CID_OTHER),   # premium
    ("+447911123456", "+447911123456", CID_FOREIGN),
    ("+378 0549 123456", None, None),           # San Marino: foreign (or invalid), never allowed
    ("12", None, CID_INVALID),
    ("06-12x", None, CID_INVALID),
])
def test_classify(raw, e164, kind):
    got = callerid.classify(raw)
    if kind is None:
        assert got[1] in (CID_FOREIGN, CID_INVALID)
    else:
        assert got == (e164, kind)


def test_libphonenumber_really_rejects_0843_0844():
    """Why the explicit handling exists: if this starts failing, the special case may go."""
    import phonenumbers
    for n in ("0843123456", "08441234567"):
        assert not phonenumbers.is_valid_number(phonenumbers.parse(n, "IT"))


@pytest.mark.parametrize("raw, pres, kind", [
    ("unknown", "67", CID_HIDDEN),          # transcript 01: no caller ID set
    ("", "0", CID_HIDDEN),
    ("Anonymous", "0", CID_HIDDEN),
    ("0612340000", "32", CID_HIDDEN),       # presentation prohibited
    ("0612340000", "35", CID_HIDDEN),
    ("0612340000", "junk", CID_HIDDEN),     # unreadable presentation: fail closed
    ("0612340000", "", CID_HIDDEN),
    ("0612340000", "0", CID_FIXED),         # transcript 02
    ("0612340000", "67", CID_FIXED),        # a number given as argument while the channel has none
    ("0612340000", None, CID_FIXED),        # CLI: no presentation known
])
def test_read_presentation(raw, pres, kind):
    assert callerid.read(raw, pres).kind == kind


def test_read_with_a_declared_list_skips_classification():
    got = callerid.read("+390612340000", "0", ("+390612340000",))
    assert (got.e164, got.kind) == ("+390612340000", CID_UNCLASSIFIED)
    got = callerid.read("0612349999", "0", ("+390612340000",))
    assert (got.e164, got.kind) == ("+390612349999", CID_FIXED)


def test_declared_numbers_must_be_italian_and_valid():
    assert callerid.normalize_declared("0844 1234567") == "+3908441234567"
    assert callerid.normalize_declared("800123456") == "+39800123456"  # recallable, may be declared
    with pytest.raises(InvalidNumber):
        callerid.normalize_declared("+447911123456")
    with pytest.raises(InvalidNumber):
        callerid.normalize_declared("12345")
