"""The dial-time decision: a pure function of the facts about one call.

No I/O happens here: no SQLite, no Asterisk, no clock. The adapters (the
store, the AGI, the FastAGI server, the CLI) gather the facts and hand them to
:func:`decide`; what it returns is the whole answer, including the record
(consultation batch, consent) that decided, so that the audit row can name it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta

ALLOW = "ALLOW"
BLOCK = "BLOCK"

# Reason codes. New codes may be added; none may be renamed (dialplans and
# auditors' queries depend on them).
NOT_REGISTERED = "not_registered"
CONSENT = "consent"
CONTRACT = "contract"
INVALID_NUMBER = "invalid_number"
INTERNAL_DNC = "internal_dnc"
OPTOUT = "optout"
CONSENT_REVOKED = "consent_revoked"
NOT_CONSULTED = "not_consulted"
CONSULTATION_EXPIRED = "consultation_expired"
RPO_REGISTERED = "rpo_registered"
ERROR = "error"
# Conduct-code rules (Codice di condotta 2024, AGCOM caller-ID rules, Garante 2014).
OUTSIDE_CALLING_HOURS = "outside_calling_hours"
CALLER_ID_NOT_ALLOWED = "caller_id_not_allowed"
SILENT_CALL_COOLDOWN = "silent_call_cooldown"
CALLBACK_REQUEST = "callback_request"

ALLOW_REASONS = frozenset({NOT_REGISTERED, CONSENT, CONTRACT, CALLBACK_REQUEST})
BLOCK_REASONS = frozenset({INVALID_NUMBER, INTERNAL_DNC, OPTOUT, CONSENT_REVOKED,
                           NOT_CONSULTED, CONSULTATION_EXPIRED, RPO_REGISTERED, ERROR,
                           OUTSIDE_CALLING_HOURS, CALLER_ID_NOT_ALLOWED, SILENT_CALL_COOLDOWN})
REASONS = ALLOW_REASONS | BLOCK_REASONS

# Consent-log kinds.
KIND_CONSENT = "consent"
KIND_REVOCATION = "revocation"
KIND_CONTRACT = "contract"
KIND_OPTOUT = "optout"
KIND_CALLBACK = "callback_request"  # the person asked this brand to call back (Code art. 10(3))
CONSENT_KINDS = frozenset({KIND_CONSENT, KIND_REVOCATION, KIND_CONTRACT, KIND_OPTOUT, KIND_CALLBACK})

# Caller-ID kinds, as the caller-ID adapter (rpo_guard.callerid) classifies them.
CID_HIDDEN = "hidden"          # empty, 'unknown', 'anonymous', or presentation restricted
CID_INVALID = "invalid"        # not a phone number at all
CID_FOREIGN = "foreign"        # a valid number outside +39 Italy
CID_FIXED = "fixed"            # Italian geographic number (0...)
CID_MOBILE = "mobile"          # Italian mobile number (3...)
CID_0843 = "0843"              # AGCOM 156/18/CIR: statistical research
CID_0844 = "0844"              # AGCOM 156/18/CIR: market research, advertising, sales
CID_OTHER = "other"            # Italian, but toll-free, premium, shared-cost, VoIP, ...
CID_UNCLASSIFIED = "unclassified"  # not classified: a declared list decides alone
CALLBACKABLE_KINDS = frozenset({CID_FIXED, CID_MOBILE, CID_0843, CID_0844})


@dataclass(frozen=True)
class Consultation:
    """One consultation result for the number (one row of one batch)."""
    batch_id: int
    consulted_on: date
    registered: bool
    brand: str = ""                       # "" = consulted for every brand (shared)
    registration_date: date | None = None  # only when the result provides it


@dataclass(frozen=True)
class ConsentEvent:
    """One consent-log record for the number and the call's brand (or all brands)."""
    id: int
    kind: str                 # consent | revocation | contract | optout
    given_at: date            # contract: its start
    brand: str = ""           # "" only for an optout that covers every brand
    ends_at: date | None = None  # contract end / consent expiry; None = open
    evidence: str = ""


@dataclass(frozen=True)
class DncEntry:
    id: int
    brand: str = ""  # "" = global
    reason: str = ""


@dataclass(frozen=True)
class SilentCall:
    """A silent (abandoned) call made to the number, any brand."""
    id: int
    on: date                  # its date in Europe/Rome


@dataclass(frozen=True)
class CallTime:
    """When the call happens, with the calendar facts about that moment.

    Gathered by :mod:`rpo_guard.calendar_it`; the decision reads no clock and
    no holiday table itself.
    """
    local: datetime           # wall-clock time of the call in Europe/Rome (DST applied)
    holiday: str = ""         # the national or configured local holiday on that date, "" = none
    next_holiday: str = ""    # the holiday on the next day, "" = none


