"""The dial-time decision: a pure function of the facts about one call.

No I/O happens here: no SQLite, no Asterisk, no clock. The adapters (the
store, the AGI, the FastAGI server, the CLI) gather the facts and hand them to
:func:`decide`; what it returns is the whole answer, including the record
(consultation batch, consent) that decided, so that the audit row can name it.
"""
from __future__ import annotations

from collections import namedtuple
from datetime import date, timedelta

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

ALLOW_REASONS = frozenset({NOT_REGISTERED, CONSENT, CONTRACT})
BLOCK_REASONS = frozenset({INVALID_NUMBER, INTERNAL_DNC, OPTOUT, CONSENT_REVOKED,
                           NOT_CONSULTED, CONSULTATION_EXPIRED, RPO_REGISTERED, ERROR})
REASONS = ALLOW_REASONS | BLOCK_REASONS

# Consent-log kinds.
KIND_CONSENT = "consent"
KIND_REVOCATION = "revocation"
KIND_CONTRACT = "contract"
KIND_OPTOUT = "optout"
CONSENT_KINDS = frozenset({KIND_CONSENT, KIND_REVOCATION, KIND_CONTRACT, KIND_OPTOUT})


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


class Policy(namedtuple("Policy", "validity_days contract_grace_days", defaults=(15, 30))):
    """``validity_days``: a consultation is valid this many days, its own day
    included. ``contract_grace_days``: a contract still allows calls this long
    after it ended."""
    __slots__ = ()


class CallFacts(namedtuple("CallFacts", "today e164 brand consultations consents dnc",
                           defaults=("", (), (), ()))):
    """Everything the decision needs, gathered by an adapter.

    ``today`` the call's date in Europe/Rome; ``e164`` None when the dialed
    string is not a valid number; ``consultations`` for the brand or shared;
    ``consents`` for the brand, or optouts for every brand; ``dnc`` global or
    for the brand. Tuples, in any order.
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


def decide(facts: CallFacts, policy: Policy = Policy()) -> Verdict:
    """Decide one call. The rules, in order (README, "The rules"):

    1. the dialed string is not a valid number           -> BLOCK invalid_number
    2. on the internal do-not-contact list (global/brand) -> BLOCK internal_dnc
    3. an opt-out for the brand not followed by a consent -> BLOCK optout
    4. a contract with the brand in force or ended at most
       ``contract_grace_days`` ago                        -> ALLOW contract
    5. no consultation for the number (brand or shared)   -> BLOCK not_consulted
    6. the newest consultation is older than the window   -> BLOCK consultation_expired
    7. registered: a consent for the brand given on a day after the
       registration and not revoked later                 -> ALLOW consent
       a consent that was revoked later                   -> BLOCK consent_revoked
       otherwise                                          -> BLOCK rpo_registered
    8. not registered                                     -> ALLOW not_registered
    """
    if facts.e164 is None:
        return _block(INVALID_NUMBER, "the dialed string is not a valid number")

    brand = facts.brand
    dnc = [d for d in facts.dnc if d.brand == "" or d.brand == brand]
    if dnc:
        # A global entry is the stronger statement: name it first.
        d = min(dnc, key=lambda d: (d.brand != "", d.id))
        return _block(INTERNAL_DNC, d.reason, kind="dnc", dnc_id=d.id, brand=d.brand)

    events = [e for e in facts.consents if e.given_at <= facts.today]
    own = [e for e in events if e.brand == brand and brand != ""]

    optout = _latest_stop(events, {KIND_OPTOUT}, brand)
    if optout is not None:
        later = [e for e in own if e.kind == KIND_CONSENT and e.given_at > optout.given_at]
        if not later:
            return _block(OPTOUT, "the person asked this brand to stop calling",
                          **_consent_basis(optout))

    if brand:
        grace = timedelta(days=policy.contract_grace_days)
        contracts = [e for e in own if e.kind == KIND_CONTRACT
                     and (e.ends_at is None or facts.today <= e.ends_at + grace)]
        if contracts:
            c = max(contracts, key=lambda e: (e.ends_at is None, e.ends_at or e.given_at))
            return _allow(CONTRACT, "contract in force" if c.ends_at is None or c.ends_at >= facts.today
                          else "contract ended within the grace period", **_consent_basis(c))

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
