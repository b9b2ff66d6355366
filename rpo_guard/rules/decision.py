"""The dial-time decision: a pure function of the facts about one call.

It reads best whole: the order of the rules is the decision (first match
wins, and each rule's place is argued in :func:`decide`), and the facts, the
policy and the rules that read them are meant to be read side by side.

No I/O happens here: no SQLite, no Asterisk, no clock. The adapters (the
store, the AGI, the FastAGI server, the CLI) gather the facts and hand them to
:func:`decide`; what it returns is the whole answer, including the record
(consultation batch, consent) that decided, so that the audit row can name it.
"""
from __future__ import annotations

from collections import namedtuple
from datetime import date, time, timedelta

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
# Brand policies ([brand NAME] sections): sectors where only consent allows a call, attempt caps.
CONSENT_REQUIRED = "consent_required"
ATTEMPT_CAP = "attempt_cap"
# Fleet mode: the box's replica of the central register was not confirmed current recently enough.
REPLICA_STALE = "replica_stale"

ALLOW_REASONS = frozenset({NOT_REGISTERED, CONSENT, CONTRACT, CALLBACK_REQUEST})
BLOCK_REASONS = frozenset({INVALID_NUMBER, INTERNAL_DNC, OPTOUT, CONSENT_REVOKED,
                           NOT_CONSULTED, CONSULTATION_EXPIRED, RPO_REGISTERED, ERROR,
                           OUTSIDE_CALLING_HOURS, CALLER_ID_NOT_ALLOWED, SILENT_CALL_COOLDOWN,
                           CONSENT_REQUIRED, ATTEMPT_CAP, REPLICA_STALE})
REASONS = ALLOW_REASONS | BLOCK_REASONS

# Consent-log kinds.
KIND_CONSENT = "consent"
KIND_REVOCATION = "revocation"
KIND_CONTRACT = "contract"
KIND_OPTOUT = "optout"
KIND_CALLBACK = "callback_request"  # the person asked this brand to call back (Code art. 10(3))
CONSENT_KINDS = frozenset({KIND_CONSENT, KIND_REVOCATION, KIND_CONTRACT, KIND_OPTOUT, KIND_CALLBACK})

# Caller-ID kinds, as the caller-ID adapter (rpo_guard.rules.callerid) classifies them.
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

# A brand's declared purpose, and the AGCOM range (156/18/CIR) each purpose may present.
PURPOSE_COMMERCIAL = "commercial"    # market research, advertising, sales: 0844
PURPOSE_STATISTICAL = "statistical"  # statistical research: 0843
PURPOSE_OTHER = "other"              # neither: presents no 0843 or 0844 number
PURPOSES = (PURPOSE_COMMERCIAL, PURPOSE_STATISTICAL, PURPOSE_OTHER)
AGCOM_RANGE_PURPOSE = {CID_0843: PURPOSE_STATISTICAL, CID_0844: PURPOSE_COMMERCIAL}
_AGCOM_E164 = (("+390843", CID_0843), ("+390844", CID_0844))


class Consultation(namedtuple("Consultation", "batch_id consulted_on registered brand registration_date",
                              defaults=("", None))):
    """One consultation result for the number (one row of one batch).

    ``consulted_on`` a date; ``registered`` a bool; ``brand`` "" when the
    register was consulted for every brand (shared); ``registration_date``
    only when the result provides it.
    """
    __slots__ = ()


class ConsentEvent(namedtuple("ConsentEvent", "id kind given_at brand ends_at evidence",
                              defaults=("", None, ""))):
    """One consent-log record for the number and the call's brand.

    ``kind``: consent | revocation | contract | optout. ``given_at`` a date
    (a contract's start). ``brand`` "" only for an optout that covers every
    brand. ``ends_at``: contract end or consent expiry; None = open.
    """
    __slots__ = ()