@dataclass(frozen=True)
class CallerId:
    """The caller ID the called person will see, as the caller-ID adapter read it."""
    raw: str                  # as given (CALLERID(num) or the AGI argument)
    e164: str | None          # None when hidden or not a number
    kind: str                 # one of the CID_* kinds


@dataclass(frozen=True)
class Policy:
    validity_days: int = 15        # a consultation is valid this many days, its own day included
    contract_grace_days: int = 30  # a contract still allows calls this long after it ended
    calling_hours: bool = True     # enforce the Code's calling hours
    weekday_window: tuple[time, time] = (time(9), time(20))    # Mon-Fri, end excluded
    reduced_window: tuple[time, time] = (time(10), time(19))   # Saturdays, days before a holiday
    caller_id_check: bool = True   # enforce the caller-ID rule
    silent_call_days: int = 7      # days after the day of a silent call the number is refused
    callback_days: int = 7         # a callback request allows calls this many days, its own day included


@dataclass(frozen=True)
class CallFacts:
    """Everything the decision needs, gathered by an adapter.

    ``when`` and ``caller_id`` are None when the adapter did not gather them;
    a rule that needs a missing fact blocks (fail closed).
    """
    today: date                               # the call's date in Europe/Rome
    e164: str | None                          # None when the dialed string is not a valid number
    brand: str = ""
    consultations: tuple[Consultation, ...] = ()  # for the brand or shared, any order
    consents: tuple[ConsentEvent, ...] = ()       # for the brand, or optouts for all brands
    dnc: tuple[DncEntry, ...] = ()                # global or for the brand
    silent_calls: tuple[SilentCall, ...] = ()     # made to the number, any brand
    when: CallTime | None = None                  # the moment of the call and its calendar facts
    caller_id: CallerId | None = None             # the presented caller ID
    declared_caller_ids: tuple[str, ...] = ()     # E.164 numbers declared for the brand (or all brands)


@dataclass(frozen=True)
class Verdict:
    decision: str
    reason: str
    basis: dict = field(default_factory=dict)  # what decided: batch, consent, DNC entry...
    detail: str = ""

    @property
    def allowed(self) -> bool:
        return self.decision == ALLOW


def _block(reason: str, detail: str = "", **basis) -> Verdict:
    return Verdict(BLOCK, reason, basis, detail)


def _allow(reason: str, detail: str = "", **basis) -> Verdict:
    return Verdict(ALLOW, reason, basis, detail)


def error_verdict(detail: str) -> Verdict:
    """The answer whenever the facts could not be gathered."""
    return _block(ERROR, detail)


def _consultation_basis(c: Consultation) -> dict:
    return {"kind": "consultation", "batch_id": c.batch_id,
            "consulted_on": c.consulted_on.isoformat(), "brand": c.brand}


def _consent_basis(e: ConsentEvent) -> dict:
    return {"kind": e.kind, "consent_id": e.id, "given_at": e.given_at.isoformat(),
            "evidence": e.evidence}


def _latest_stop(events, kinds, brand):
    """The newest event of the given kinds that applies to the brand."""
    stops = [e for e in events if e.kind in kinds and (e.brand == brand or e.brand == "")]
    return max(stops, key=lambda e: e.given_at, default=None)


def registration_date(history: list[Consultation]) -> date:
    """When the number was registered, as far as the operator can know.

    ``history`` is newest first and its head says "registered". The register
    does not tell operators when a number was registered: a registration date
    given by a result wins; otherwise the first consultation of the current
    unbroken run of "registered" results is the upper bound we can prove.
    """
    for c in history:
        if c.registered and c.registration_date is not None:
            return c.registration_date
        if not c.registered:
            break
    first = history[0].consulted_on
    for c in history:
        if not c.registered:
            break
        first = c.consulted_on
    return first


def _callback_end(e: ConsentEvent, policy: Policy) -> date:
    end = e.given_at + timedelta(days=policy.callback_days - 1)
    return min(end, e.ends_at) if e.ends_at is not None else end


def _live_callbacks(own: list[ConsentEvent], today: date, policy: Policy) -> list[ConsentEvent]:
    """The brand's callback requests still in their window and not revoked since."""
    out = []
    for e in own:
        if e.kind != KIND_CALLBACK or not (e.given_at <= today <= _callback_end(e, policy)):
            continue
        if any(r.kind == KIND_REVOCATION and r.given_at >= e.given_at for r in own):
            continue
        out.append(e)
    return out


