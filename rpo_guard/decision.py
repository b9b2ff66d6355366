"""The dial-time decision: a pure function of the facts about one call.

No I/O happens here: no SQLite, no Asterisk, no clock. The adapters (the
store, the AGI, the FastAGI server, the CLI) gather the facts and hand them to
:func:`decide`; what it returns is the whole answer, including the record
(consultation batch, consent) that decided, so that the audit row can name it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
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
class Policy:
    validity_days: int = 15        # a consultation is valid this many days, its own day included
    contract_grace_days: int = 30  # a contract still allows calls this long after it ended


@dataclass(frozen=True)
class CallFacts:
    """Everything the decision needs, gathered by an adapter."""
    today: date                               # the call's date in Europe/Rome
    e164: str | None                          # None when the dialed string is not a valid number
    brand: str = ""
    consultations: tuple[Consultation, ...] = ()  # for the brand or shared, any order
    consents: tuple[ConsentEvent, ...] = ()       # for the brand, or optouts for all brands
    dnc: tuple[DncEntry, ...] = ()                # global or for the brand


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