class DncEntry(namedtuple("DncEntry", "id brand reason", defaults=("", ""))):
    """One internal do-not-contact entry; ``brand`` "" = every brand."""
    __slots__ = ()


class SilentCall(namedtuple("SilentCall", "id on")):
    """A silent (abandoned) call made to the number, any brand; ``on`` its
    date in Europe/Rome."""
    __slots__ = ()


class CallTime(namedtuple("CallTime", "local holiday next_holiday", defaults=("", ""))):
    """When the call happens, with the calendar facts about that moment.

    ``local`` the wall-clock datetime of the call in Europe/Rome (DST
    applied); ``holiday`` the national or configured local holiday on that
    date and ``next_holiday`` the one on the next day ("" = none). Gathered
    by :mod:`rpo_guard.rules.calendar_it`; the decision reads no clock and no
    holiday table itself.
    """
    __slots__ = ()


class CallerId(namedtuple("CallerId", "raw e164 kind")):
    """The caller ID the called person will see, as the caller-ID adapter
    read it: ``raw`` as given (CALLERID(num) or the AGI argument), ``e164``
    None when hidden or not a number, ``kind`` one of the CID_* kinds."""
    __slots__ = ()


class AttemptCap(namedtuple("AttemptCap", "max_attempts window_days per_brand")):
    """At most ``max_attempts`` allowed attempts to one number in ``window_days``
    days (the call's day and the days before it); ``per_brand``: only the
    call's brand's attempts count, else every brand's."""
    __slots__ = ()


class AttemptCount(namedtuple("AttemptCount", "per_brand since count")):
    """How many allowed attempts to the number the audit log holds from the day
    ``since`` on (every brand's, or with ``per_brand`` the call's brand's),
    counted by an adapter (see :func:`window_start`)."""
    __slots__ = ()


def window_start(today: date, window_days: int) -> date:
    """The first day of a window of ``window_days`` days ending with ``today``."""
    return today - timedelta(days=window_days - 1)


# A replica confirmed "in the future" by more than this is refused too: the box's clock went back,
# so its age cannot be told (seconds).
CLOCK_BACK_SLACK = 5.0


class Policy(namedtuple("Policy", "validity_days contract_grace_days calling_hours weekday_window "
                                  "reduced_window caller_id_check silent_call_days callback_days "
                                  "require_consent require_declared_caller_id purpose attempt_caps max_staleness_seconds",
                        defaults=(15, 30, True, (time(9), time(20)), (time(10), time(19)), True, 7, 7,
                                  False, False, "", (), None))):
    """The rules' settings (for one brand: ``Config.policy_for``).

    ``validity_days``: a consultation is valid this many days, its own day
    included. ``contract_grace_days``: a contract still allows calls this
    long after it ended. ``calling_hours``: enforce the Code's calling hours;
    ``weekday_window`` Mon-Fri and ``reduced_window`` Saturdays and days
    before a holiday (start included, end excluded). ``caller_id_check``:
    enforce the caller-ID rule. ``silent_call_days``: days after the day of a
    silent call the number is refused. ``callback_days``: a callback request
    allows calls this many days, its own day included. ``max_staleness_seconds``:
    fleet mode only (None = single box): the replica must have been
    confirmed current by the centre at most this many seconds ago.

    The brand's policy (all off by default): ``require_consent``: only a
    contract, a callback request or a live consent allows the call.
    ``require_declared_caller_id``: the caller ID must be declared for the
    brand (no generic fallback). ``purpose``: "" (not checked) or one of
    PURPOSES, checked against a 0843/0844 caller ID. ``attempt_caps``: a tuple
    of :class:`AttemptCap`, every one of which must hold.
    """
    __slots__ = ()