def _cooldown(facts: CallFacts, policy: Policy) -> Verdict | None:
    """A silent call on day D bars the number on D .. D + silent_call_days."""
    span = timedelta(days=policy.silent_call_days)
    recent = [s for s in facts.silent_calls if s.on <= facts.today <= s.on + span]
    if not recent:
        return None
    s = max(recent, key=lambda s: (s.on, s.id))
    until = s.on + span
    return _block(SILENT_CALL_COOLDOWN, f"silent call on {s.on}: no calls to this number until {until} included",
                  kind="silent_call", silent_call_id=s.id, on=s.on.isoformat(), until=until.isoformat())


def _caller_id_problem(facts: CallFacts) -> Verdict | None:
    cid = facts.caller_id
    if cid is None:
        return _block(CALLER_ID_NOT_ALLOWED, "the caller ID of the call is not known", kind="caller_id")
    basis = {"kind": "caller_id", "caller_id": cid.e164 or cid.raw, "caller_id_kind": cid.kind,
             "declared": len(facts.declared_caller_ids)}
    if cid.kind == CID_HIDDEN or (cid.e164 is None and not cid.raw):
        return _block(CALLER_ID_NOT_ALLOWED, "hidden caller ID: calls must show a number that can be called back",
                      **basis)
    if facts.declared_caller_ids:
        if cid.e164 is not None and cid.e164 in facts.declared_caller_ids:
            return None
        scope = f"brand {facts.brand}" if facts.brand else "this call"
        return _block(CALLER_ID_NOT_ALLOWED, f"caller ID {cid.e164 or cid.raw!r} is not one of the "
                      f"{len(facts.declared_caller_ids)} number(s) declared for {scope}", **basis)
    if cid.kind in CALLBACKABLE_KINDS and cid.e164 is not None:
        return None
    why = {CID_FOREIGN: "a foreign number", CID_INVALID: "not a phone number",
           CID_OTHER: "not a geographic, mobile, 0843 or 0844 number"}.get(cid.kind, f"of kind {cid.kind!r}")
    return _block(CALLER_ID_NOT_ALLOWED, f"caller ID {cid.e164 or cid.raw!r} is {why}, and no caller IDs "
                  "are declared for this brand", **basis)


def calling_hours_problem(when: CallTime | None, policy: Policy = Policy()) -> Verdict | None:
    """The BLOCK of the calling-hours rule for a call at ``when``, or None when it may go."""
    if when is None:
        return _block(OUTSIDE_CALLING_HOURS, "the time of the call is not known", kind="calling_hours")
    local = when.local
    basis = {"kind": "calling_hours", "local_time": local.isoformat(timespec="seconds")}
    day = f"{local:%A} {local.date()}"
    if when.holiday:
        return _block(OUTSIDE_CALLING_HOURS, f"{day} is a holiday ({when.holiday}): no calls",
                      holiday=when.holiday, **basis)
    if local.weekday() == 6:
        return _block(OUTSIDE_CALLING_HOURS, f"{day} is a Sunday: no calls", **basis)
    if local.weekday() == 5:
        (start, end), what = policy.reduced_window, "Saturday"
    elif when.next_holiday:
        (start, end), what = policy.reduced_window, f"the day before a holiday ({when.next_holiday})"
    else:
        (start, end), what = policy.weekday_window, "weekday"
    now = local.time().replace(tzinfo=None)
    if start <= now < end:
        return None
    window = f"{start:%H:%M}-{end:%H:%M}"
    return _block(OUTSIDE_CALLING_HOURS, f"{day} {now:%H:%M}: outside the {what} calling hours {window}",
                  window=window, **basis)


