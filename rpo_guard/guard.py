"""One call checked end to end: normalize, gather facts, decide.

Shared by the process AGI, the FastAGI server and ``rpo-guard check``, so all
three give the same answer for the same data. Nothing here raises: every
failure becomes ``BLOCK``/``error`` with the cause in ``detail``.
"""
from __future__ import annotations

import time
from collections import namedtuple
from datetime import datetime
from zoneinfo import ZoneInfo

from rpo_guard.rules.calendar_it import local_time
from rpo_guard.rules.callerid import read as read_caller_id
from rpo_guard.rules.decision import (AttemptCount, CallFacts, Policy, cap_attempts, decide_rules, error_verdict,
                                     window_start)
from rpo_guard.rules.numbers import InvalidNumber, candidate_e164, normalize

RESULT_VALUES = frozenset({"ALLOW", "BLOCK"})


def safe_value(value: str, allowed: frozenset | None = None) -> bool:
    """Only short [A-Za-z0-9_] words ever reach the AGI stream."""
    return (isinstance(value, str) and 1 <= len(value) <= 64 and value.isascii()
            and value.replace("_", "a").isalnum() and (allowed is None or value in allowed))


class Outcome(namedtuple("Outcome", "verdict e164 at held", defaults=(None,))):
    """The verdict, the E.164 number (None if invalid) and when the check ran
    (an aware datetime in the rules' timezone); ``held``: what the attempt
    counter reserved for this allowed attempt until its row is committed
    (the FastAGI server's in-flight attempts), else None."""
    __slots__ = ()


class AttemptsUnavailable(Exception):
    """Attempt caps apply, but the attempts cannot be counted: the call is refused."""


def count_attempts(attempts, policy: Policy, e164: str, brand: str, today) -> tuple:
    """One AttemptCount per window the policy's caps need, from ``attempts``
    (``count(e164, brand or None, since) -> int``: None = every brand)."""
    counts = []
    for cap in policy.attempt_caps:
        since = window_start(today, cap.window_days)
        if not any(c.per_brand == cap.per_brand and c.since == since for c in counts):
            counts.append(AttemptCount(cap.per_brand, since,
                                       attempts.count(e164, brand if cap.per_brand else None, since)))
    return tuple(counts)


def check_call(cfg, store, raw: str, brand: str = "", at: datetime | None = None,
               caller_id: str | None = None, callingpres: str | None = None,
               policy: Policy | None = None, attempts=None) -> Outcome:
    """Check one call. ``at`` defaults to the clock; ``caller_id`` is the
    presented number (None = not known: the caller-ID rule then blocks unless
    ``policy`` turns it off); ``callingpres`` is Asterisk's presentation value;
    ``policy`` defaults to the brand's (``cfg.policy_for``).

    ``attempts`` counts the allowed attempts for the attempt caps (an
    :class:`rpo_guard.audit.attempts.AttemptCounter`, or the FastAGI server's,
    which adds the attempts still in flight). It is asked only when the brand
    has a cap and every other rule allows the call; its ``lock`` is held from
    the count to the reservation (``hold``) of the allowed attempt, so that
    two calls checked at once cannot both take the last place under a cap.
    None with a cap to apply refuses the call (BLOCK/error)."""
    at = datetime.now(ZoneInfo(cfg.timezone)) if at is None else local_time(at, cfg.timezone)
    brand = (brand or "").strip()
    policy = policy or cfg.policy_for(brand)
    e164 = held = None
    try:
        if store is None:
            raise RuntimeError("register database unavailable")
        when = at if policy.calling_hours else None
        facts = None
        # A number a table holds was validated by phonenumbers when it came in, so for
        # the unambiguous forms the store answers (in the same statement as the facts)
        # and phonenumbers (10 ms to import) stays off the call path.
        candidate = candidate_e164(raw, cfg.strip_prefixes) if cfg.default_region == "IT" else None
        if candidate is not None:
            facts, known = store.lookup(candidate, brand, at.date(), when, cfg.local_holidays,
                                        cfg.silent_call_days, cfg.timezone)
            e164 = candidate if known else None
        if e164 is None:
            try:
                e164 = normalize(raw, cfg.strip_prefixes, cfg.default_region)
            except InvalidNumber:
                e164 = None
            if e164 is None:
                facts = CallFacts(today=at.date(), e164=None, brand=brand)
            elif e164 != candidate:
                facts = store.facts(e164, brand, at.date(), when, cfg.local_holidays,
                                    cfg.silent_call_days, cfg.timezone)
        if e164 is not None and caller_id is not None and policy.caller_id_check:
            facts = facts._replace(caller_id=read_caller_id(caller_id, callingpres, facts.declared_caller_ids))
        verdict = decide_rules(facts, policy)
        if policy.attempt_caps and verdict.allowed:
            if attempts is None:
                raise AttemptsUnavailable("attempt caps apply, but the audit log's attempts cannot be counted")
            with attempts.lock:
                facts = facts._replace(attempt_counts=count_attempts(attempts, policy, e164, brand, at.date()))
                verdict = cap_attempts(verdict, facts, policy)
                if verdict.allowed:
                    held = attempts.hold(e164, brand)
    except Exception as exc:  # fail closed, whatever went wrong
        verdict = error_verdict(f"{type(exc).__name__}: {exc}")
    return Outcome(verdict, e164, at, held)


# The channels of `rpo-guard selftest`'s calls run in its own context (rpo_guard.selftest.CONTEXT).
SELFTEST_CHANNEL = "@rpo-guard-selftest-"


def audit_row(outcome: Outcome, env: dict, dialed: str, brand: str, callerid_arg: str | None,
              started: float, via: str) -> dict:
    """The audit-log row of one attempt, as both AGI front ends record it.

    ``env`` is the AGI environment block, ``callerid_arg`` the third AGI
    argument (it wins over ``agi_callerid`` when given), ``started`` the
    ``time.perf_counter()`` of the session start, ``via`` ``agi`` or ``fastagi`` (with
    ``-selftest`` appended for the test calls of ``rpo-guard selftest``).
    """
    verdict = outcome.verdict
    if SELFTEST_CHANNEL in (env.get("agi_channel") or ""):
        via += "-selftest"  # a test call of `rpo-guard selftest`: left out of the auditor's counts
    return {
        "at": outcome.at.isoformat(timespec="milliseconds"),
        "uniqueid": env.get("agi_uniqueid"), "channel": env.get("agi_channel"),
        "callerid": callerid_arg if callerid_arg is not None else env.get("agi_callerid"),
        "accountcode": env.get("agi_accountcode"), "brand": (brand or "").strip(), "dialed": dialed,
        "e164": outcome.e164, "decision": verdict.decision, "reason": verdict.reason,
        "basis": verdict.basis, "detail": verdict.detail,
        "latency_ms": round((time.perf_counter() - started) * 1000, 3), "via": via,
    }