class CallFacts(namedtuple("CallFacts", "today e164 brand consultations consents dnc silent_calls when "
                                        "caller_id declared_caller_ids attempt_counts replica_age",
                           defaults=("", (), (), (), (), None, None, (), (), None))):
    """Everything the decision needs, gathered by an adapter.

    ``today`` the call's date in Europe/Rome; ``e164`` None when the dialed
    string is not a valid number; ``consultations`` for the brand or shared;
    ``consents`` for the brand, or optouts for every brand; ``dnc`` global or
    for the brand; ``silent_calls`` made to the number, any brand; ``when`` a
    CallTime; ``caller_id`` a CallerId; ``declared_caller_ids`` the E.164
    numbers declared for the brand (or all brands); ``attempt_counts`` one
    :class:`AttemptCount` for each of the policy's attempt caps. Tuples, in
    any order. ``replica_age``: seconds since the box's replica was last
    confirmed current by the centre (fleet mode; None = never confirmed or no
    replica). ``when`` and ``caller_id`` are None, and a count is absent, when
    the adapter did not gather them; a rule that needs a missing fact blocks
    (fail closed).
    """
    __slots__ = ()


class Verdict(namedtuple("Verdict", "decision reason basis detail", defaults=("",))):
    """ALLOW or BLOCK, one reason code, and what decided (``basis``: the
    consultation batch, consent or DNC entry, as a dict for the audit row)."""
    __slots__ = ()

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


_AGCOM_USE = {CID_0843: "statistical research", CID_0844: "market research, advertising and sales"}


def agcom_range_of(cid: CallerId) -> str | None:
    """CID_0843 or CID_0844 when the caller ID is in that AGCOM range, else None
    (a declared number comes unclassified: its E.164 form says it)."""
    if cid.kind == CID_0843 or cid.kind == CID_0844:
        return cid.kind
    if cid.e164 is not None:
        for prefix, kind in _AGCOM_E164:
            if cid.e164.startswith(prefix):
                return kind
    return None


def _caller_id_problem(facts: CallFacts, policy: Policy) -> Verdict | None:
    cid = facts.caller_id
    if cid is None:
        return _block(CALLER_ID_NOT_ALLOWED, "the caller ID of the call is not known", kind="caller_id")
    basis = {"kind": "caller_id", "caller_id": cid.e164 or cid.raw, "caller_id_kind": cid.kind,
             "declared": len(facts.declared_caller_ids)}
    if cid.kind == CID_HIDDEN or (cid.e164 is None and not cid.raw):
        return _block(CALLER_ID_NOT_ALLOWED, "hidden caller ID: calls must show a number that can be called back",
                      **basis)
    scope = f"brand {facts.brand}" if facts.brand else "this call"
    if policy.purpose:
        agcom = agcom_range_of(cid)
        if agcom is not None and AGCOM_RANGE_PURPOSE[agcom] != policy.purpose:
            return _block(CALLER_ID_NOT_ALLOWED, f"caller ID {cid.e164 or cid.raw!r} is in the {agcom} range, "
                          f"reserved for {_AGCOM_USE[agcom]} (AGCOM 156/18/CIR); {scope} declares the purpose "
                          f"{policy.purpose!r}", purpose=policy.purpose, agcom_range=agcom, **basis)
    if facts.declared_caller_ids:
        if cid.e164 is not None and cid.e164 in facts.declared_caller_ids:
            return None
        return _block(CALLER_ID_NOT_ALLOWED, f"caller ID {cid.e164 or cid.raw!r} is not one of the "
                      f"{len(facts.declared_caller_ids)} number(s) declared for {scope}", **basis)
    if policy.require_declared_caller_id:
        return _block(CALLER_ID_NOT_ALLOWED, f"{scope} may call only from declared caller IDs, and none is "
                      "declared for it (rpo-guard caller-id add)", required_declared=True, **basis)
    if cid.kind in CALLBACKABLE_KINDS and cid.e164 is not None:
        return None
    why = {CID_FOREIGN: "a foreign number", CID_INVALID: "not a phone number",
           CID_OTHER: "not a geographic, mobile, 0843 or 0844 number"}.get(cid.kind, f"of kind {cid.kind!r}")
    return _block(CALLER_ID_NOT_ALLOWED, f"caller ID {cid.e164 or cid.raw!r} is {why}, and no caller IDs "
                  "are declared for this brand", **basis)