def decide(facts: CallFacts, policy: Policy = Policy()) -> Verdict:
    """Decide one call. The rules, in order (README, "The rules"):

    1. the dialed string is not a valid number           -> BLOCK invalid_number
    2. on the internal do-not-contact list (global/brand) -> BLOCK internal_dnc
    3. an opt-out for the brand not followed by a consent
       (or by a callback request still in its window)     -> BLOCK optout
    4. a silent call to the number on day D, and today is
       D .. D + ``silent_call_days``                      -> BLOCK silent_call_cooldown
    5. the presented caller ID is hidden, not declared for
       the brand, or (no list for the brand) not an Italian
       geographic, mobile, 0843 or 0844 number           -> BLOCK caller_id_not_allowed
    6. outside the calling hours (Sunday, holiday, before/
       after the weekday or reduced window)              -> BLOCK outside_calling_hours
    7. a contract with the brand in force or ended at most
       ``contract_grace_days`` ago                        -> ALLOW contract
    8. a callback request to the brand, not revoked, given
       at most ``callback_days`` ago (its day included)   -> ALLOW callback_request
    9. no consultation for the number (brand or shared)   -> BLOCK not_consulted
    10. the newest consultation is older than the window  -> BLOCK consultation_expired
    11. registered: a consent for the brand given on a day after the
        registration and not revoked later                -> ALLOW consent
        a consent that was revoked later                  -> BLOCK consent_revoked
        otherwise                                         -> BLOCK rpo_registered
    12. not registered                                    -> ALLOW not_registered

    Rules 4-6 bar calls that the register alone would allow, so they come
    before every ALLOW; rules 5 and 6 have switches in the policy.
    """
    if facts.e164 is None:
        return _block(INVALID_NUMBER, "the dialed string is not a valid number")
    if facts.when is not None and facts.when.local.date() != facts.today:
        return error_verdict(f"inconsistent facts: call date {facts.today}, local time {facts.when.local}")

    brand = facts.brand
    dnc = [d for d in facts.dnc if d.brand == "" or d.brand == brand]
    if dnc:
        # A global entry is the stronger statement: name it first.
        d = min(dnc, key=lambda d: (d.brand != "", d.id))
        return _block(INTERNAL_DNC, d.reason, kind="dnc", dnc_id=d.id, brand=d.brand)

    events = [e for e in facts.consents if e.given_at <= facts.today]
    own = [e for e in events if e.brand == brand and brand != ""]
    callbacks = _live_callbacks(own, facts.today, policy)

    optout = _latest_stop(events, {KIND_OPTOUT}, brand)
    if optout is not None:
        later = [e for e in own if e.kind == KIND_CONSENT and e.given_at > optout.given_at]
        later += [e for e in callbacks if e.given_at > optout.given_at]
        if not later:
            return _block(OPTOUT, "the person asked this brand to stop calling",
                          **_consent_basis(optout))

    if (verdict := _cooldown(facts, policy)) is not None:
        return verdict
    if policy.caller_id_check and (verdict := _caller_id_problem(facts)) is not None:
        return verdict
    if policy.calling_hours and (verdict := calling_hours_problem(facts.when, policy)) is not None:
        return verdict

    if brand:
        grace = timedelta(days=policy.contract_grace_days)
        contracts = [e for e in own if e.kind == KIND_CONTRACT
                     and (e.ends_at is None or facts.today <= e.ends_at + grace)]
        if contracts:
            c = max(contracts, key=lambda e: (e.ends_at is None, e.ends_at or e.given_at))
            return _allow(CONTRACT, "contract in force" if c.ends_at is None or c.ends_at >= facts.today
                          else "contract ended within the grace period", **_consent_basis(c))

    if callbacks:
        cb = max(callbacks, key=lambda e: e.given_at)
        return _allow(CALLBACK_REQUEST, f"the person asked {brand} to call back on {cb.given_at} "
                      f"(valid until {_callback_end(cb, policy)})", **_consent_basis(cb))

    if not facts.consultations:
        return _block(NOT_CONSULTED, "no consultation of the register covers this number")

    # Newest first; on the same day a "registered" result wins (fail closed).
    history = sorted(facts.consultations, key=lambda c: (c.consulted_on, c.registered), reverse=True)
    newest = history[0]
    valid_until = newest.consulted_on + timedelta(days=policy.validity_days - 1)
    if facts.today > valid_until or newest.consulted_on > facts.today:
        return _block(CONSULTATION_EXPIRED,
                      f"newest consultation {newest.consulted_on} was valid until {valid_until}",
                      **_consultation_basis(newest))

    if not newest.registered:
        return _allow(NOT_REGISTERED, f"not registered at the consultation of {newest.consulted_on}",
                      **_consultation_basis(newest))

    registered_on = registration_date(history)
    consents = [e for e in own if e.kind == KIND_CONSENT and e.given_at > registered_on
                and (e.ends_at is None or facts.today <= e.ends_at)]
    if consents:
        consent = max(consents, key=lambda e: e.given_at)
        revocation = _latest_stop(own, {KIND_REVOCATION}, brand)
        if revocation is not None and revocation.given_at >= consent.given_at:
            return _block(CONSENT_REVOKED, f"consent of {consent.given_at} revoked on {revocation.given_at}",
                          **_consent_basis(revocation))
        return _allow(CONSENT, f"consent given {consent.given_at}, after the registration "
                      f"(known by {registered_on})", **_consent_basis(consent))
    basis = _consultation_basis(newest)
    basis["registered_by"] = registered_on.isoformat()
    return _block(RPO_REGISTERED, f"registered in the RPO (known by {registered_on}); "
                  "no consent for this brand given after that day", **basis)
