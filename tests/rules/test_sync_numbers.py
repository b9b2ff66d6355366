"""The bulk normalizer gives exactly the answers of numbers.normalize (phonenumbers)."""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rpo_guard.rules.fastnum import bulk_normalizer
from rpo_guard.rules.numbers import InvalidNumber, normalize

FAST = bulk_normalizer()
FAST_PREFIXED = bulk_normalizer(("9", "0"))

digits = st.text(alphabet="0123456789", min_size=0, max_size=13)
prefixes = st.sampled_from(["", "+39", "0039", "39", "3", "31", "32", "33", "34", "35", "38", "39", "43",
                            "0", "06", "066", "0669", "06698", "02", "0831", "0878", "800", "803", "84",
                            "89", "892", "8945", "144", "166", "178", "199", "55", "+390", "+3906",
                            "00390", "+44", "0044", "+378", "00", "9", "1"])
separators = st.sampled_from(["", " ", "-", ".", "/", " - "])


def both(raw, prefixes=()):
    f = FAST if not prefixes else FAST_PREFIXED
    try:
        slow = normalize(raw, prefixes)
    except InvalidNumber as exc:
        slow = ("invalid", str(exc))
    try:
        fast = f(raw)
    except InvalidNumber as exc:
        fast = ("invalid", str(exc))
    return slow, fast


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prefixes, digits, separators)
def test_same_answer_as_normalize(prefix, body, sep):
    raw = prefix + sep + body
    slow, fast = both(raw)
    assert fast == slow, raw


@settings(max_examples=500, deadline=None)
@given(prefixes, digits)
def test_same_answer_with_strip_prefixes(prefix, body):
    slow, fast = both(prefix + body, ("9", "0"))
    assert fast == slow


def test_known_answers():
    assert FAST("0612345678") == "+390612345678"  # the leading 0 of a fixed line stays
    assert FAST("+39 333 123 4567") == "+393331234567"
    assert FAST("0039 06 6988 1234") == normalize("0039 06 6988 1234")  # Vatican range, still +39
    for bad in ("12", "abc", "", "+39 0", "333123456789012345"):
        try:
            FAST(bad)
        except InvalidNumber:
            continue
        raise AssertionError(f"{bad!r} accepted")