def _live_consents(own: list[ConsentEvent], today: date) -> list[ConsentEvent]:
    """The brand's consents not expired and not revoked since they were given."""
    return [e for e in own if e.kind == KIND_CONSENT and (e.ends_at is None or today <= e.ends_at)
            and not any(r.kind == KIND_REVOCATION and r.given_at >= e.given_at for r in own)]


def _consent_required(facts: CallFacts, own: list[ConsentEvent]) -> Verdict:
    """The BLOCK of a brand that needs a consent, a contract or a callback request, and has none."""
    why = []
    for e in sorted(own, key=lambda e: e.given_at, reverse=True):
        if e.kind == KIND_CONTRACT and e.ends_at is not None:
            why.append(f"the contract ended on {e.ends_at}")
        elif e.kind == KIND_CONSENT and e.ends_at is not None and e.ends_at < facts.today:
            why.append(f"the consent of {e.given_at} expired on {e.ends_at}")
        elif e.kind == KIND_REVOCATION:
            why.append(f"consent revoked on {e.given_at}")
        elif e.kind == KIND_CALLBACK:
            why.append(f"the callback request of {e.given_at} is no longer valid")
    return _block(CONSENT_REQUIRED, f"brand {facts.brand} may call only with the person's consent, a contract or "
                  "a callback request, and none is in force" + (f" ({'; '.join(why[:3])})" if why else ""),
                  kind="consent_required", brand=facts.brand)


def _attempt_cap_problem(facts: CallFacts, policy: Policy) -> Verdict | None:
    """The BLOCK of the first attempt cap the number has reached, or None."""
    for cap in policy.attempt_caps:
        since = window_start(facts.today, cap.window_days)
        count = next((a.count for a in facts.attempt_counts
                      if a.per_brand == cap.per_brand and a.since == since), None)
        if count is not None and count < cap.max_attempts:
            continue  # under this cap (the common case: nothing to word)
        by = f"by brand {facts.brand or '(none)'}" if cap.per_brand else "by any brand"
        basis = {"kind": "attempt_cap", "max_attempts": cap.max_attempts, "window_days": cap.window_days,
                 "since": since.isoformat(), "scope": "brand" if cap.per_brand else "number"}
        if count is None:
            return _block(ATTEMPT_CAP, f"the number of attempts {by} since {since} is not known", **basis)
        return _block(ATTEMPT_CAP, f"{count} allowed attempt(s) to this number {by} since {since}: the cap is "
                      f"{cap.max_attempts} in {cap.window_days} day(s)", attempts=count, **basis)
    return None


def calling_hours_problem(when: CallTime | None, policy: Policy = Policy()) -> Verdict | None:
    """The BLOCK of the calling-hours rule for a call at ``when``, or None when it may go."""
    if when is None:
        return _block(OUTSIDE_CALLING_HOURS, "the time of the call is not known", kind="calling_hours")
    local = when.local
    weekday = local.weekday()
    if not when.holiday and weekday != 6:
        if weekday == 5:
            (start, end), what = policy.reduced_window, "Saturday"
        elif when.next_holiday:
            (start, end), what = policy.reduced_window, f"the day before a holiday ({when.next_holiday})"
        else:
            (start, end), what = policy.weekday_window, "weekday"
        now = local.time().replace(tzinfo=None)
        if start <= now < end:
            return None
    # Refused: the words and the basis are only built for a refusal.
    basis = {"kind": "calling_hours", "local_time": local.isoformat(timespec="seconds")}
    day = f"{local:%A} {local.date()}"
    if when.holiday:
        return _block(OUTSIDE_CALLING_HOURS, f"{day} is a holiday ({when.holiday}): no calls",
                      holiday=when.holiday, **basis)
    if weekday == 6:
        return _block(OUTSIDE_CALLING_HOURS, f"{day} is a Sunday: no calls", **basis)
    window = f"{start:%H:%M}-{end:%H:%M}"
    return _block(OUTSIDE_CALLING_HOURS, f"{day} {now:%H:%M}: outside the {what} calling hours {window}",
                  window=window, **basis)


