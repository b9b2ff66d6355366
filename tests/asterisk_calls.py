"""Helpers for the tests that run calls through a real Asterisk (tests/astsandbox).

The test dialplan stands in for a call centre's outbound context: it picks the rpo_guard
configuration for the call (``Set(ENV(RPO_GUARD_CONFIG)=...)``: the AGI inherits Asterisk's
environment, as it does from a systemd unit), runs the shipped subroutine through
``Gosub`` exactly as the shipped example does, and dials only on ALLOW, to
``sandbox-sink`` (the trunk). The shipped files are ``#include``d from dialplan/ unchanged.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path

DIALPLAN = Path(__file__).resolve().parents[1] / "dialplan"

# The calls' outbound contexts. ${DIALED} is the dialed string (it may hold spaces, + or #,
# which an extension cannot); the trunk gets its digits and +.
OUTBOUND = r"""
[test-out-agi]
exten => s,1,Set(ENV(RPO_GUARD_CONFIG)=${RPO_TEST_CONFIG})
 same => n,Gosub(rpo-guard-check,s,1(${DIALED},${RPO_BRAND}))
 same => n,GotoIf($["${RPO_RESULT}" = "ALLOW"]?dial)
 same => n,Hangup(21)
 same => n(dial),Dial(Local/${FILTER(0-9+,${DIALED})}@sandbox-sink)
 same => n,Hangup()

[test-out-fastagi]
exten => s,1,Gosub(rpo-guard-check-fastagi,s,1(${DIALED},${RPO_BRAND}))
 same => n,GotoIf($["${GOSUB_RETVAL}" = "ALLOW"]?dial)
 same => n,Hangup(21)
 same => n(dial),Dial(Local/${FILTER(0-9+,${DIALED})}@sandbox-sink)
 same => n,Hangup()
"""


def includes(*names: str) -> str:
    return "".join(f"#include {DIALPLAN / n}\n" for n in names)


def globals_section(agi: str | None = None, fastagi: str | None = None) -> str:
    lines = ["[globals]"]
    if agi is not None:
        lines.append(f"RPO_GUARD_AGI={agi}")
    if fastagi is not None:
        lines.append(f"RPO_GUARD_FASTAGI={fastagi}")
    return "\n".join(lines) + "\n"


def standard_dialplan(agi: str | None = None, fastagi: str | None = None, extra: str = "") -> str:
    """The shipped files, then the admin's globals, then the outbound contexts."""
    return (includes("rpo-guard.conf", "rpo-guard-fastagi.conf") + globals_section(agi, fastagi)
            + OUTBOUND + extra)


def place(sandbox, front: str, dialed: str, brand: str = "", config: Path | str | None = None,
          variables: dict | None = None, **kw):
    """One call through the outbound context of ``front`` ("agi" or "fastagi")."""
    v = {"DIALED": dialed, "RPO_BRAND": brand}
    if config is not None:
        v["RPO_TEST_CONFIG"] = str(config)
    v.update(variables or {})
    return sandbox.originate("s", f"test-out-{front}", variables=v, **kw)


def audit_row(env, audit_id: str) -> dict | None:
    conn = sqlite3.connect(env.cfg.audit_db)
    conn.row_factory = sqlite3.Row
    try:
        row = conn.execute("SELECT * FROM attempts WHERE id = ?", (int(audit_id),)).fetchone()
        return dict(row) if row else None
    finally:
        conn.close()


def assert_refused(sandbox, call, outcome):
    """Nothing reached the trunk, and the dialplan did not see an ALLOW."""
    assert sandbox.sink_hits(call) == [], outcome
    assert outcome.get("RPO_RESULT") != "ALLOW", outcome
    assert outcome.get("DIALSTATUS", "") == "", outcome
