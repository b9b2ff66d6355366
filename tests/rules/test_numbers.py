"""Number normalization: every dialer form, the leading 0, the fast path agreeing with phonenumbers."""
import pytest

from rpo_guard.rules.numbers import InvalidNumber, candidate_e164, normalize

FORMS = {
    "+390612345678": ["0612345678", "06 1234 5678", "06-1234-5678", "06.1234.5678", "(06) 12345678",
                      "+39 06 1234 5678", "+390612345678", "0039 06 1234 5678", "00390612345678",
                      "390612345678"],
    "+393331234567": ["3331234567", "333 123 4567", "+39 333 123 4567", "0039 333 1234567",
                      "393331234567", "+39-333-123-4567"],
    "+393912345678": ["3912345678"],  # a 391 mobile, not +39 12345678
}


@pytest.mark.parametrize("raw, e164", [(raw, e164) for e164, raws in FORMS.items() for raw in raws])
def test_every_form_normalizes(raw, e164):
    assert normalize(raw) == e164


def test_leading_zero_of_fixed_lines_survives():
    assert normalize("0612345678") == "+390612345678"
    assert normalize("0612345678") != "+39612345678"


@pytest.mark.parametrize("raw", ["", "12345", "abc", "+39", "06 1234 567x", "3331234567;", "1" * 80,
                                 "0612345678\n", '06"12345678', "+39 333 12"])
def test_not_a_number_is_refused(raw):
    with pytest.raises(InvalidNumber):
        normalize(raw)


@pytest.mark.parametrize("prefixes, raw, e164", [
    (("9",), "9 0612345678", "+390612345678"),
    (("*31#",), "*31#3331234567", "+393331234567"),
    (("9", "*31#"), "*31#0039 06 1234 5678", "+390612345678"),
])
def test_configured_prefixes_are_stripped_once(prefixes, raw, e164):
    assert normalize(raw, prefixes) == e164
    assert candidate_e164(raw, prefixes) == e164


def test_fast_path_agrees_with_phonenumbers_where_it_answers():
    for e164, raws in FORMS.items():
        for raw in raws:
            cand = candidate_e164(raw)
            assert cand is None or cand == normalize(raw), raw


def test_fast_path_leaves_bare_country_code_to_phonenumbers():
    assert candidate_e164("390612345678") is None
    assert candidate_e164("3912345678") is None


def test_foreign_numbers_keep_their_country():
    assert normalize("+44 20 7946 0958") == "+442079460958"
    assert normalize("0044 20 7946 0958") == "+442079460958"