def decide(facts: CallFacts, policy: Policy = Policy()) -> Verdict:
    """Decide one call. The rules, in order (the RULES table below; docs/dialplan.md):

    1. the dialed string is not a valid number           -> BLOCK invalid_number
    1b. fleet mode: the replica not confirmed current
        within ``max_staleness_seconds``                 -> BLOCK replica_stale
    2. on the internal do-not-contact list (global/brand) -> BLOCK internal_dnc
    3. an opt-out for the brand not followed by a consent
       (or by a callback request still in its window)     -> BLOCK optout
    4. a silent call to the number on day D, and today is
       D .. D + ``silent_call_days``                      -> BLOCK silent_call_cooldown
    5. the presented caller ID is hidden; in the 0843/0844
       range of another purpose than the brand's
       ``purpose``; not declared for the brand; or (no list
       for the brand) ``require_declared_caller_id``, or not
       an Italian geographic, mobile, 0843 or 0844 number -> BLOCK caller_id_not_allowed
    6. outside the calling hours (Sunday, holiday, before/
       after the weekday or reduced window)              -> BLOCK outside_calling_hours
    6b. ``require_consent`` and no contract (as in 7), no
        callback request (as in 8) and no live consent
        (not expired, not revoked since it was given)     -> BLOCK consent_required
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
        (with ``require_consent``: the live consent of 6b) -> ALLOW consent
    13. any ALLOW above, when the number has had
        ``max_attempts`` allowed attempts in the window of
        one of the ``attempt_caps``                       -> BLOCK attempt_cap

    Rules 4-6 bar calls that the register alone would allow, so they come
    before every ALLOW; rules 5 and 6 have switches in the policy. Rule 6b is
    the bar of the brand's sector, read from the consent log as rules 7-12
    are: after the conduct rules (an opt-out, a silent call, a wrong caller ID
    or the hour keep their own reason) and before any ALLOW. Rule 13 comes
    last because only allowed attempts count: it turns an ALLOW into a BLOCK
    and nothing else, so a call refused for any other reason keeps that
    reason (and is not counted), and an adapter needs the count only for a
    call that would otherwise go (:func:`decide_rules`, :func:`cap_attempts`).

    In fleet mode (``policy.max_staleness_seconds`` set) a valid number is
    first refused with ``replica_stale`` when the replica was never confirmed,
    was confirmed longer ago than the bound, or "in the future" (the clock
    went back): nothing read from it can be trusted to include the newest
    opt-outs.
    """
    return cap_attempts(decide_rules(facts, policy), facts, policy)


def cap_attempts(verdict: Verdict, facts: CallFacts, policy: Policy) -> Verdict:
    """Rule 13 of :func:`decide` on the verdict of rules 1-12: ``decide(f, p) ==
    cap_attempts(decide_rules(f, p), f, p)``. An adapter may gather the attempt
    counts only when ``decide_rules`` allowed the call (nothing else reads them)."""
    if policy.attempt_caps and verdict.decision == ALLOW:
        return _attempt_cap_problem(facts, policy) or verdict
    return verdict


