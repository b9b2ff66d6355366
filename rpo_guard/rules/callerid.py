"""The presented caller ID: read, classify, and the per-brand declared list.

What the called person sees is ``CALLERID(num)`` of the outbound channel
(``agi_callerid`` in the AGI environment) unless the dialplan passes it as the
AGI's third argument. It is *hidden* when it is empty or a placeholder
(``unknown``, ``anonymous``...), or when the channel's presentation
(``agi_callingpres``) is restricted: Asterisk's presentation values carry
0x20 for "restricted"; a value that is not a number is treated as restricted
(fail closed). "Number not available" (0x40, the 67 Asterisk shows when no
caller ID is set) only says that the channel has none: a number passed as
the argument is then what counts.

Classification (AGCOM; ``shared/domain/rpo-rules.md`` section 3): an Italian
geographic (fixed) or mobile number, or one in the 0843 (statistics) / 0844
(market research, advertising, sales) ranges of AGCOM decision 156/18/CIR,
can be called back and is allowed when the brand has no declared list.
libphonenumber does not know 0843/0844 (its Italian fixed-line pattern
rejects them), so they are recognized here explicitly: ``0843``/``0844``
followed by digits, 6 to 11 digits in all like Italian geographic numbers
(the exact length is not in the public text).

phonenumbers is imported only when a classification is needed: a caller ID
found in the brand's declared list needs none (the list was validated on
the way in, as the numbers of the register are).
"""
from __future__ import annotations

from functools import lru_cache

from .decision import (CID_0843, CID_0844, CID_FIXED, CID_FOREIGN, CID_HIDDEN, CID_INVALID, CID_MOBILE,
                       CID_OTHER, CID_UNCLASSIFIED, CallerId)
from .numbers import InvalidNumber, candidate_e164, clean

HIDDEN_WORDS = frozenset({"", "unknown", "anonymous", "restricted", "private", "withheld", "unavailable",
                          "<unknown>", "null"})
PRES_RESTRICTED = 0x20
_AGCOM_PREFIXES = {"0843": CID_0843, "0844": CID_0844}


def presentation_restricted(callingpres: str | None) -> bool:
    """True when Asterisk will withhold the number. None = not known here (a CLI check)."""
    if callingpres is None:
        return False
    try:
        return bool(int(callingpres.strip()) & PRES_RESTRICTED)
    except ValueError:
        return True


def _italian_national(s: str) -> str | None:
    """The national significant number of an Italian form, or None."""
    if s.startswith("+39"):
        return s[3:]
    if s.startswith("0039"):
        return s[4:]
    if s.startswith("39") and len(s) >= 11:  # too long for a national 3xx mobile: the country code
        return s[2:]
    if s.startswith("0"):
        return s
    return None


def agcom_range(s: str) -> tuple[str, str] | None:
    """(E.164, kind) when ``s`` is a 0843/0844 number, else None."""
    national = _italian_national(s)
    if national is None or not national.isdigit():
        return None
    kind = _AGCOM_PREFIXES.get(national[:4])
    if kind is None or not 6 <= len(national) <= 11 or len(national) == 4:
        return None
    return "+39" + national, kind


@lru_cache(maxsize=4096)
def classify(raw: str) -> tuple[str | None, str]:
    """(E.164 or None, kind) of a caller ID that is not hidden.

    Cached: a call center presents a handful of caller IDs, and a
    long-running server (FastAGI) then parses each one once."""
    s = clean(raw)
    if s is None:
        return None, CID_INVALID
    agcom = agcom_range(s)
    if agcom is not None:
        return agcom
    import phonenumbers

    from .numbers import normalize
    try:
        e164 = normalize(s, (), "IT")
    except InvalidNumber:
        return None, CID_INVALID
    parsed = phonenumbers.parse(e164, None)
    if parsed.country_code != 39:
        return e164, CID_FOREIGN
    kind = phonenumbers.number_type(parsed)
    if kind == phonenumbers.PhoneNumberType.FIXED_LINE:
        return e164, CID_FIXED
    if kind == phonenumbers.PhoneNumberType.MOBILE:
        return e164, CID_MOBILE
    return e164, CID_OTHER


def read(raw: str | None, callingpres: str | None = None, declared: tuple[str, ...] = ()) -> CallerId:
    """The :class:`CallerId` fact for the decision."""
    raw = (raw or "").strip()
    if presentation_restricted(callingpres) or raw.lower() in HIDDEN_WORDS:
        return CallerId(raw, None, CID_HIDDEN)
    if declared:
        cand = candidate_e164(raw)
        if cand is not None and cand in declared:
            return CallerId(raw, cand, CID_UNCLASSIFIED)
    e164, kind = classify(raw)
    return CallerId(raw, e164, kind)


def normalize_declared(raw: str) -> str:
    """E.164 of a number to declare; raises InvalidNumber unless it can be called back."""
    e164, kind = classify(raw)
    if e164 is None:
        raise InvalidNumber(f"not a phone number: {raw!r}")
    if kind == CID_FOREIGN:
        raise InvalidNumber(f"{raw!r} ({e164}) is a foreign number: calls to Italy must show an Italian one")
    return e164
