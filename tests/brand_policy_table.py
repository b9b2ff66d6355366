"""The brand-policy cases over real data: a configuration with [brand NAME] sections,
data loaded through the real importers, and the rows every adapter must answer alike.

Used by tests/test_brand_policies_e2e.py (`rpo-guard check` and the process AGI) and
tests/fastagi/test_fastagi_brand_policies.py (the FastAGI server).
"""
from __future__ import annotations

from datetime import datetime, timedelta

from conftest import ROME, Env, days, today_rome

ENERGY = "Energia Uno"       # require_consent
SURVEY = "Sondaggi Tre"      # purpose statistical
SALES = "Vendite Quattro"    # purpose commercial, require_declared_caller_id
PLAIN = "Telco Due"          # no section: today's behaviour
CAPPED = "Telco Cap"         # max_attempts 2 in 30 days, its own attempts

BRANDS_CONFIG = f"""
[brand {ENERGY}]
require_consent = on

[brand {SURVEY}]
purpose = statistical

[brand {SALES}]
purpose = commercial
require_declared_caller_id = yes

[brand {CAPPED}]
max_attempts = 2
attempt_window_days = 30
"""

FREE = "0612345678"          # not registered, nothing in the consent log
CONSENTED = "3401000001"     # not registered, consent to ENERGY 10 days ago
OPTED_OUT = "3401000002"     # not registered, consent 10 days ago, then an opt-out 5 days ago
ENDED_20 = "3401000003"      # registered, ENERGY contract ended 20 days ago
ENDED_31 = "3401000004"      # not registered, ENERGY contract ended 31 days ago
CALLBACK = "3401000005"      # registered, callback request to ENERGY yesterday
REVOKED = "3401000006"       # not registered, consent 10 days ago revoked 3 days ago

LINE_0843 = "0843123456"
LINE_0844 = "08441234567"
ROME_LINE = "0612340000"
DECLARED_SALES = "+3908441234567"  # declared for SALES


def build(root, extra: str = "") -> Env:
    env = Env(root)
    env.write_config(BRANDS_CONFIG + extra)
    env.init()
    env.consult([(FREE, "non iscritto"), (CONSENTED, "no"), (OPTED_OUT, "no"), (ENDED_20, "iscritto"),
                 (ENDED_31, "no"), (CALLBACK, "iscritto"), (REVOKED, "no")], days_ago=1)
    env.consents([
        (CONSENTED, ENERGY, "consent", days(10), ""),
        (OPTED_OUT, ENERGY, "consent", days(10), ""),
        (OPTED_OUT, ENERGY, "optout", days(5), ""),
        (ENDED_20, ENERGY, "contract", days(700), days(20)),
        (ENDED_31, ENERGY, "contract", days(700), days(31)),
        (CALLBACK, ENERGY, "callback_request", days(1), ""),
        (REVOKED, ENERGY, "consent", days(10), ""),
        (REVOKED, ENERGY, "revocation", days(3), ""),
    ])
    from rpo_guard.register.conduct import caller_id_add
    caller_id_add(env.cfg, DECLARED_SALES, SALES, who="test")
    return env


# (dialed, brand, caller ID, decision, reason)
CASES = [
    # require_consent
    (FREE, ENERGY, ROME_LINE, "BLOCK", "consent_required"),
    (FREE, PLAIN, ROME_LINE, "ALLOW", "not_registered"),          # a brand without a section: as today
    (CONSENTED, ENERGY, ROME_LINE, "ALLOW", "consent"),
    (CONSENTED, PLAIN, ROME_LINE, "ALLOW", "not_registered"),
    (OPTED_OUT, ENERGY, ROME_LINE, "BLOCK", "optout"),             # an opt-out still wins
    (ENDED_20, ENERGY, ROME_LINE, "ALLOW", "contract"),            # within the 30-day grace
    (ENDED_31, ENERGY, ROME_LINE, "BLOCK", "consent_required"),    # past it
    (ENDED_31, PLAIN, ROME_LINE, "ALLOW", "not_registered"),
    (CALLBACK, ENERGY, ROME_LINE, "ALLOW", "callback_request"),
    (CALLBACK, PLAIN, ROME_LINE, "BLOCK", "rpo_registered"),
    (REVOKED, ENERGY, ROME_LINE, "BLOCK", "consent_required"),
    # the caller ID's purpose (the global caller-ID rule is off in these tests: the brand's settings turn it on)
    (FREE, SURVEY, LINE_0843, "ALLOW", "not_registered"),
    (FREE, SURVEY, LINE_0844, "BLOCK", "caller_id_not_allowed"),
    (FREE, SURVEY, "unknown", "BLOCK", "caller_id_not_allowed"),
    (FREE, SALES, DECLARED_SALES, "ALLOW", "not_registered"),
    (FREE, SALES, LINE_0843, "BLOCK", "caller_id_not_allowed"),     # a commercial brand presenting 0843
    (FREE, SALES, ROME_LINE, "BLOCK", "caller_id_not_allowed"),     # not declared: no generic fallback
    (FREE, PLAIN, LINE_0844, "ALLOW", "not_registered"),
    (FREE, PLAIN, "unknown", "ALLOW", "not_registered"),            # the caller-ID rule is off for it
]


def insert_attempts(env, rows: list[tuple[str, str, str, int]]) -> None:
    """Audit rows written as if by earlier calls: (e164, brand, decision, days ago)."""
    from rpo_guard.audit.log import AuditLog
    log = AuditLog(env.cfg.audit_db)
    try:
        for e164, brand, decision, days_ago in rows:
            at = datetime.combine(today_rome() - timedelta(days=days_ago), datetime.min.time().replace(hour=10),
                                  tzinfo=ROME)
            log.append({"at": at.isoformat(timespec="milliseconds"), "brand": brand, "dialed": e164, "e164": e164,
                        "decision": decision, "reason": "not_registered" if decision == "ALLOW" else "rpo_registered",
                        "basis": {}, "detail": "inserted by the test", "via": "test"})
    finally:
        log.close()
