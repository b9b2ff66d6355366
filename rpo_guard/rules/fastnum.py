"""Bulk number normalization for imports: same answers as :func:`numbers.normalize`, ~20x faster.

:func:`numbers.normalize` parses every number with phonenumbers (~30 µs). An
import of ten million numbers cannot afford that, so :func:`bulk_normalizer`
builds, once, the checks phonenumbers itself makes for the default region's
country code, from phonenumbers' own metadata:

* the unambiguous forms (``+39...``, ``0039...``, national) give the
  national significant number (NSN) by hand, as ``phonenumbers.parse`` does
  for a region without a national prefix for parsing (Italy has none);
* the NSN is valid when it fullmatches the general pattern and one number
  type's pattern, each with its possible lengths (``_number_type_helper``),
  for the first region of the country code that claims it (IT, then VA by
  its leading digits ``06698``), as ``is_valid_number`` decides.

Everything else (a bare ``39...`` that may carry the country code without
``+``, foreign numbers, regions with a national prefix) goes to
:func:`numbers.normalize` itself, and so does every invalid number, so that
the error message is the same. ``tests/rules/test_sync_numbers.py`` checks the two
paths against each other with hypothesis.
"""
from __future__ import annotations

import re
from typing import Callable

from .numbers import MAX_INPUT, InvalidNumber, clean, normalize


def _desc_ok(desc) -> bool:
    return desc is not None and bool(desc.national_number_pattern)


def _region_validator(md) -> Callable[[str], bool]:
    """fullmatch(general) and any(fullmatch(type)) with the lengths, one regex per NSN length."""
    general = md.general_desc
    # any() of the types: the order does not change the answer, the common types go first
    types = [md.mobile, md.fixed_line, md.premium_rate, md.toll_free, md.shared_cost, md.voip,
             md.personal_number, md.pager, md.uan, md.voicemail]
    by_length: dict[int, re.Pattern] = {}
    for length in range(1, 18):
        if general.possible_length and length not in general.possible_length:
            continue
        alts = [d.national_number_pattern for d in types
                if _desc_ok(d) and (not d.possible_length or length in d.possible_length)]
        if not alts or not _desc_ok(general):
            continue
        by_length[length] = re.compile(
            rf"(?=(?:{general.national_number_pattern})\Z)(?:{'|'.join(f'(?:{a})' for a in alts)})")
    get = by_length.get

    def valid(nsn: str) -> bool:
        rx = get(len(nsn))
        return rx is not None and rx.fullmatch(nsn) is not None
    return valid


def bulk_normalizer(strip_prefixes: tuple[str, ...] = (), region: str = "IT") -> Callable[[str], str]:
    """A function raw -> E.164 (or InvalidNumber), equal to ``normalize(raw, strip_prefixes, region)``."""
    import phonenumbers
    from phonenumbers.phonenumberutil import COUNTRY_CODE_TO_REGION_CODE

    def slow(raw: str) -> str:
        return normalize(raw, strip_prefixes, region)

    cc = phonenumbers.country_code_for_region(region)
    main = phonenumbers.PhoneMetadata.metadata_for_region(region)
    if not cc or main is None or main.national_prefix_for_parsing or main.national_prefix \
            or main.international_prefix != "00":
        return slow  # the hand-made reading below would not be phonenumbers' reading
    regions = []
    for r in COUNTRY_CODE_TO_REGION_CODE.get(cc, ()):
        md = phonenumbers.PhoneMetadata.metadata_for_region(r)
        if md is None:
            continue
        lead = re.compile(md.leading_digits) if md.leading_digits else None
        regions.append((lead, _region_validator(md)))

    def valid(nsn: str) -> bool:
        # region_code_for_number, then is_valid_number_for_region on that region
        for lead, ok in regions:
            if lead is not None:
                if lead.match(nsn):
                    return ok(nsn)
            elif ok(nsn):
                return True
        return False

    plus, idd, bare = f"+{cc}", f"00{cc}", str(cc)
    n_plus, n_idd = len(plus), len(idd)

    def fast(raw: str) -> str:
        if raw.isdigit() and raw.isascii() and len(raw) <= MAX_INPUT and not strip_prefixes:
            s = raw  # what clean() returns for plain ASCII digits, without its two regexes
        else:
            s = clean(raw, strip_prefixes)
        if s is None:
            return slow(raw)  # raises with normalize's message
        if s[0] == "+":
            if not s.startswith(plus):
                return slow(raw)
            nsn = s[n_plus:]
        elif s[0] == "0" and s[1:2] == "0":
            if not s.startswith(idd):
                return slow(raw)
            nsn = s[n_idd:]
        elif s.startswith(bare):
            return slow(raw)  # "39..." : national 39x or country code without "+"
        else:
            nsn = s
        if valid(nsn):
            return plus + nsn
        return slow(raw)  # invalid: normalize raises with its own message
    return fast


__all__ = ["bulk_normalizer", "InvalidNumber"]