def decide_rules(facts: CallFacts, policy: Policy = Policy()) -> Verdict:
    """Rules 1-12 of :func:`decide` (every rule but the attempt caps)."""
    if facts.e164 is None:
        return _block(INVALID_NUMBER, "the dialed string is not a valid number")
    bound = policy.max_staleness_seconds
    if bound is not None:
        age = facts.replica_age
        if age is None:
            return _block(REPLICA_STALE, "the replica was never confirmed current by the centre")
        if age > bound or age < -CLOCK_BACK_SLACK:
            return _block(REPLICA_STALE, f"the replica was last confirmed current {age:.0f} s ago "
                          f"(bound {bound} s)" if age >= 0 else
                          f"the replica's confirmation is {-age:.0f} s in the future: the clock went back",
                          replica_age_s=round(age, 1), max_staleness_s=bound)
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
    if policy.caller_id_check and (verdict := _caller_id_problem(facts, policy)) is not None:
        return verdict
    if policy.calling_hours and (verdict := calling_hours_problem(facts.when, policy)) is not None:
        return verdict

    grace = timedelta(days=policy.contract_grace_days)
    contracts = [e for e in own if e.kind == KIND_CONTRACT
                 and (e.ends_at is None or facts.today <= e.ends_at + grace)]
    live_consents = _live_consents(own, facts.today) if policy.require_consent else []
    if policy.require_consent and not (contracts or callbacks or live_consents):
        return _consent_required(facts, own)

    if brand:
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
        if live_consents:  # the brand needs a consent: name it (the seller must prove it)
            consent = max(live_consents, key=lambda e: e.given_at)
            basis = _consent_basis(consent)
            basis.update(batch_id=newest.batch_id, consulted_on=newest.consulted_on.isoformat())
            return _allow(CONSENT, f"consent given {consent.given_at} (brand {brand} needs one); not registered "
                          f"at the consultation of {newest.consulted_on}", **basis)
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


# -- the rules table: the one source of their numbers and texts -------------------
# `audit show`, the HTML report and docs/dialplan.md ("The rules") render from it;
# tests/test_rules_table.py fails when a reason code has no entry or the docs drift.

class Rule(namedtuple("Rule", "number decision text source")):
    """One rule: its number in the order :func:`decide` applies them, the decision, what it
    says, and where it comes from."""
    __slots__ = ()


