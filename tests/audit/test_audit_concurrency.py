"""Many real AGI processes writing the audit log at once: every attempt once, one intact chain.

32 process AGIs run at the same time (rpo-guard-agi, driven by the Asterisk
peer of rpo_guard.harness), RPO_GUARD_AUDIT_AGI_CALLS calls in total
(default 2000; each is a Python process, so this test takes about a minute
on two cores; set it lower for a quick run).
"""
from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from click.testing import CliRunner
from conftest import agi_path, days

from rpo_guard.audit.chain import open_ro, verify
from rpo_guard.cli.main import cli
from rpo_guard.harness import Channel, run_process_agi

PROCESSES = 32
CALLS = int(os.environ.get("RPO_GUARD_AUDIT_AGI_CALLS", "2000"))

NUMBERS = [("3401000001", "non iscritto"), ("3401000002", "iscritto"), ("3401000003", "iscritto"),
           ("0612340001", "non iscritto")]
DIALED = ["3401000001", "+39 340 100 0002", "00393401000003", "06 1234 0001", "3409999999", "12"]
EXPECT = {  # dialed -> (decision, reason) for brand Energia Uno
    "3401000001": ("ALLOW", "not_registered"), "+39 340 100 0002": ("ALLOW", "consent"),
    "00393401000003": ("BLOCK", "rpo_registered"), "06 1234 0001": ("ALLOW", "not_registered"),
    "3409999999": ("BLOCK", "not_consulted"), "12": ("BLOCK", "invalid_number"),
}


def test_every_attempt_recorded_once_and_the_chain_verifies(env):
    env.init()
    env.consult(NUMBERS, days_ago=1)
    env.consents([("3401000002", "Energia Uno", "consent", days(0), "")])
    agi = agi_path()

    def one(i):
        dialed = DIALED[i % len(DIALED)]
        uid = f"{1795400000 + i}.{i}"
        s = run_process_agi(agi, [dialed, "Energia Uno"], Channel(extension="s", uniqueid=uid, callerid=f"06{i:08d}"),
                            env=env.agi_env, timeout=120)
        return uid, dialed, s.agistatus, s.result, s.reason, s.channel.variables.get("RPO_AUDIT_ID")

    with ThreadPoolExecutor(PROCESSES) as pool:
        sessions = list(pool.map(one, range(CALLS)))

    assert not env.failures.exists() or env.failures.read_text() == ""
    assert Counter(s[2] for s in sessions) == {"SUCCESS": CALLS}
    for uid, dialed, _st, result, reason, _id in sessions:
        assert (result, reason) == EXPECT[dialed], (uid, dialed, result, reason)

    rows = env.audit_rows()
    assert len(rows) == CALLS
    by_uid = Counter(r["uniqueid"] for r in rows)
    assert set(by_uid) == {s[0] for s in sessions} and set(by_uid.values()) == {1}  # each attempt exactly once
    row_of = {r["uniqueid"]: r for r in rows}
    for uid, dialed, _st, result, reason, audit_id in sessions:
        r = row_of[uid]
        assert (str(r["id"]), r["dialed"], r["decision"], r["reason"]) == (audit_id, dialed, result, reason)
    assert [r["id"] for r in rows] == list(range(1, CALLS + 1))

    conn = open_ro(env.cfg.audit_db)
    try:
        res = verify(conn)
    finally:
        conn.close()
    assert res.ok and res.rows == CALLS, res.summary()
    out = CliRunner().invoke(cli, ["--config", str(env.conf), "audit", "verify"])
    assert out.exit_code == 0 and out.stdout.startswith(f"OK: {CALLS} rows intact")
