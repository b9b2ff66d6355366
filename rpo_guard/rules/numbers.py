"""Phone-number normalization to E.164 (default region IT).

Two paths give the same answer:

* :func:`candidate_e164` is the cheap exact path used on every call. For the
  forms that have one reading only (national, ``+39``, ``0039``) it builds
  the E.164 string by hand. It does not validate: the caller treats the
  candidate as valid only when the store already holds that exact number,
  and the store accepts numbers only through :func:`normalize` (phonenumbers).
* :func:`normalize` validates with phonenumbers. It is imported lazily, so a
  call whose number is known to the store never pays for it.

The leading 0 of Italian fixed lines is part of the number: ``06 1234 5678``
is ``+390612345678``, never ``+39612345678``.
"""
from __future__ import annotations

# Separators a dialer or a person may put in a number: space, tab, no-break
# space, - . / ( ). Plain str methods: no regex to compile on every AGI start.
_SEPARATORS = str.maketrans("", "", " \t\u00a0-./()")
MAX_INPUT = 64


def _plus_digits(s: str) -> bool:
    """True for "+digits" or "digits" (ASCII 0-9 only)."""
    body = s[1:] if s.startswith("+") else s
    return body.isascii() and body.isdigit()


class InvalidNumber(ValueError):
    """The string is not a valid phone number."""


def clean(raw: str, strip_prefixes: tuple[str, ...] = ()) -> str | None:
    """Remove separators and one configured outside-line/tech prefix.

    Returns ``+digits`` or ``digits``, or None when anything else is left.
    """
    if raw is None or len(raw) > MAX_INPUT:
        return None
    s = raw.translate(_SEPARATORS)
    for prefix in strip_prefixes:
        if prefix and s.startswith(prefix) and len(s) > len(prefix):
            s = s[len(prefix):]
            break
    if not _plus_digits(s):
        return None
    return s


def candidate_e164(raw: str, strip_prefixes: tuple[str, ...] = (), country: str = "39") -> str | None:
    """The one E.164 reading of an unambiguous form, without validating it.

    None for the forms that need phonenumbers to read (a bare ``39...``
    country code, anything unusual).
    """
    s = clean(raw, strip_prefixes)
    if s is None:
        return None
    if s.startswith("+"):
        return s
    if s.startswith("00"):
        return "+" + s[2:]
    if s.startswith(country):
        return None  # "39..." may be a national 39x mobile or a bare country code
    return f"+{country}{s}"


def normalize(raw: str, strip_prefixes: tuple[str, ...] = (), region: str = "IT") -> str:
    """Validate with phonenumbers and return E.164, or raise InvalidNumber.

    A number that starts with the country code without ``+`` (``39...``) is
    read as libphonenumber reads it: national when that reading is valid,
    else with the country code stripped. When both readings are valid and
    differ, the input is ambiguous and refused (fail closed).
    """
    import phonenumbers

    s = clean(raw, strip_prefixes)
    if s is None:
        raise InvalidNumber(f"not a phone number: {raw!r}")
    try:
        parsed = phonenumbers.parse(s, region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidNumber(f"not a phone number: {raw!r} ({exc})") from None
    if not phonenumbers.is_valid_number(parsed):
        raise InvalidNumber(f"not a valid number: {raw!r}")
    e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    if not s.startswith(("+", "00")):
        cc = str(phonenumbers.country_code_for_region(region))
        if s.startswith(cc):
            readings = set()
            for reading in (f"+{cc}{s}", f"+{s}"):
                p = phonenumbers.parse(reading, region)
                if phonenumbers.is_valid_number(p):
                    readings.add(phonenumbers.format_number(p, phonenumbers.PhoneNumberFormat.E164))
            if len(readings) > 1:
                raise InvalidNumber(f"ambiguous number: {raw!r} could be {' or '.join(sorted(readings))}")
    return e164