RULES: dict[str, Rule] = {
    INVALID_NUMBER: Rule("1", BLOCK, "the dialed string is not a valid phone number (or is ambiguous)",
                         "fail closed: nothing can be checked about it"),
    REPLICA_STALE: Rule("1b", BLOCK, "fleet mode: the box's replica was not confirmed current by the centre within "
                                     "`[fleet] max_staleness_seconds` (60), was never confirmed, or was confirmed "
                                     "\"in the future\" (the clock went back)",
                        "fail closed: a replica that cannot show it is current may miss the newest opt-outs"),
    INTERNAL_DNC: Rule("2", BLOCK, "the number is on the internal do-not-contact list, globally or for the brand",
                       "the operator's do-not-contact list must stop every later call (GDPR art. 21; Garante decisions)"),
    OPTOUT: Rule("3", BLOCK, "the consent log holds an opt-out for the brand (or for every brand) not followed by "
                             "a newer consent, nor by a callback request still in its window",
                 "a request to stop calling (GDPR art. 21(3))"),
    SILENT_CALL_COOLDOWN: Rule("4", BLOCK, "a silent call reached the number on day D and today is "
                                           "D … D + `silent_call_days` (7), any brand",
                               "Garante, general measure n. 83 of 20 Feb 2014 (silent calls)"),
    CALLER_ID_NOT_ALLOWED: Rule("5", BLOCK, "the caller ID is hidden; or in the 0843/0844 range of another purpose "
                                            "than the brand's `purpose`; or not declared for the brand; or (no list "
                                            "for the brand) the brand has `require_declared_caller_id`, or it is not "
                                            "an Italian geographic, mobile, 0843 or 0844 number",
                                "Codice di condotta art. 7 (ROC-declared, recallable numbers); AGCOM 156/18/CIR "
                                "(0843 statistical research, 0844 market research, advertising and sales)"),
    OUTSIDE_CALLING_HOURS: Rule("6", BLOCK, "Sunday, national or configured local holiday, or outside the window: "
                                            "Mon–Fri 09:00–20:00; Saturdays and days before a holiday 10:00–19:00 "
                                            "(end excluded, Europe/Rome)",
                                "Codice di condotta telemarketing (Garante, 7 Mar 2024; from 28 Sep 2024)"),
    CONSENT_REQUIRED: Rule("6b", BLOCK, "the brand has `require_consent` and no contract in force or within its "
                                        "grace, no callback request in its window, no consent not expired and not "
                                        "revoked since",
                           "energy offers: 2026 DL Bollette conversion law (in force 19 Jun 2026; article numbers "
                           "unverified) and ARERA 395/2024/R/com; a per-brand setting"),
    CONTRACT: Rule("7", ALLOW, "a contract with the brand is in force, or ended at most `contract_grace_days` (30) ago",
                   "Legge 5/2018 art. 1(5): the contract exception, up to 30 days after its end"),
    CALLBACK_REQUEST: Rule("8", ALLOW, "a `callback_request` for the brand given at most `callback_days` (7) ago, "
                                       "its day included, not revoked since",
                           "Codice di condotta art. 10(3): call-backs the person asked for"),
    NOT_CONSULTED: Rule("9", BLOCK, "no consultation of the register covers the number (consulted for the brand, "
                                    "or shared)",
                        "DPR 26/2022 art. 8: consult the register before calling; fail closed"),
    CONSULTATION_EXPIRED: Rule("10", BLOCK, "the newest consultation is older than `validity_days` (15, its own "
                                            "day included), or dated in the future",
                               "DPR 26/2022 art. 8(2): a consultation is valid 15 days for calls"),
    CONSENT: Rule("11a", ALLOW, "registered, and a consent for the brand was given on a day after the "
                                "registration, not revoked since (with `require_consent`, also rule 12 with the "
                                "live consent of 6b)",
                  "Legge 5/2018 art. 1(5): consents given after the registration stay valid"),
    CONSENT_REVOKED: Rule("11b", BLOCK, "registered, and the newest such consent was revoked on or after its day",
                          "GDPR art. 7(3): a withdrawn consent"),
    RPO_REGISTERED: Rule("11c", BLOCK, "registered, otherwise (registration revokes every earlier consent)",
                         "Legge 5/2018 art. 1(5): registration revokes earlier consents"),
    NOT_REGISTERED: Rule("12", ALLOW, "not registered at the newest consultation", "DPR 26/2022"),
    ATTEMPT_CAP: Rule("13", BLOCK, "any ALLOW above, when the number already had `max_attempts` allowed attempts "
                                   "in the window of a cap (`[attempts]`, `[brand NAME]`; off by default)",
                      "no cap in the Italian Code; the operator's own limit (France, since 1 Mar 2023: 4 calls in "
                      "30 days)"),
    ERROR: Rule("–", BLOCK, "anything went wrong gathering the facts", "fail closed"),
}


def rule_line(reason: str) -> str:
    """One reason's rule in words, for `audit show`."""
    r = RULES.get(reason)
    if r is None:
        return f"unknown reason code {reason!r}"
    verdict = "allowed" if r.decision == ALLOW else "refused"
    head = "fail closed" if r.number == "–" else f"rule {r.number}"
    return f"{head}: {r.text}; the call is {verdict}. Source: {r.source}."


def rules_markdown() -> str:
    """The rules as the Markdown table of docs/dialplan.md, in the order they apply."""
    rows = ["| # | rule | decision | reason | source |", "|---|---|---|---|---|"]
    for reason, r in RULES.items():
        rows.append(f"| {r.number} | {r.text} | {r.decision} | `{reason}` | {r.source} |")
    return "\n".join(rows)


if __name__ == "__main__":  # python -m rpo_guard.rules.decision --markdown
    import sys
    if sys.argv[1:] != ["--markdown"]:
        sys.exit("usage: python -m rpo_guard.rules.decision --markdown")
    print(rules_markdown())
